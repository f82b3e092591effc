"""`sign` and `bool` with straight-through estimators (`jax.custom_vjp`).

`sign(0) = 0` as in `torch.sign` / `jnp.sign`, which all three reference repos rely on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def ste_mask(x: jax.Array, ste: str, clip: float, inclusive: bool) -> jax.Array:
    """Derivative of the surrogate used in the backward pass, evaluated at `x` (float32)."""
    x = x.astype(jnp.float32)
    if ste == "identity":
        return jnp.ones_like(x)
    inside = jnp.abs(x) <= clip if inclusive else jnp.abs(x) < clip
    if ste == "clipped":
        return inside.astype(jnp.float32)
    if ste == "approx":  # Bi-Real ApproxSign: d/dx = (2/c)(1 - |x|/c) on |x| < c.
        return jnp.where(jnp.abs(x) < clip, (2.0 / clip) * (1.0 - jnp.abs(x) / clip), 0.0)
    raise ValueError(f"unknown STE {ste!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def sign_ste(x: jax.Array, ste: str = "clipped", clip: float = 1.0, inclusive: bool = True):
    """`sign(x)` in {-1, 0, 1}; backward: `g · ste'(x)`."""
    return jnp.sign(x)


def _sign_fwd(x, ste, clip, inclusive):
    return jnp.sign(x), x


def _sign_bwd(ste, clip, inclusive, x, g):
    return ((g.astype(jnp.float32) * ste_mask(x, ste, clip, inclusive)).astype(x.dtype),)


sign_ste.defvjp(_sign_fwd, _sign_bwd)


def _bool(x):
    return (x > 0).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def bool_ste(x: jax.Array, ste: str = "clipped", clip: float = 1.0, inclusive: bool = False):
    """`1[x > 0]` in {0, 1} (x = 0 maps to 0, as in BiBERT); backward `g · ste'(x)`."""
    return _bool(x)


def _bool_fwd(x, ste, clip, inclusive):
    return _bool(x), x


bool_ste.defvjp(_bool_fwd, _sign_bwd)
