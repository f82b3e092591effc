"""Checkpoints: saving (Orbax, integrity manifests), reading, and moving params between trees.

- ``manager``: ``CheckpointManager`` (save cadence, keep-last-N, async writes, SHA-256 manifests
  verified on every restore, fallback to the newest intact step, non-finite refusal), the
  SIGTERM flag.
- ``restore``: ``restore_params`` (the params subtree only) and ``restore_state`` of a run.
- ``transfer``: ``transfer_params``, the one policy for initialising one tree from another.
- ``integrity``: the manifest; ``model_card``: ``model_config.json`` beside a checkpoint.
"""

from bipft_jax.checkpoint.integrity import CheckpointCorruptError
from bipft_jax.checkpoint.manager import (
    CheckpointManager,
    CheckpointMismatchError,
    CheckpointWriteError,
    NonFiniteStateError,
    install_sigterm_handler,
)
from bipft_jax.checkpoint.restore import CheckpointNotFoundError, restore_params, restore_state
from bipft_jax.checkpoint.transfer import ParamsMismatchError, Transfer, transfer_params

__all__ = [
    "CheckpointCorruptError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "NonFiniteStateError",
    "ParamsMismatchError",
    "Transfer",
    "install_sigterm_handler",
    "restore_params",
    "restore_state",
    "transfer_params",
]
