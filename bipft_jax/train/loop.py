"""Shared training machinery: train state, jitted train/eval steps, and a resumable loop.

* ``TrainState(step, params, opt_state)``: a plain NamedTuple pytree (unboxed arrays).
* ``init_train_state``: params and optimizer state born sharded under a mesh and logical rules;
  returns the state and its shardings (also the abstract target for checkpoint restore).
* ``make_train_step(loss_fn, tx, grad_accum_steps, seed)``: ``loss_fn(params, batch, rng) ->
  (loss, aux)``; gradient accumulation runs inside the step as a ``lax.scan`` over micro-batches
  (mean of micro-batch gradients, fp32 accumulator); micro-batches are strided
  (``split_micro``), so each device keeps its own rows. The step's RNG is
  ``fold_in(PRNGKey(seed), step)`` (then ``fold_in(·, micro)``), so a resumed run repeats exactly.
* ``jit_step``: ``jax.jit`` with in/out shardings and the donated state, traced under the mesh and
  the logical-axis rules.
* ``run_loop``: steps, periodic logging/eval, checkpoint cadence and SIGTERM save.

Non-finite guard: a step whose loss or gradient norm is NaN/Inf keeps the old params and
optimizer state (a ``jnp.where`` over the tree inside the jitted step; ``step`` still advances,
so the batch is dropped and a resumed run repeats exactly). Its metrics carry ``nonfinite = 1``;
``run_loop`` counts and logs such steps (``skipped_nonfinite``) and stops with
``NonFiniteLossError`` after ``max_nonfinite`` in a row.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bipft_jax.errors import UserError
from bipft_jax.parallel import batch_sharding, replicated, state_shardings
from bipft_jax.parallel.rules import BATCH_AXES, Rules

PyTree = Any
Batch = Mapping[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]  # (params, batch, rng, *consts)


class TrainState(NamedTuple):
    """The whole mutable training state (student only; a teacher lives outside)."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree


# ----------------------------------------------------------------------------- state + shardings


def _dict_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def opt_state_shardings(
    abstract_opt_state: PyTree, abstract_params: PyTree, param_shardings: PyTree, mesh: Mesh
) -> PyTree:
    """Shard each optimizer-state leaf like the parameter it mirrors (Adam moments), else
    replicate it (counters, scalars).

    A leaf mirrors a parameter when the dict keys of its path end with that parameter's dict keys
    and the shapes agree; this holds for every optax transform that keeps per-parameter trees.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
    flat_p = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_s = jax.tree.leaves(param_shardings)
    for (path, leaf), sharding in zip(flat_p, flat_s, strict=True):
        by_path[_dict_keys(path)] = (tuple(leaf.shape), sharding)
    depth = max((len(k) for k in by_path), default=0)

    def pick(path, leaf):
        keys = _dict_keys(path)
        for n in range(min(depth, len(keys)), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def init_train_state(
    init_params: Callable[..., PyTree],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules,
    *args: Any,
) -> tuple[TrainState, TrainState]:
    """``(state, shardings)`` with params from ``init_params(*args)`` (may return ``nn.Partitioned``
    boxes) and ``tx.init``, both created directly in their target shardings.

    ``init_params`` should return the params tree only (not ``{"params": ...}``).
    """
    shardings = train_state_shardings(init_params, tx, mesh, rules, *args)

    def init(*a):
        params = nn.meta.unbox(init_params(*a))
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(init, out_shardings=shardings)(*args)
    return state, shardings


def train_state_shardings(
    init_params: Callable[..., PyTree],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules,
    *args: Any,
) -> TrainState:
    """The ``NamedSharding`` tree of the state that ``init_train_state`` builds."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init_params, *args)
        p_sh = nn.meta.unbox(state_shardings(boxed, mesh, rules))
        params = jax.eval_shape(lambda *a: nn.meta.unbox(init_params(*a)), *args)
        opt = jax.eval_shape(tx.init, params)
    # A TrainState whose leaves are shardings (the jit in/out shardings of the state).
    return TrainState(replicated(mesh), p_sh, opt_state_shardings(opt, params, p_sh, mesh))  # type: ignore[arg-type]


