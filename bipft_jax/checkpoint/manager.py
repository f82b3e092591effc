"""Checkpoints: a thin wrapper over Orbax ``CheckpointManager`` plus a preemption flag.

One checkpoint = ``state`` (any pytree of ``jax.Array``; sharded arrays are written shard by
shard) + ``extra`` (a small JSON dict: data-loader state, config hash, ...). Restoring takes an
abstract tree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``; the arrays come back on
*those* shardings, so a run may resume on a different mesh. ``restore_params`` reads the
``params`` subtree only (Orbax partial restore). Keeping our own small surface makes a later
move to Orbax's V1 API a change to this package only.

Integrity (``integrity.py``): every step is committed with a SHA-256 manifest of its files, and
every restore verifies it. A corrupted, truncated or unfinished step is never used: by default
(``on_corrupt="fallback"``) the newest intact step is used, with one warning line per bad step,
and a writing manager moves the bad steps to ``<workdir>/checkpoints_corrupt/`` before its first
save; ``on_corrupt="error"`` raises ``CheckpointCorruptError`` instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bipft_jax.checkpoint.integrity import CheckpointCorruptError, SealedRenamePath, verify
from bipft_jax.checkpoint.transfer import describe, differences, leaf_shapes
from bipft_jax.errors import UserError, one_line
from bipft_jax.paths import local_path

PyTree = Any
ON_CORRUPT = ("fallback", "error")
QUARANTINE = "checkpoints_corrupt"

_PREEMPTED = threading.Event()


class CheckpointWriteError(UserError):
    """A save that failed part way (disk full, permissions); committed steps are untouched."""


class CheckpointMismatchError(UserError):
    """An intact checkpoint whose arrays do not fit the state the run asks for."""


class NonFiniteStateError(UserError):
    """A state with NaN/Inf values offered for saving."""


@jax.jit
def _leaves_finite(leaves: list) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """Paths of the float leaves of ``tree`` holding a NaN or Inf (one device reduction)."""
    flat = [(path, x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]  # fmt: skip
    if not flat:
        return []
    ok = np.asarray(_leaves_finite([x for _, x in flat]))
    return [jax.tree_util.keystr(path) for (path, _), good in zip(flat, ok) if not good]


class CheckpointManager:
    """Saves every ``save_every`` steps into ``workdir/checkpoints/<step>``, keeping the last N."""

    def __init__(
        self,
        workdir: str | Path,
        max_to_keep: int | None = 3,
        save_every: int = 1000,
        async_save: bool = True,
        on_corrupt: str = "fallback",
        read_only: bool = False,
    ) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
        self.directory = local_path(workdir, "checkpoint workdir").absolute() / "checkpoints"
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
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
            temporary_path_class=SealedRenamePath,  # commits integrity.json with every step
        )
        self._mngr = ocp.CheckpointManager(
            self.directory, item_names=("state", "extra"), options=options
        )
        self.on_corrupt, self.read_only, self.save_every = on_corrupt, read_only, save_every
        self._verdicts: dict[int, str | None] = {}  # step -> None (intact) or what failed
        self._bad: list[int] = []  # corrupt steps newer than the one restored, moved on save
        self._warned: set[int] = set()
        self._write_failed = False

    def save(
        self, step: int, state: PyTree, extra: dict | None = None, force: bool = False
    ) -> bool:
        """Save if ``step`` is on the cadence (or ``force``); returns whether a save started.

        With ``async_save`` the call returns once arrays are copied off the devices; the write
        finishes in the background (``wait_until_finished`` blocks on it). A state with a
        NaN/Inf float leaf raises ``NonFiniteStateError`` instead of being saved.
        """
        if self._bad:
            self._quarantine()
        if force or step % self.save_every == 0:  # a cadence or forced save: never a NaN state
            bad = nonfinite_leaves(state)
            if bad:
                raise NonFiniteStateError(
                    f"refusing to save step {step}: non-finite values (NaN/Inf) in "
                    + ", ".join(bad[:4])
                    + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
                )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))
        )
        started = bool(self._orbax(self._mngr.save, int(step), args=args, force=force))
        if started:
            self._verdicts.pop(int(step), None)
        return started

    def latest_step(self) -> int | None:
        """The newest *intact* checkpoint's step, ``None`` when there is none at all; raises
        ``CheckpointCorruptError`` when every step is unusable (or the newest is, with
        ``on_corrupt="error"``)."""
        return self._newest_intact()

    def all_steps(self) -> list[int]:
        """Every committed step, intact or not."""
        return sorted(self._mngr.all_steps())

    def verify(self, step: int) -> str | None:
        """``None`` when ``step`` matches its integrity manifest, else what failed (cached)."""
        if step not in self._verdicts:
            self._verdicts[step] = verify(self.directory / str(step))
        return self._verdicts[step]

    def require_intact(self, step: int) -> None:
        """Raise ``CheckpointCorruptError`` unless ``step`` matches its integrity manifest."""
        reason = self.verify(step)
        if reason is not None:
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} is unusable: {reason}"
            )

    def _newest_intact(self) -> int | None:
        """The newest intact step; ``None`` only when there is no step at all."""
        self._mngr.wait_until_finished()
        bad: list[int] = []
        for step in reversed(self.all_steps()):
            reason = self.verify(step)
            if reason is None:
                self._bad = bad
                return _agreed(step)
            what = f"checkpoint step {step} in {self.directory} is unusable: {reason}"
            if self.on_corrupt == "error":
                raise CheckpointCorruptError(
                    f"{what} (with on_corrupt='fallback' the newest intact step is used)"
                )
            if step not in self._warned:
                _warn(f"warning: {what}; trying the step before it")
                self._warned.add(step)
            bad.append(step)
        if bad:  # starting over is the user's decision, not ours
            raise CheckpointCorruptError(
                f"no intact checkpoint in {self.directory} (unusable steps: {sorted(bad)}); "
                "move that directory away to start the run over"
            )
        return _agreed(None)

    def _quarantine(self) -> None:
        """Move the corrupt steps newer than the restored one out of Orbax's sight, so a new
        save of the same step and Orbax's "not older than the latest step" rule both work."""
        bad, self._bad = self._bad, []
        if self.read_only:
            return
        if jax.process_index() == 0:
            dest = self.directory.parent / QUARANTINE
            dest.mkdir(exist_ok=True)
            for step in bad:
                target, n = dest / str(step), 1
                while target.exists():
                    target, n = dest / f"{step}-{n}", n + 1
                shutil.move(str(self.directory / str(step)), str(target))
                _warn(f"warning: moved unusable checkpoint step {step} to {target}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("bipft_checkpoint_quarantine")
        for step in bad:
            self._verdicts.pop(step, None)
        self._mngr.reload()

    def select_step(self, step: int | None = None) -> int:
        """``step`` if it exists and is intact (else an error), or the newest intact step."""
        if step is None:
            step = self._newest_intact()
            if step is None:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
            return step
        self._mngr.wait_until_finished()
        steps = self.all_steps()
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}"
            )
        self.require_intact(step)
        return step

    def restore(
        self, abstract_state: PyTree | None = None, step: int | None = None
    ) -> tuple[PyTree, dict]:
        """``(state, extra)`` of ``step`` (default: the newest intact one), on
        ``abstract_state``'s shardings; an explicitly named corrupt step raises.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (see
        ``bipft_jax.train.loop.abstract_state``); ``None`` restores as saved.
        """
        step = self.select_step(step)
        state_arg = (
            ocp.args.StandardRestore()
            if abstract_state is None
            else ocp.args.StandardRestore(abstract_state)
        )
        try:
            restored = self._mngr.restore(
                step, args=ocp.args.Composite(state=state_arg, extra=ocp.args.JsonRestore())
            )
        except ValueError as e:  # verified files, so: shapes or tree of another config
            reason = _mismatch(self.directory / str(step), abstract_state) or one_line(e)[:300]
            what = (
                "cannot be restored as saved"
                if abstract_state is None
                else "does not fit this run (another model size, method or optimizer?)"
            )
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} {what}: {reason}"
            ) from e
        return restored.state, dict(restored.extra or {})

    def restore_params(self, like: PyTree | None = None, step: int | None = None) -> PyTree:
        """Only ``state["params"]`` of ``step`` (default: the newest intact one).

        Orbax's partial restore reads the arrays of the params subtree and nothing else of the
        state (not the optimizer moments, 2x the params with Adam). ``like``: a tree of
        ``jax.ShapeDtypeStruct`` that the saved params must match exactly (paths and shapes,
        else ``CheckpointMismatchError``); each array comes back in its dtype, on its
        ``sharding`` (numpy without one). ``None``: every saved param as a numpy array.
        """
        step = self.select_step(step)
        step_dir = self.directory / str(step)
        saved = saved_tree(step_dir)
        where = f"checkpoint step {step} in {self.directory}"
        if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), Mapping):
            top = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
            raise CheckpointMismatchError(f"{where} holds no params (its state: {top})")
        if like is None:
            like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved["params"])
        names = ("model", "checkpoint")
        diff = differences(leaf_shapes(like), leaf_shapes(saved["params"]), names)
        if any(diff):  # Orbax would fill a requested leaf that is not saved without a word
            raise CheckpointMismatchError(f"{where} does not fit: {describe(*diff, names)}")
        args = ocp.args.PyTreeRestore(
            item={"params": like},
            restore_args={"params": jax.tree.map(_restore_arg, like)},
            partial_restore=True,
        )
        with ocp.PyTreeCheckpointer() as reader:
            return reader.restore(step_dir / "state", args=args)["params"]

    def reached_preemption(self, step: int) -> bool:
        """True when the run should save now and stop.

        Single process: our SIGTERM flag. Multi-process: the JAX preemption service, which
        makes every process agree on the same ``step`` (do not install our handler there).
        """
        return preemption_requested() or bool(self._mngr.reached_preemption(int(step)))

    def wait_until_finished(self) -> None:
        """Block until every pending (async) save is on disk."""
        self._orbax(self._mngr.wait_until_finished)

    def close(self) -> None:
        """Finish pending saves and release Orbax's threads."""
        try:
            if not self._write_failed:  # else reported already (Orbax re-raises it at each wait)
                self.wait_until_finished()
        finally:
            try:
                self._mngr.close()
            except Exception:
                if not self._write_failed:
                    raise

    def _orbax(self, fn, *args, **kwargs):
        """``fn`` (an Orbax write or wait); a failed write (disk full, permissions, ...) becomes
        a ``CheckpointWriteError`` naming the directory and the cause."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self._write_failed = True
            done = sorted(self._mngr.all_steps())
            raise CheckpointWriteError(
                f"saving a checkpoint in {self.directory} failed: {one_line(e)}; the complete "
                f"steps are untouched: {done}"
            ) from e

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def saved_tree(step_dir: str | Path) -> PyTree:
    """The ``state`` tree of a step directory as Orbax array metadata (shape, dtype), read from
    its metadata files only (the one place that reads Orbax's metadata)."""
    with ocp.PyTreeCheckpointer() as reader:
        return reader.metadata(Path(step_dir) / "state").item_metadata.tree


def _restore_arg(x: jax.ShapeDtypeStruct) -> ocp.RestoreArgs:
    if x.sharding is None:
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype)
    return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)


