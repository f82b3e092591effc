"""LR schedules and optimizers: AdamW with parameter groups, and a BertAdam-parity transform.

Parameter groups (by leaf path): ``alpha`` (quantizer scales: own lr, no weight decay),
``no_decay`` (leaves named ``bias``/``scale`` and anything inside a LayerNorm module) and ``decay``
(the rest). BertAdam (BiT/BiBERT, ``transformer/optimization.py``) differs from AdamW in three ways
(methods.md §5.2, §9 item 5): no bias correction, eps 1e-6, and gradient-norm clipping to 1.0 per
parameter TENSOR before the moments. The schedule is evaluated at the step count before the update
(BertAdam's ``state['step']``), so with warmup the very first update has lr 0 in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]

SCHEDULES = ("linear", "cosine", "constant")
ALPHA, NO_DECAY, DECAY = "alpha", "no_decay", "decay"

_DEFAULTS: dict[str, Any] = {
    "name": "adamw",
    "lr": None,
    "alpha_lr": None,  # None: same as lr
    "weight_decay": None,  # None: 0.0 for adamw, 0.01 for bertadam
    "b1": 0.9,
    "b2": 0.999,
    "eps": None,  # None: 1e-8 for adamw, 1e-6 for bertadam
    "schedule": "linear",
    "warmup_steps": 0,
    "total_steps": None,
    "end_lr": 0.0,
    # The schedule advances this many steps per optimizer update. 1 = the nominal schedule;
    # BiPFT's pretraining as it ran = 8 (accelerate stepped the scheduler once per process).
    "schedule_steps_per_update": 1,
    "clip_norm": 0.0,  # global-norm clipping, 0 = off
    "per_tensor_clip": None,  # per-tensor norm clipping, None: 0 for adamw, 1.0 for bertadam
    "scanned_prefix": None,  # "a/b/c": leaves under it are layer-stacked on axis 0
}


# ----------------------------------------------------------------------------- schedules


def make_schedule(
    kind: str,
    peak_lr: float,
    warmup_steps: float,
    total_steps: float | None,
    end_lr: float = 0.0,
    steps_per_update: int = 1,
) -> Schedule:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then decay to ``end_lr``.

    ``linear`` decays linearly to ``end_lr`` at ``total_steps`` and stays there (BertAdam's
    ``warmup_linear``: ``warmup_steps`` may be fractional, e.g. ``0.1 * total``); ``cosine`` follows
    a half cosine; ``constant`` keeps ``peak_lr`` after warmup (``total_steps`` unused).
    ``steps_per_update = k`` evaluates the schedule at ``k·step``: the schedule as a scheduler
    stepped k times per update runs it (BiPFT's pretraining under accelerate with k = 8
    processes: warm-up over ``warmup_steps / k`` updates, ``end_lr`` from ``total_steps / k``).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if peak_lr < 0 or warmup_steps < 0:
        raise ValueError(f"schedule: peak_lr ({peak_lr}) and warmup_steps ({warmup_steps}) >= 0")
    if not isinstance(steps_per_update, int) or steps_per_update < 1:
        raise ValueError(
            f"schedule: steps_per_update must be an int >= 1, got {steps_per_update!r}"
        )
    if kind != "constant" and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(
            f"schedule {kind!r}: total_steps ({total_steps}) must exceed warmup_steps "
            f"({warmup_steps})"
        )
    w = float(warmup_steps)
    decay_len = 1.0 if total_steps is None or kind == "constant" else float(total_steps) - w

    def schedule(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32) * steps_per_update
        warm = peak_lr * s / max(w, 1e-12)
        p = jnp.clip((s - w) / decay_len, 0.0, 1.0)
        if kind == "linear":
            after = peak_lr + (end_lr - peak_lr) * p
        elif kind == "cosine":
            after = end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * p))
        else:
            after = jnp.full_like(s, peak_lr)
        return jnp.where(s < w, warm, after)

    return schedule


# ----------------------------------------------------------------------------- param groups


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    # Flax `Partitioned` boxes add a trailing `.value`.
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names.pop()
    return names


def _label(names: list[str], alpha_names: tuple[str, ...]) -> str:
    leaf = names[-1] if names else ""
    if leaf in alpha_names:
        return ALPHA
    if leaf in ("bias", "scale") or any("layernorm" in n.lower().replace("_", "") for n in names):
        return NO_DECAY
    return DECAY


def param_labels(params: Any, alpha_names: tuple[str, ...] = ("alpha",)) -> Any:
    """The group label (``alpha``/``no_decay``/``decay``) of every leaf, as a matching tree."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _label(_path_names(path), alpha_names), params
    )


# ----------------------------------------------------------------------------- transforms


