"""Reading another run's checkpoint: ``restore_params`` and ``restore_state``.

Every reader goes through these two (pretraining's checkpoint teacher, fine-tuning's init,
teacher and best weights, `bipft export`; the trainers resuming), so all verify the integrity
manifest and fall back to the newest intact step; a reader never moves anything (a read-only
``CheckpointManager``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bipft_jax.checkpoint.manager import CheckpointManager

PyTree = Any


class CheckpointNotFoundError(FileNotFoundError):
    """A path without ``checkpoints/``."""


def run_dir(path: str | Path) -> Path:
    """The directory holding ``checkpoints/`` for ``path`` (the run directory or its
    ``checkpoints/`` folder); ``CheckpointNotFoundError`` when there is none."""
    root = Path(path)
    workdir = root.parent if root.name == "checkpoints" else root
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointNotFoundError(
            f"checkpoint not found: {workdir / 'checkpoints'} does not exist"
        )
    return workdir


def restore_params(
    workdir: str | Path,
    step: int | None = None,
    *,
    like: PyTree | None = None,
    on_corrupt: str = "fallback",
) -> PyTree:
    """The ``params`` of step ``step`` (default: the newest intact one) of the run in ``workdir``.

    Only the params are read from disk (Orbax partial restore; the optimizer state is not).
    ``like``: shape structs the params must match exactly, placed on their shardings; without
    it every saved param comes back as a numpy array (see ``CheckpointManager.restore_params``).
    """
    with CheckpointManager(
        run_dir(workdir), async_save=False, on_corrupt=on_corrupt, read_only=True
    ) as mngr:
        return mngr.restore_params(like, step)


def restore_state(
    source: str | Path | CheckpointManager,
    abstract_state: PyTree | None = None,
    step: int | None = None,
    *,
    on_corrupt: str = "fallback",
) -> tuple[PyTree, dict]:
    """``(state, extra)`` of step ``step`` (default: the newest intact one) on
    ``abstract_state``'s shardings (``None``: as saved).

    ``source``: a run directory (read through a read-only manager), or a run's own writing
    ``CheckpointManager`` when it resumes (the corrupt steps it skips are then moved to
    ``checkpoints_corrupt/`` before its next save; ``on_corrupt`` is the manager's).
    """
    if isinstance(source, CheckpointManager):
        return source.restore(abstract_state, step)
    with CheckpointManager(
        run_dir(source), async_save=False, on_corrupt=on_corrupt, read_only=True
    ) as mngr:
        return mngr.restore(abstract_state, step)