def _mismatch(step_dir: Path, abstract_state: PyTree | None) -> str:
    """Where a checkpoint's arrays and the run's state differ, in a few words ("" if unknown)."""
    if abstract_state is None:
        return ""
    names = ("run", "checkpoint")
    have, want = leaf_shapes(saved_tree(step_dir)), leaf_shapes(abstract_state)
    return describe(*differences(want, have, names), names, n=2)


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _agreed(step: int | None) -> int | None:
    """``step``, after checking that every process chose the same one (they verify the same
    files, so only a filesystem serving different bytes to different hosts can disagree)."""
    if jax.process_count() == 1:
        return step
    from jax.experimental import multihost_utils

    mine = -1 if step is None else step
    every = np.asarray(multihost_utils.process_allgather(np.int64(mine)))
    if (every != mine).any():
        raise CheckpointCorruptError(f"processes disagree on the intact checkpoint: {every}")
    return step


def install_sigterm_handler(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> bool:
    """On SIGTERM (preemption notice) or a first Ctrl-C, set a flag instead of dying; the loop
    polls it, saves at the current step and exits 0. A second Ctrl-C exits at once (code 130).

    Call from the main thread, after ``maybe_initialize_distributed``. In a multi-process run
    this does nothing and returns ``False``: a per-process flag could make processes save at
    different steps, so there the JAX preemption service (``reached_preemption``) decides.
    """
    if jax.process_count() > 1:
        return False

    def handler(signum, frame):
        if signum == signal.SIGINT:
            if _PREEMPTED.is_set():
                os._exit(130)
            print("interrupt: saving a checkpoint at the current step (Ctrl-C again to quit "
                  "now)", file=sys.stderr, flush=True)  # fmt: skip
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