def per_tensor_clip(
    max_norm: float, scanned_prefix: str | None = None
) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_(p, max_norm)`` on every tensor separately.

    Scale ``min(1, max_norm / (‖g‖ + 1e-6))``. Leaves whose '/'-joined path starts with
    ``scanned_prefix`` hold layers stacked on axis 0 and are clipped per layer slice.
    """

    def clip(path: tuple[Any, ...], g: jax.Array) -> jax.Array:
        stacked = scanned_prefix is not None and "/".join(_path_names(path)).startswith(
            scanned_prefix
        )
        axes = tuple(range(1, g.ndim)) if stacked and g.ndim > 0 else None
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)), axis=axes, keepdims=True))
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return (g * coef).astype(g.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(clip, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class ScaleByBertAdamState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_bert_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """Adam direction ``m / (sqrt(v) + eps)`` WITHOUT bias correction; fp32 moments."""

    def init(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
        return ScaleByBertAdamState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        g32 = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, g32)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, g32)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, ScaleByBertAdamState(mu, nu)

    return optax.GradientTransformation(init, update)


def _core(
    name: str, lr: float | Schedule, b1: float, b2: float, eps: float, wd: float
) -> optax.GradientTransformation:
    """Adam direction → + wd·p (decoupled) → × -lr(step)."""
    if name == "bertadam":
        direction = scale_by_bert_adam(b1, b2, eps)
    else:
        direction = optax.scale_by_adam(b1, b2, eps, mu_dtype=jnp.float32)
    parts = [direction]
    if wd > 0:
        parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree,
    )


def fp32_state(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``tx`` in float32 (state, updates, params); updates come back in the grads' dtype."""

    def init(params):
        return tx.init(_cast_floats(params, jnp.float32))

    def update(updates, state, params=None):
        p32 = None if params is None else _cast_floats(params, jnp.float32)
        out, state = tx.update(_cast_floats(updates, jnp.float32), state, p32)
        return jax.tree.map(lambda o, u: o.astype(jnp.asarray(u).dtype), out, updates), state

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- factory


def resolve_optimizer_config(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Fill defaults and validate a plain dict / ConfigDict; errors name the offending key."""
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"optimizer config: unknown key(s) {unknown} (known: {sorted(_DEFAULTS)})")
    c = {**_DEFAULTS, **raw}
    if c["name"] not in ("adamw", "bertadam"):
        raise ValueError(
            f"optimizer config 'name': expected 'adamw' or 'bertadam', got {c['name']!r}"
        )
    if c["lr"] is None:
        raise ValueError("optimizer config 'lr' is required")
    bert = c["name"] == "bertadam"
    if c["alpha_lr"] is None:
        c["alpha_lr"] = c["lr"]
    if c["weight_decay"] is None:
        c["weight_decay"] = 0.01 if bert else 0.0
    if c["eps"] is None:
        c["eps"] = 1e-6 if bert else 1e-8
    if c["per_tensor_clip"] is None:
        c["per_tensor_clip"] = 1.0 if bert else 0.0
    numbers = ("lr", "alpha_lr", "end_lr", "weight_decay", "eps", "clip_norm", "per_tensor_clip")
    for key in numbers:
        v = c[key]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"optimizer config {key!r}: expected a finite number >= 0, got {v!r}")
    k = c["schedule_steps_per_update"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"optimizer config 'schedule_steps_per_update': expected an int >= 1, got {k!r}"
        )
    for key in ("b1", "b2"):
        if not 0.0 <= c[key] < 1.0:
            raise ValueError(f"optimizer config {key!r}: expected 0 <= {key} < 1, got {c[key]!r}")
    return c


def lr_schedule(cfg: Mapping[str, Any] | Any, group: str = DECAY) -> Schedule:
    """The learning-rate schedule of a parameter group (``decay``/``no_decay`` or ``alpha``) from
    an optimizer config, exactly as ``make_optimizer`` applies it (use it to log the lr)."""
    c = resolve_optimizer_config(cfg)
    peak = c["alpha_lr"] if group == ALPHA else c["lr"]
    end_ratio = c["end_lr"] / c["lr"] if c["lr"] > 0 else 0.0  # α decays proportionally
    try:
        return make_schedule(
            c["schedule"], peak, c["warmup_steps"], c["total_steps"], end_ratio * peak,
            c["schedule_steps_per_update"],
        )  # fmt: skip
    except ValueError as err:
        raise ValueError(f"optimizer config: {err}") from None


def make_optimizer(cfg: Mapping[str, Any] | Any) -> optax.GradientTransformation:
    """AdamW or BertAdam with parameter groups, schedule and clipping, from a config.

    Keys (defaults in ``_DEFAULTS``): ``name, lr, alpha_lr, weight_decay, b1, b2, eps, schedule,
    warmup_steps, total_steps, end_lr, schedule_steps_per_update, clip_norm, per_tensor_clip,
    scanned_prefix``. α leaves get
    ``alpha_lr`` (same schedule shape) and no decay; bias/LayerNorm leaves get no decay.
    """
    c = resolve_optimizer_config(cfg)
    sched = {DECAY: lr_schedule(c), ALPHA: lr_schedule(c, ALPHA)}
    args = (c["name"], c["b1"], c["b2"], c["eps"])
    groups = {
        DECAY: _core(args[0], sched[DECAY], *args[1:], c["weight_decay"]),
        NO_DECAY: _core(args[0], sched[DECAY], *args[1:], 0.0),
        ALPHA: _core(args[0], sched[ALPHA], *args[1:], 0.0),
    }
    parts = []
    if c["clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(c["clip_norm"]))
    if c["per_tensor_clip"] > 0:
        parts.append(per_tensor_clip(c["per_tensor_clip"], c["scanned_prefix"]))
    parts.append(optax.multi_transform(groups, param_labels))
    return fp32_state(optax.chain(*parts))
