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


def bwn_forward(w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int):
    """`m · sign(W - μ)`, with `m = mean|W|` of the *uncentred* W (reference `BwnQuantizer`)."""
    wf = w.astype(jnp.float32)
    m = jnp.mean(
        jnp.abs(wf), axis=_reduce_axes(w.ndim, per_channel_scale, channel_axis), keepdims=True
    )
    mu = jnp.mean(wf, axis=_reduce_axes(w.ndim, per_channel_center, channel_axis), keepdims=True)
    return (m * jnp.sign(wf - mu)).astype(w.dtype)


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
