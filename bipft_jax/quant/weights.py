"""Weight binarizers: BWN (BiT/BiPFT) and BiBERT's channel-wise variant.

Both return exactly `scale · {-1, 0, +1}` in the forward pass (no `w + stop_gradient(...)`
rounding), with the backward pass written as a `jax.custom_vjp`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bipft_jax.quant.config import WeightQuant


def _reduce_axes(ndim: int, per_channel: bool, channel_axis: int) -> tuple[int, ...]:
    if not per_channel:
        return tuple(range(ndim))
    keep = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != keep)


def bwn_parts(
    w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int
) -> tuple[jax.Array, jax.Array]:
    """`(sign(W - μ), m)` in float32, `m = mean|W|` of the *uncentred* W (keepdims shape).

    The sign is taken by comparing W with μ, not as `sign(W - μ)`: XLA rewrites the mean's
    division into a multiply by 1/n and, where it fuses that with the subtraction, contracts
    both into one FMA, so a weight equal to μ got sign 0 in one program and ±1 in another
    (seen between a trained BiBERT model's forward and its packed export)."""
    wf = w.astype(jnp.float32)
    m = jnp.mean(
        jnp.abs(wf), axis=_reduce_axes(w.ndim, per_channel_scale, channel_axis), keepdims=True
    )
    mu = jnp.mean(wf, axis=_reduce_axes(w.ndim, per_channel_center, channel_axis), keepdims=True)
    signs = (wf > mu).astype(jnp.float32) - (wf < mu).astype(jnp.float32)
    return signs, m


def bwn_forward(w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int):
    """`m · sign(W - μ)` (reference `BwnQuantizer`)."""
    signs, m = bwn_parts(w, per_channel_scale, per_channel_center, channel_axis)
    return (m * signs).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def bwn(w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int):
    """BWN binarizer with the identity straight-through estimator (no gradient to m or μ)."""
    return bwn_forward(w, per_channel_scale, per_channel_center, channel_axis)


def _bwn_fwd(w, per_channel_scale, per_channel_center, channel_axis):
    return bwn_forward(w, per_channel_scale, per_channel_center, channel_axis), None


def _bwn_bwd(per_channel_scale, per_channel_center, channel_axis, _, g):
    return (g,)


bwn.defvjp(_bwn_fwd, _bwn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def bibert_weight(w: jax.Array, channel_axis: int = -1):
    """BiBERT: `m_c·sign(W - μ_c)` per channel; m detached; gradient via `clip(W - μ_c, -1, 1)`.

    The backward is the VJP of `c(W) = clip(W - mean_c(W), -1, 1)`: the masked gradient, projected
    to zero channel-mean (the reference's `W_b = stopgrad(W_b - c) + c`, without its rounding).
    """
    return bwn_forward(w, True, True, channel_axis)


def _bibert_fwd(w, channel_axis):
    return bwn_forward(w, True, True, channel_axis), w


def _bibert_bwd(channel_axis, w, g):
    axes = _reduce_axes(w.ndim, True, channel_axis)
    wf = w.astype(jnp.float32)
    centred = wf - jnp.mean(wf, axis=axes, keepdims=True)
    u = g.astype(jnp.float32) * ((centred >= -1.0) & (centred <= 1.0))
    return ((u - jnp.mean(u, axis=axes, keepdims=True)).astype(w.dtype),)


bibert_weight.defvjp(_bibert_fwd, _bibert_bwd)


def quantize_weight(w: jax.Array, cfg: WeightQuant) -> jax.Array:
    """Binarize a weight tensor as `cfg` says (identity for method "none")."""
    if cfg.method == "none":
        return w
    if cfg.method == "bwn":
        return bwn(w, cfg.scale == "channel", cfg.center == "channel", cfg.channel_axis)
    if cfg.method == "bibert":
        return bibert_weight(w, cfg.channel_axis)
    raise ValueError(f"unknown weight method {cfg.method!r}")


def weight_codes(
    w: jax.Array, cfg: WeightQuant, contract_axis: int = 0
) -> tuple[jax.Array, jax.Array] | None:
    """`(signs, m)` with `quantize_weight(w, cfg) == m·signs` (keepdims `m`, no gradient), or
    None where the product cannot apply `m` after the sum: method "none", or a scale that
    varies along `contract_axis` (a per-input-channel `m`)."""
    if cfg.method == "none":
        return None
    per_channel = cfg.method == "bibert"
    scale = per_channel or cfg.scale == "channel"
    center = per_channel or cfg.center == "channel"
    signs, m = bwn_parts(w, scale, center, cfg.channel_axis)
    if m.shape[contract_axis] != 1:
        return None
    return jax.lax.stop_gradient(signs.astype(w.dtype)), jax.lax.stop_gradient(m)
