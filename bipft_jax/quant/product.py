"""Binary products computed exactly: integer codes multiplied first, scales applied after.

A binarized tensor is `value = codes · scale` with codes in a small integer set ({-1, 0, 1},
{0, 1}, or a k-bit range) and a float scale (α of an activation, m of a weight). The product
of two of them, `Σ_k (a_k·s_a)(b_k·s_b)`, rounds differently with every summation order, so
with XLA's shape-dependent dot tiling; a sum within an ulp of a binarization threshold then
flips a later sign. Written `(Σ_k a_k b_k)·s_a·s_b`, the sum is an exact integer in float32
(below 2²⁴) and the result no longer depends on the batch shape. It is also the order the
packed XNOR/popcount path uses (`infer/packed_forward.py`), so the two agree bit for bit.

The backward pass is that of the plain product of the values (`jax.custom_vjp`), so gradients
are those of `einsum(a.value, b.value)`, and reach the quantizers' own VJPs unchanged.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Quantized(NamedTuple):
    """A binarized tensor: `value` (what autodiff sees), `codes` and `scale` with
    `value == codes · scale`. `scale` None means 1; `codes` None means the split is unknown
    (e.g. k-bit activations shifted by their minimum) and products fall back to the values."""

    value: jax.Array
    codes: jax.Array | None = None
    scale: jax.Array | None = None

    @classmethod
    def plain(cls, x: jax.Array) -> Quantized:
        """An unquantized tensor: its own codes, no scale."""
        return cls(x, x, None)

    def map(self, fn) -> Quantized:
        """`fn` (a reshape or transpose) applied to value and codes; the scale is a scalar."""
        return Quantized(fn(self.value), None if self.codes is None else fn(self.codes), self.scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _scaled_product(product, preferred, out_dtype, a, b, a_codes, b_codes, scales):
    y = product(a_codes.astype(a.dtype), b_codes.astype(b.dtype), jnp.float32)
    return (y * combined_scale(scales)).astype(out_dtype)


def combined_scale(scales) -> jax.Array:
    """`scales[0] · scales[1] · ...` in float32, multiplied together before they meet the
    product: one multiply per output element, so no program can fuse a chain of them with a
    following bias add into a different FMA (the packed path scales the same way)."""
    total = jnp.asarray(scales[0], jnp.float32)
    for s in scales[1:]:
        total = total * jnp.asarray(s, jnp.float32)
    return total


def _fwd(product, preferred, out_dtype, a, b, a_codes, b_codes, scales):
    y = _scaled_product(product, preferred, out_dtype, a, b, a_codes, b_codes, scales)
    return y, (a, b, a_codes, b_codes, scales)


def _bwd(product, preferred, out_dtype, res, g):
    a, b, a_codes, b_codes, scales = res
    _, vjp = jax.vjp(lambda a, b: product(a, b, preferred).astype(out_dtype), a, b)
    da, db = vjp(g)
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
    return da, db, zeros(a_codes), zeros(b_codes), zeros(scales)


_scaled_product.defvjp(_fwd, _bwd)


def scaled_product(
    product, a: Quantized, b: Quantized, scales: tuple[jax.Array, ...], preferred=None
) -> jax.Array:
    """`product(a.codes, b.codes) · (scales[0] · scales[1] ...)` in float32, cast to the dtype of
    the plain product `product(a.value, b.value, preferred)`, whose gradients it has.
    `product(x, y, preferred_element_type)` is a bilinear map (a dot_general or einsum). Without
    scales (or codes) it is the plain product: ±1 / {0, 1} codes are exact already, and FP
    layers stay unchanged."""
    if not scales or a.codes is None or b.codes is None:
        return product(a.value, b.value, preferred)
    out = jax.eval_shape(lambda x, y: product(x, y, preferred), a.value, b.value)
    args = (a.value, b.value, a.codes, b.codes, scales)
    return _scaled_product(product, preferred, jnp.dtype(out.dtype), *args)


def quantized_einsum(
    equation: str, a: Quantized, b: Quantized, preferred_element_type=None
) -> jax.Array:
    """`einsum(equation, a.value, b.value)` computed as codes first, then `a.scale · b.scale`."""
    scales = tuple(s for s in (a.scale, b.scale) if s is not None)
    return scaled_product(_einsum(equation), a, b, scales, preferred_element_type)


@functools.cache
def _einsum(equation: str):
    """One function object per equation, so custom_vjp traces it as the same static argument."""
    return lambda x, y, preferred: jnp.einsum(equation, x, y, preferred_element_type=preferred)
