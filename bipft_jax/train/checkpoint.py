"""Checkpoints: a thin wrapper over Orbax ``CheckpointManager`` plus a preemption flag.

One checkpoint = ``state`` (any pytree of ``jax.Array``; sharded arrays are written shard by
shard) + ``extra`` (a small JSON dict: data-loader state, config hash, ...). Restoring takes an
abstract tree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``; the arrays come back on
*those* shardings, so a run may resume on a different mesh. Keeping our own five-function
surface makes a later move to Orbax's V1 API a change to this file only.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

PyTree = Any

_PREEMPTED = threading.Event()


class CheckpointManager:
    """Saves every ``save_every`` steps into ``workdir/checkpoints/<step>``, keeping the last N."""

    def __init__(
        self,
        workdir: str | Path,
        max_to_keep: int | None = 3,
        save_every: int = 1000,
        async_save: bool = True,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
        self.directory = Path(workdir).absolute() / "checkpoints"
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Exactly every `save_every` steps (Orbax's default would also save the first step
            # it sees), plus the step all processes agree on after a preemption notice.
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(save_every),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._mngr = ocp.CheckpointManager(
            self.directory, item_names=("state", "extra"), options=options
        )

    def save(
        self, step: int, state: PyTree, extra: dict | None = None, force: bool = False
    ) -> bool:
        """Save if ``step`` is on the cadence (or ``force``); returns whether a save started.

        With ``async_save`` the call returns once arrays are copied off the devices; the write
        finishes in the background (``wait_until_finished`` blocks on it).
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))
        )
        return bool(self._mngr.save(int(step), args=args, force=force))

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or ``None`` when there is none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def restore(
        self, abstract_state: PyTree | None = None, step: int | None = None
    ) -> tuple[PyTree, dict]:
        """``(state, extra)`` of ``step`` (default: latest), on ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (see
        ``bipft_jax.train.loop.abstract_state``); ``None`` restores as saved.
        """
        self._mngr.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}"
            )
        state_arg = (
            ocp.args.StandardRestore()
            if abstract_state is None
            else ocp.args.StandardRestore(abstract_state)
        )
        restored = self._mngr.restore(
            step, args=ocp.args.Composite(state=state_arg, extra=ocp.args.JsonRestore())
        )
        return restored.state, dict(restored.extra or {})

    def reached_preemption(self, step: int) -> bool:
        """True when the run should save now and stop.

        Single process: our SIGTERM flag. Multi-process: the JAX preemption service, which
        makes every process agree on the same ``step`` (do not install our handler there).
        """
        return preemption_requested() or bool(self._mngr.reached_preemption(int(step)))

    def wait_until_finished(self) -> None:
        """Block until every pending (async) save is on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release Orbax's threads."""
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def install_sigterm_handler(signals: tuple[int, ...] = (signal.SIGTERM,)) -> bool:
    """On SIGTERM (preemption notice) set a flag instead of dying; the loop polls it.

    The loop should then save at the current step (``force=True``), wait and exit cleanly.
    Call from the main thread, after ``maybe_initialize_distributed``. In a multi-process run
    this does nothing and returns ``False``: a per-process flag could make processes save at
    different steps, so there the JAX preemption service (``reached_preemption``) decides.
    """
    import jax

    if jax.process_count() > 1:
        return False

    def handler(signum, frame):
        _PREEMPTED.set()

    for sig in signals:
        signal.signal(sig, handler)
    return True


def preemption_requested() -> bool:
    """Whether a signal installed by ``install_sigterm_handler`` has arrived."""
    return _PREEMPTED.is_set()


def clear_preemption() -> None:
    """Reset the flag (for tests, or after a handled preemption)."""
    _PREEMPTED.clear()
