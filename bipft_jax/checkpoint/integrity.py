"""Checkpoint integrity: a SHA-256 manifest sealed into every step directory, verified on restore.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and commits it with one atomic rename.
``SealedRenamePath`` (our ``temporary_path_class``) writes ``integrity.json`` — size and SHA-256
of every file — into the temporary directory right before that rename, after every item (and,
multi-process, every process's shards) is written. So a committed step always carries the
checksums of what is finally on disk, the manifest is written once (Orbax finalizes on the
primary process only), and a step without a manifest is one whose save never finished.

Two step-level Orbax files are left out: ``_CHECKPOINT_METADATA`` (rewritten with the commit
timestamp during the rename itself; restoring with explicit item args does not read it) and the
step's ``commit_success.txt`` (a marker written at the same moment). Everything that restore
reads — array data, OCDBT manifests, ``_METADATA``/``_sharding``, the extra JSON — is covered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from orbax.checkpoint.path import atomicity

from bipft_jax.errors import UserError

MANIFEST = "integrity.json"
UNSEALED = ("_CHECKPOINT_METADATA", "commit_success.txt")  # step-level, rewritten at commit
_CHUNK = 1 << 22


class CheckpointCorruptError(UserError):
    """A checkpoint step whose files do not match its integrity manifest (or that has none)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: Path) -> list[str]:
    out = []
    for path in step_dir.rglob("*"):
        rel = path.relative_to(step_dir).as_posix()
        if path.is_file() and rel not in (MANIFEST, *UNSEALED):
            out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str | Path) -> Path:
    """Hash every file of ``step_dir`` into ``step_dir/integrity.json`` (atomic, fsynced)."""
    step_dir = Path(step_dir)
    files = {
        rel: {"size": (step_dir / rel).stat().st_size, "sha256": file_sha256(step_dir / rel)}
        for rel in _files(step_dir)
    }
    path = step_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "algorithm": "sha256", "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify(step_dir: str | Path) -> str | None:
    """``None`` when every file of the manifest is present with its size and SHA-256, else what
    failed first (one line)."""
    step_dir = Path(step_dir)
    try:
        files = json.loads((step_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    if not files:
        return f"{MANIFEST} lists no files"
    for rel, want in sorted(files.items()):
        path = step_dir / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, expected {want['size']} (truncated or overwritten)"
        if file_sha256(path) != want["sha256"]:
            return f"{rel} fails its SHA-256 check (corrupted)"
    return None


class SealedRenamePath(atomicity.AtomicRenameTemporaryPath):
    """Orbax's atomic-rename commit, plus ``integrity.json`` written just before the rename of a
    step directory (item directories such as ``state/`` are committed unchanged)."""

    async def finalize(self) -> None:
        if self.get_final().name.isdigit():
            await asyncio.to_thread(write_manifest, Path(self.get()))
        await super().finalize()