def abstract_state(shardings: TrainState, example: TrainState) -> TrainState:
    """``ShapeDtypeStruct`` tree (with shardings) of ``example``: the checkpoint restore target."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), example, shardings
    )


# ----------------------------------------------------------------------------- steps


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The RNG of a train step: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def _batch_shards() -> int:
    """How many ways the current mesh (``jax.set_mesh``) splits the batch; 1 without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def split_micro(batch: Batch, k: int) -> Batch:
    """``[B, ...] -> [k, B/k, ...]`` strided: micro-batch ``j`` is rows ``j, j+k, j+2k, ...``.

    Each device holds a contiguous block of ``B/n`` rows (``n`` batch shards); with ``B``
    divisible by ``n·k`` every micro-batch takes ``B/(n·k)`` rows from each device's own block,
    so the split moves no data (a contiguous split would gather whole micro-batches). Otherwise
    a micro-batch cannot spread evenly over the devices and XLA moves rows (correct, slower).
    """
    n = _batch_shards()

    def split(x):
        if x.shape[0] % k:
            raise ValueError(
                f"batch dimension {x.shape[0]} is not divisible by grad_accum_steps={k}"
            )
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        if n > 1 and x.shape[1] % n == 0:
            x = jax.lax.with_sharding_constraint(x, PartitionSpec(None, BATCH_AXES))
        return x

    return jax.tree.map(split, batch)


def _to_f32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda g: g.astype(jnp.float32), tree)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    grad_accum_steps: int = 1,
    seed: int = 0,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure ``step(state, batch, *consts) -> (state, metrics)`` (not jitted; see ``jit_step``).

    ``loss_fn(params, batch, rng, *consts)``; ``consts`` are non-trained inputs such as a frozen
    teacher's params (passed as arguments, not closed over, so they are not baked into the HLO).

    With ``grad_accum_steps = k > 1`` the batch's leading dimension is split into ``k``
    micro-batches; gradients and metrics are the means over them, so with per-example-mean losses
    one step on ``k × (B/k)`` equals one step on ``B`` (elastic quantizers need
    ``numel_multiplier = k``, see ``quant.with_numel_multiplier``). Metrics add ``loss``,
    ``grad_norm``, ``nonfinite`` (1.0 when the update was skipped, see the module docstring) and
    (given ``lr_fn``) ``lr``.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: Batch, *consts) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = step_rng(seed, state.step)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(state.params, batch, rng, *consts)
        else:
            micro = split_micro(batch, grad_accum_steps)

            def body(carry, xs):
                i, mb = xs
                (loss, aux), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), *consts)
                acc_g, acc_m = carry
                acc_g = jax.tree.map(jnp.add, acc_g, _to_f32(g))
                acc_m = jax.tree.map(jnp.add, acc_m, _to_f32({"loss": loss, **aux}))
                return (acc_g, acc_m), None

            zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            m_shape = jax.eval_shape(
                lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), rng, *consts)[0]
            )
            zeros_m = jax.tree.map(
                lambda s: jnp.zeros(s.shape, jnp.float32), {"loss": m_shape[0], **m_shape[1]}
            )
            idx = jnp.arange(grad_accum_steps)
            (sum_g, sum_m), _ = jax.lax.scan(body, (zeros_g, zeros_m), (idx, micro))
            scale = 1.0 / grad_accum_steps
            grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), sum_g, state.params)
            metrics = jax.tree.map(lambda m: m * scale, sum_m)
            loss, aux = metrics.pop("loss"), metrics
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # The update too: a NaN lr or schedule makes finite gradients a NaN step.
        finite = (
            jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        )
        params = optax.apply_updates(state.params, updates)
        # The non-finite guard: keep the old params and optimizer state, elementwise (fused).
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state),
            (state.params, state.opt_state),
        )
        metrics = {**aux, "loss": loss, "grad_norm": grad_norm}
        metrics["nonfinite"] = jnp.logical_not(finite).astype(jnp.float32)
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def make_eval_step(
    metric_fn: Callable[..., dict[str, jax.Array]],
) -> Callable[..., dict[str, jax.Array]]:
    """``eval_step(state, batch, *consts)`` from ``metric_fn(params, batch, *consts)``."""

    def eval_step(state: TrainState, batch: Batch, *consts) -> dict[str, jax.Array]:
        return metric_fn(state.params, batch, *consts)

    return eval_step


def jit_step(
    fn: Callable,
    mesh: Mesh,
    rules: Rules,
    shardings: TrainState,
    *,
    returns_state: bool = True,
    const_shardings: tuple[PyTree, ...] = (),
) -> Callable:
    """``jax.jit`` of ``fn(state, batch, *consts)`` with the state's shardings, batch split over
    the batch axes, ``const_shardings`` for the consts, replicated metrics and (when
    ``returns_state``) the input state donated. Tracing happens under ``jax.set_mesh(mesh)`` and
    the logical-axis ``rules``.
    """
    rep = replicated(mesh)
    out = (shardings, rep) if returns_state else rep
    jitted = jax.jit(
        fn,
        in_shardings=(shardings, batch_sharding(mesh), *const_shardings),
        out_shardings=out,
        donate_argnums=(0,) if returns_state else (),
    )

    def call(state, batch, *consts):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, batch, *consts)

    call.jitted, call.mesh = jitted, mesh  # type: ignore[attr-defined]
    return call


