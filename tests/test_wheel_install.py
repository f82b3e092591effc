"""A wheel installed into a fresh virtualenv runs `bipft stats`, `bipft pretrain` and `bipft export`
outside the repository (offline: no build isolation, no index, dependencies reused)."""

from __future__ import annotations

import json
import os
import random
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = """the a of and to in is was it he she they on for with as his her that by this had at from
not but were be are have one which their story house garden letter morning evening river town
road friend family visit walk read wrote said told came went"""
WORDS = TEXT.split()


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _corpus(tmp: Path) -> tuple[Path, Path]:
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]) + "\n")
    rng = random.Random(0)
    docs = []
    for _ in range(12):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(5, 12))).capitalize() + "."
                     for _ in range(rng.randint(3, 6))]  # fmt: skip
        docs.append(" ".join(sentences))
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n")
    return corpus, vocab


@pytest.mark.slow
def test_wheel_in_fresh_venv(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "bipft_jax", src / "bipft_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BIPFT_DATA_DIR")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist")], tmp_path, env)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("bipft_jax-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([str(py), "-c", code], tmp_path, env).stdout.strip())
    # The dependencies (and pip) of this interpreter, appended after the venv's own packages.
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
         tmp_path, env)  # fmt: skip
    where = _run([str(py), "-c", "import bipft_jax; print(bipft_jax.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    bipft = str(venv / "bin" / "bipft")

    stats = json.loads(
        _run(
            [bipft, "stats", "--preset", "bipft", "--size", "base", "--json"], tmp_path, env
        ).stdout
    )
    assert stats["config"]["num_layers"] == 12 and stats["params_by_kind"]["estimator"] == 46_140

    corpus, vocab = _corpus(tmp_path)
    config = tmp_path / "tiny_pretrain.py"
    config.write_text(textwrap.dedent(f"""
        from bipft_jax.train.pretrain import default_config

        def get_config():
            c = default_config()
            c.model.size = "tiny"
            c.data.files = ({str(corpus)!r},)
            c.data.vocab_file = {str(vocab)!r}
            c.data.seq_len, c.data.global_batch_size, c.data.eval_fraction = 32, 4, 0.0
            c.train.total_steps, c.train.save_every, c.train.log_every = 2, 2, 1
            c.train.async_checkpoint = False
            return c
    """))  # fmt: skip
    work = tmp_path / "work"
    _run([bipft, "pretrain", "--config", str(config), "--workdir", str(work)], tmp_path, env)
    assert [json.loads(r)["step"] for r in (work / "metrics.jsonl").read_text().splitlines()
            if "loss_mlm" in r] == [1, 2]  # fmt: skip

    n_vocab = len(vocab.read_text().split())
    _run([bipft, "export", "--format", "packed", "--checkpoint", str(work), "--preset", "bipft",
          "--size", "tiny", "--set", f"vocab_size={n_vocab}", "--out", str(tmp_path / "packed")],
         tmp_path, env)  # fmt: skip
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["head"] == "pretraining" and manifest["config"]["vocab_size"] == n_vocab
