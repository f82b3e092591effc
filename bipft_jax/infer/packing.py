"""Bit-packing of sign tensors into uint32 words (host NumPy and in-graph JAX, one definition).

Layout: along the packed axis, element ``i`` goes to word ``i // 32``, bit ``i % 32`` (little bit
order, the same as ``np.packbits(..., bitorder="little")`` viewed as little-endian uint32). The
packed axis stays in place and shrinks to ``ceil(k / 32)`` words; padding bits are 0. The true
length ``k`` is not stored in the words: callers keep it (``PackedSigns.k``).

Exact zeros. The models binarize with ``sign`` where ``sign(0) = 0``, which one bit cannot hold.
A tensor is therefore packed into one or two planes:

* ``signs``: bit = 1 where ``x > 0`` (``+1``), 0 otherwise;
* ``mask`` (optional): bit = 1 where ``x != 0``. ``None`` means "no exact zeros", i.e. every
  element inside ``k`` is ``±1``.

Padding bits are 0 in both planes, so they never contribute to a product (see ``xnor.py`` for the
dot-product identities). On the host, :func:`pack_matrix` adds the mask plane only when the data
has zeros; in-graph (data-dependent shapes are impossible) the caller chooses ``with_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32


def num_words(k: int) -> int:
    """Words needed for ``k`` bits."""
    if k < 0:
        raise ValueError(f"bit length must be >= 0, got {k}")
    return -(-k // WORD_BITS)


def _xp(x: Any):
    return np if isinstance(x, np.ndarray | np.generic) else jnp


def pack_bits(bits: Any, axis: int = -1) -> Any:
    """Pack a boolean array along ``axis`` into uint32 words (NumPy in, NumPy out; else JAX).

    The packed axis keeps its position and becomes ``ceil(k / 32)`` long; padding bits are 0.
    """
    xp = _xp(bits)
    bits = xp.moveaxis(xp.asarray(bits, dtype=bool), axis, -1)
    k = bits.shape[-1]
    kw = num_words(k)
    pad = kw * WORD_BITS - k
    if pad:
        bits = xp.concatenate([bits, xp.zeros(bits.shape[:-1] + (pad,), dtype=bool)], axis=-1)
    bits = bits.reshape(bits.shape[:-1] + (kw, WORD_BITS)).astype(xp.uint32)
    shifts = xp.arange(WORD_BITS, dtype=xp.uint32)
    # Bits are disjoint, so the sum equals the bitwise OR and cannot overflow.
    words = xp.sum(bits << shifts, axis=-1, dtype=xp.uint32)
    return xp.moveaxis(words, -1, axis)


def unpack_bits(words: Any, k: int, axis: int = -1) -> Any:
    """Inverse of :func:`pack_bits`: boolean array with ``k`` elements along ``axis``."""
    xp = _xp(words)
    words = xp.moveaxis(xp.asarray(words), axis, -1)
    if words.dtype != xp.uint32:
        raise TypeError(f"packed words must be uint32, got {words.dtype}")
    if words.shape[-1] != num_words(k):
        raise ValueError(f"{words.shape[-1]} words cannot hold k={k} bits (need {num_words(k)})")
    shifts = xp.arange(WORD_BITS, dtype=xp.uint32)
    bits = ((words[..., None] >> shifts) & xp.uint32(1)).astype(bool)
    bits = bits.reshape(words.shape[:-1] + (-1,))[..., :k]
    return xp.moveaxis(bits, -1, axis)


def pack_signs(x: Any, axis: int = -1) -> Any:
    """Sign plane of ``x``: bit = 1 where ``x > 0``. Zeros pack as 0 (use a mask plane for them)."""
    return pack_bits(x > 0, axis)


def pack_nonzero(x: Any, axis: int = -1) -> Any:
    """Mask plane of ``x``: bit = 1 where ``x != 0``."""
    return pack_bits(x != 0, axis)


def unpack_signs(
    words: Any, k: int, axis: int = -1, mask: Any | None = None, dtype: Any = np.int8
) -> Any:
    """Values ``±1`` (and ``0`` where ``mask`` has a 0 bit) as ``dtype``, ``k`` long on ``axis``."""
    xp = _xp(words)
    vals = xp.where(unpack_bits(words, k, axis), 1, -1).astype(dtype)
    if mask is not None:
        vals = xp.where(unpack_bits(mask, k, axis), vals, xp.zeros((), dtype))
    return vals


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PackedSigns:
    """A ``{-1, 0, +1}`` tensor packed along its last axis: ``[..., ceil(k/32)]`` uint32 words.

    ``mask`` is ``None`` when the tensor is known to have no exact zeros (one-plane fast path).
    """

    signs: Any
    mask: Any | None
    k: int = field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical (unpacked) shape."""
        return tuple(self.signs.shape[:-1]) + (self.k,)

    def unpack(self, dtype: Any = np.int8) -> Any:
        return unpack_signs(self.signs, self.k, mask=self.mask, dtype=dtype)


def pack_matrix(x: Any, axis: int = -1, with_mask: bool | None = None) -> PackedSigns:
    """Pack ``x`` along ``axis`` (moved last) as :class:`PackedSigns`.

    ``with_mask=None`` (NumPy input only) adds the mask plane iff ``x`` has an exact zero;
    ``True``/``False`` force it (``False`` asserts there are no zeros: zeros would be read as -1).
    A weight kernel ``[K, N]`` becomes rows ``[N, Kw]`` with ``pack_matrix(w, axis=0)``.
    """
    xp = _xp(x)
    x = xp.moveaxis(xp.asarray(x), axis, -1)
    if with_mask is None:
        if xp is not np:
            raise ValueError("with_mask=None needs concrete NumPy input; pass True/False in-graph")
        with_mask = bool(np.any(x == 0))
    mask = pack_nonzero(x) if with_mask else None
    return PackedSigns(signs=pack_signs(x), mask=mask, k=int(x.shape[-1]))


def row_popcount(words: Any) -> Any:
    """Per-row popcount ``[..., R, Kw] -> [..., R]`` in int32 (set bits of each row's words)."""
    return jnp.sum(jax.lax.population_count(words).astype(jnp.int32), axis=-1)
