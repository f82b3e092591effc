"""Weight binarizers: BWN (BiT/BiPFT) and BiBERT's channel-wise variant.

Both return exactly `scale · {-1, 0, +1}` in the forward pass (no `w + stop_gradient(...)`
rounding), with the backward pass written as a `jax.custom_vjp`. One traced function gives the
value, its sign codes and its scale m together (`binarize_weight`), for products that apply m
after an exact integer sum (`quant/product.py`) and for the packed export.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bipft_jax.quant.config import WeightQuant
from bipft_jax.quant.product import Quantized


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


def _split_outputs(w: jax.Array, signs: jax.Array, m: jax.Array):
    """`(m·signs, signs, m)`: the binarized value in w's dtype, its codes, its scale."""
    return (m * signs).astype(w.dtype), signs.astype(w.dtype), m


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _bwn_split(w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int):
    """BWN `(value, signs, m)` with the identity straight-through estimator for the value; the
    codes and scale carry no gradient (no gradient to m or μ)."""
    return _split_outputs(w, *bwn_parts(w, per_channel_scale, per_channel_center, channel_axis))


def _bwn_fwd(w, per_channel_scale, per_channel_center, channel_axis):
    return _bwn_split(w, per_channel_scale, per_channel_center, channel_axis), None


def _bwn_bwd(per_channel_scale, per_channel_center, channel_axis, _, g):
    return (g[0],)


_bwn_split.defvjp(_bwn_fwd, _bwn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _bibert_split(w: jax.Array, channel_axis: int):
    """BiBERT `(value, signs, m)`: per-channel BWN; the value's gradient is the VJP of
    `c(W) = clip(W - mean_c(W), -1, 1)`: the masked gradient projected to zero channel-mean (the
    reference's `W_b = stopgrad(W_b - c) + c`, without its rounding). m is detached."""
    return _split_outputs(w, *bwn_parts(w, True, True, channel_axis))


def _bibert_fwd(w, channel_axis):
    return _bibert_split(w, channel_axis), w


def _bibert_bwd(channel_axis, w, g):
    axes = _reduce_axes(w.ndim, True, channel_axis)
    wf = w.astype(jnp.float32)
    centred = wf - jnp.mean(wf, axis=axes, keepdims=True)
    u = g[0].astype(jnp.float32) * ((centred >= -1.0) & (centred <= 1.0))
    return ((u - jnp.mean(u, axis=axes, keepdims=True)).astype(w.dtype),)


_bibert_split.defvjp(_bibert_fwd, _bibert_bwd)


def bwn(w: jax.Array, per_channel_scale: bool, per_channel_center: bool, channel_axis: int):
    """BWN binarizer `m · sign(W - μ)` (reference `BwnQuantizer`), identity straight-through."""
    return _bwn_split(w, per_channel_scale, per_channel_center, channel_axis)[0]


def bibert_weight(w: jax.Array, channel_axis: int = -1):
    """BiBERT: `m_c·sign(W - μ_c)` per channel; m detached; gradient via `clip(W - μ_c, -1, 1)`."""
    return _bibert_split(w, channel_axis)[0]


def binarize_weight(w: jax.Array, cfg: WeightQuant, contract_axis: int | None = None) -> Quantized:
    """`w` binarized as `cfg` says, as `Quantized(value, signs, m)` with `value == m·signs`
    (keepdims `m`; only the value carries a gradient). Method "none" gives `Quantized(w)`, no
    split. With `contract_axis`, the split is dropped (codes None) where `m` varies
    along that axis, since a product over it cannot apply `m` after the sum."""
    if cfg.method == "none":
        return Quantized(w)
    if cfg.method == "bwn":
        split = _bwn_split(w, cfg.scale == "channel", cfg.center == "channel", cfg.channel_axis)
    elif cfg.method == "bibert":
        split = _bibert_split(w, cfg.channel_axis)
    else:
        raise ValueError(f"unknown weight method {cfg.method!r}")
    value, signs, m = split
    if contract_axis is not None and m.shape[contract_axis] != 1:
        return Quantized(value)
    return Quantized(value, signs, m)


def quantize_weight(w: jax.Array, cfg: WeightQuant) -> jax.Array:
    """Binarize a weight tensor as `cfg` says (identity for method "none")."""
    return binarize_weight(w, cfg).value
