"""Binary matmuls on packed words: XOR/AND + ``lax.population_count`` + chunked int32 sums.

Identities (``s`` = sign plane, bit 1 for +1; ``m`` = nonzero mask; ``popc`` = popcount summed
over the K words; padding bits are 0 in every plane, so they never count):

* signed x signed, no zeros:    ``dot = k - 2 popc(s_a ^ s_b)``
* signed x signed, with zeros:  ``m = m_a & m_b``; ``dot = popc(m) - 2 popc(m & (s_a ^ s_b))``
  (a missing mask is all ones inside ``k``; with one mask, ``popc(m)`` is a per-row count)
* unsigned {0,1} ``u`` x signed: ``dot = 2 popc(u & s_b) - popc(u & m_b)`` (``m_b`` missing:
  ``popc(u)``), used for BiBERT's bool attention x sign(V) and BiT's ``{0, alpha}`` activations.

All results are exact int32 and equal the float matmul of the unpacked values.

The K reduction is split into chunks of ``chunk`` words whose partial sums are added: a single
fused reduction over all words of K=3072 was measured 25x slower on CPU than chunks of <= 8-24
words (docs/performance.md). Operands broadcast over leading batch dims: ``a`` is
``[..., M, Kw]``, ``b`` is ``[..., N, Kw]`` and the result is ``[..., M, N]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bipft_jax.infer.packing import PackedSigns, row_popcount

DEFAULT_CHUNK = 8

Array = Any


def _as_u64(words: Array) -> Array:
    """Pair adjacent uint32 words into uint64 (a zero word pads an odd count). Needs x64 mode."""
    if words.shape[-1] % 2:
        pad = jnp.zeros(words.shape[:-1] + (1,), words.dtype)
        words = jnp.concatenate([words, pad], axis=-1)
    pairs = words.reshape(words.shape[:-1] + (words.shape[-1] // 2, 2))
    return lax.bitcast_convert_type(pairs, jnp.uint64)


def pairwise_popcount(
    combine: Callable[..., Array],
    a_planes: tuple[Array, ...],
    b_planes: tuple[Array, ...],
    chunk: int = DEFAULT_CHUNK,
    wide: bool = True,
) -> Array:
    """``out[..., i, j] = sum_w popc(combine(*a_planes[..., i, w], *b_planes[..., j, w]))``.

    ``combine`` gets the ``a`` planes then the ``b`` planes, broadcast to ``[..., M, N, c]``.
    ``wide`` pairs uint32 words into uint64 inside the graph (under a local ``enable_x64``; the
    result is int32 either way): on AVX2 CPUs a 64-bit popcount lowers to ``vpshufb+vpsadbw``
    without the extra widening shuffles of 32-bit lanes. ``chunk`` counts the words reduced at
    once (64-bit words when ``wide``).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    kw = a_planes[0].shape[-1]
    if any(p.shape[-1] != kw for p in a_planes + b_planes):
        raise ValueError(f"word counts differ: {[p.shape for p in a_planes + b_planes]}")
    if kw == 0:
        m, n = a_planes[0].shape[-2], b_planes[0].shape[-2]
        batch = jnp.broadcast_shapes(a_planes[0].shape[:-2], b_planes[0].shape[:-2])
        return jnp.zeros(batch + (m, n), jnp.int32)
    with jax.enable_x64(True) if wide else contextlib.nullcontext():
        if wide:
            a_planes = tuple(_as_u64(p) for p in a_planes)
            b_planes = tuple(_as_u64(p) for p in b_planes)
            kw = a_planes[0].shape[-1]
        acc = None
        for start in range(0, kw, chunk):
            sl = slice(start, min(start + chunk, kw))
            aa = [p[..., :, None, sl] for p in a_planes]
            bb = [p[..., None, :, sl] for p in b_planes]
            pc = lax.population_count(combine(*aa, *bb)).astype(jnp.int32)
            part = jnp.sum(pc, axis=-1, dtype=jnp.int32)
            acc = part if acc is None else acc + part
    return acc


def _check_k(a: PackedSigns, b: PackedSigns) -> None:
    if a.k != b.k:
        raise ValueError(f"contracting lengths differ: a.k={a.k}, b.k={b.k}")


def xnor_matmul(
    a: PackedSigns, b: PackedSigns, chunk: int = DEFAULT_CHUNK, wide: bool = True
) -> Array:
    """Exact int32 ``a @ b.T`` for ``{-1,0,1}`` operands packed along K (masks honoured)."""
    _check_k(a, b)
    if a.mask is None and b.mask is None:
        diff = pairwise_popcount(jnp.bitwise_xor, (a.signs,), (b.signs,), chunk, wide)
        return a.k - 2 * diff
    if a.mask is not None and b.mask is not None:
        both = pairwise_popcount(jnp.bitwise_and, (a.mask,), (b.mask,), chunk, wide)
        diff = pairwise_popcount(
            lambda sa, ma, sb, mb: ma & mb & (sa ^ sb),
            (a.signs, a.mask),
            (b.signs, b.mask),
            chunk,
            wide,
        )
        return both - 2 * diff
    if a.mask is not None:
        diff = pairwise_popcount(
            lambda sa, ma, sb: ma & (sa ^ sb), (a.signs, a.mask), (b.signs,), chunk, wide
        )
        return row_popcount(a.mask)[..., :, None] - 2 * diff
    diff = pairwise_popcount(
        lambda sa, sb, mb: mb & (sa ^ sb), (a.signs,), (b.signs, b.mask), chunk, wide
    )
    return row_popcount(b.mask)[..., None, :] - 2 * diff


def and_matmul(
    u: PackedSigns, b: PackedSigns, chunk: int = DEFAULT_CHUNK, wide: bool = True
) -> Array:
    """Exact int32 ``u @ b.T`` for unsigned ``{0,1}`` ``u`` (its ``signs`` plane is the bit) and
    ``{-1,0,1}`` ``b``."""
    _check_k(u, b)
    if u.mask is not None:
        raise ValueError("unsigned operand must have no mask plane: its bits already are {0,1}")
    pos = pairwise_popcount(jnp.bitwise_and, (u.signs,), (b.signs,), chunk, wide)
    if b.mask is None:
        nonzero = row_popcount(u.signs)[..., :, None]
    else:
        nonzero = pairwise_popcount(jnp.bitwise_and, (u.signs,), (b.mask,), chunk, wide)
    return 2 * pos - nonzero