# ----------------------------------------------------------------------------- loop


class NonFiniteLossError(UserError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


class NonFiniteGuard:
    """Host side of the guard: counts skipped steps, warns, and stops after ``limit`` in a row.

    ``push`` reads the *previous* step's flag (finished, or nearly, on the device) so the host
    keeps one step queued ahead; ``flush`` reads the pending one (at log steps and the end).
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1 or None, got {limit}")
        self.limit, self.skipped, self.in_a_row = limit, 0, 0
        self._pending: tuple[int, jax.Array] | None = None

    def push(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.flush()
        if "nonfinite" in metrics:
            self._pending = (step, metrics["nonfinite"])

    def flush(self) -> None:
        if self._pending is None:
            return
        step, flag = self._pending
        self._pending = None
        if not float(np.asarray(flag)):
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        if jax.process_index() == 0:
            print(f"warning: step {step}: non-finite loss or gradient norm, update skipped "
                  f"({self.in_a_row} in a row, {self.skipped} in all)", file=sys.stderr,
                  flush=True)  # fmt: skip
        if self.limit is not None and self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"steps {step - self.in_a_row + 1}-{step}: {self.in_a_row} steps in a row with a "
                "non-finite loss or gradient norm (none applied); stopping. The last checkpoint "
                "holds the last good state: lower optim.lr, check the data, or raise "
                "train.max_nonfinite_steps"
            )


@dataclasses.dataclass
class LoopHooks:
    """Optional callbacks of ``run_loop`` (all receive host-side Python values)."""

    on_log: Callable[[int, dict[str, float], float], None] | None = None  # (step, metrics, dt)
    evaluate: Callable[[TrainState, int], None] | None = None  # (state, step)
    extra: Callable[[], dict] | None = None  # JSON saved with each checkpoint (loader state)


def to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device metrics -> Python floats (blocks until the step is done)."""
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def run_loop(
    state: TrainState,
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]],
    batches: Iterator[Batch],
    start_step: int,
    total_steps: int,
    *,
    checkpoint: Any | None = None,
    log_every: int = 10,
    eval_every: int = 0,
    hooks: LoopHooks | None = None,
    max_nonfinite: int | None = 10,
) -> tuple[TrainState, str]:
    """Run ``train_step`` from ``start_step`` to ``total_steps``; returns ``(state, status)``.

    ``status`` is ``"done"`` or ``"preempted"`` (SIGTERM / preemption service: a checkpoint at
    the current step was written). ``checkpoint`` is a ``bipft_jax.checkpoint
    .CheckpointManager``; it saves on its cadence and at the last step. ``batches`` yields global
    (sharded) batches. ``on_log`` gets the logged step's metrics (plus ``skipped_nonfinite``,
    the count of skipped steps so far) and the mean step time since the previous log. After
    ``max_nonfinite`` consecutive skipped steps (``None``: never) it raises
    ``NonFiniteLossError``. ``data_wait_s`` in the logged metrics is the mean time per step spent
    waiting for ``next(batches)`` since the previous log.
    """
    hooks = hooks or LoopHooks()
    extra = hooks.extra or (lambda: {})
    guard = NonFiniteGuard(max_nonfinite)
    step = start_step
    t_last, s_last = time.perf_counter(), step
    waited = 0.0  # seconds spent waiting for batches since the last log
    status = "done"
    while step < total_steps:
        t_wait = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t_wait
        state, metrics = train_step(state, batch)
        step += 1
        guard.push(step, metrics)
        last = step == total_steps
        saved = checkpoint is not None and checkpoint.save(step, state, extra(), force=last)
        if hooks.on_log is not None and (step % log_every == 0 or last or step == start_step + 1):
            guard.flush()  # this step's flag; to_host waits for the step anyway
            host = {**to_host(metrics), "skipped_nonfinite": float(guard.skipped)}
            host["data_wait_s"] = waited / max(step - s_last, 1)
            now = time.perf_counter()
            hooks.on_log(step, host, (now - t_last) / max(step - s_last, 1))
            t_last, s_last, waited = now, step, 0.0
        if hooks.evaluate is not None and eval_every > 0 and (step % eval_every == 0 or last):
            hooks.evaluate(state, step)
        if not last and checkpoint is not None and checkpoint.reached_preemption(step):
            if not saved:
                checkpoint.save(step, state, extra(), force=True)
            status = "preempted"
            break
    guard.flush()
    if checkpoint is not None:
        checkpoint.wait_until_finished()
    return state, status


__all__ = [
    "LoopHooks",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "TrainState",
    "abstract_state",
    "init_train_state",
    "jit_step",
    "make_eval_step",
    "make_train_step",
    "opt_state_shardings",
    "run_loop",
    "split_micro",
    "step_rng",
    "to_host",
    "train_state_shardings",
]
