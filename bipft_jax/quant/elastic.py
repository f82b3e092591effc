"""BiT's elastic binarizers and their k-bit LSQ generalisation (`jax.custom_vjp`).

signed, 1 bit:    y = α·sign(x)                      (sign(0) = 0)
unsigned, 1 bit:  y = α·round(clip(x/α, 0, 1))        (1 iff x > α/2; round half to even)
k bits:           y = α·clip(round(x/α), Qn, Qp)      (unsigned k-bit optionally on x - min(x))

Backward (BiT `utils_quant.py`): with q = x/α,
  ∂/∂x = 1[Qn ≤ q ≤ Qp];
  ∂/∂α = s·Σ g·(Qn·1[q<Qn] + Qp·1[q>Qp] + (round(q) - q)·1[Qn≤q≤Qp]), or s·Σ g·sign(x) for
  signed 1 bit, where s = 1/sqrt(numel·Qp·multiplier).
α is clamped to ≥ 1e-5 in the forward pass; its gradient is passed through unclamped (as in
the reference). `numel` is that of the *global* tensor: under `jax.jit` with shardings, shapes
are global, so the gradient does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bipft_jax.quant.product import Quantized

ALPHA_MIN = 1e-5


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """(Qn, Qp): the integer range of a `bits`-bit quantizer."""
    if signed:
        return (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return 0, 2**bits - 1


def init_alpha(x: jax.Array, bits: int, signed: bool) -> jax.Array:
    """Data-dependent α₀ (BiT `AlphaInit`): 2·mean|x|/√Qp signed, 4·mean|x|/√Qp unsigned."""
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    qp = max(qp, 1)
    factor = 2.0 if signed else 4.0
    return factor * jnp.mean(jnp.abs(x.astype(jnp.float32))) / math.sqrt(qp)


def _prepare(x, alpha, bits, signed, shift_min):
    xf = x.astype(jnp.float32)
    offset = jnp.zeros((), jnp.float32)
    if not signed and bits > 1 and shift_min:
        offset = jax.lax.stop_gradient(jnp.min(xf))
    a = jnp.maximum(alpha.astype(jnp.float32), ALPHA_MIN)
    return xf - offset, offset, a


def _codes(xs, a, bits, signed):
    if signed and bits == 1:
        return jnp.sign(xs)
    qn, qp = levels(bits, signed)
    return jnp.clip(jnp.round(xs / a), qn, qp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _elastic(x, alpha, bits, signed, numel_multiplier, shift_min):
    """`(value, codes, α)` with `value == codes·α + offset`; only the value has a gradient."""
    xs, offset, a = _prepare(x, alpha, bits, signed, shift_min)
    codes = _codes(xs, a, bits, signed)
    return (a * codes + offset).astype(x.dtype), codes.astype(x.dtype), a


def _fwd(x, alpha, bits, signed, numel_multiplier, shift_min):
    return _elastic(x, alpha, bits, signed, numel_multiplier, shift_min), (x, alpha)


def _bwd(bits, signed, numel_multiplier, shift_min, res, gs):
    x, alpha = res
    g = gs[0]
    xs, _, a = _prepare(x, alpha, bits, signed, shift_min)
    qn, qp = levels(bits, signed)
    gf = g.astype(jnp.float32)
    q = xs / a
    small, big = q < qn, q > qp
    middle = ~(small | big)
    scale = 1.0 / math.sqrt(x.size * qp * numel_multiplier)
    if signed and bits == 1:
        dalpha_elem = jnp.sign(xs)
    else:
        dalpha_elem = jnp.where(small, qn, jnp.where(big, qp, jnp.round(q) - q))
    grad_alpha = scale * jnp.sum(dalpha_elem * gf)
    grad_x = jnp.where(middle, gf, 0.0).astype(x.dtype)
    return grad_x, grad_alpha.astype(alpha.dtype).reshape(alpha.shape)


_elastic.defvjp(_fwd, _bwd)


def elastic_quantize(
    x: jax.Array,
    alpha: jax.Array,
    bits: int = 1,
    signed: bool = True,
    numel_multiplier: int = 1,
    shift_min: bool = True,
) -> jax.Array:
    """Elastic (LSQ-style) quantizer with learnable scalar step `alpha`; see module docstring."""
    return _elastic(x, alpha, bits, signed, numel_multiplier, shift_min)[0]


def elastic_quantized(
    x: jax.Array, alpha: jax.Array, bits: int, signed: bool, numel_multiplier: int, shift_min: bool
) -> Quantized:
    """`elastic_quantize` as `Quantized(value, codes, α)`, `value == codes·α`, for products
    that apply α after an exact integer sum; codes None where the quantizer adds an offset
    (k-bit unsigned on `x - min(x)`)."""
    value, codes, a = _elastic(x, alpha, bits, signed, numel_multiplier, shift_min)
    if not signed and bits > 1 and shift_min:
        return Quantized(value)
    return Quantized(value, codes, a)
