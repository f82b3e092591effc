"""Which kernel runs a packed product: XLA ops (:mod:`.xnor`) or the native CPU kernels
(:mod:`.native`), and the products that pack their float operands in-graph.

``kernel`` is ``"xla"``, ``"native"`` (the ``jax.ffi`` kernels where they apply, XLA elsewhere)
or ``"auto"`` (native when the kernels build on this machine).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from bipft_jax.infer import native
from bipft_jax.infer.packing import PackedSigns, pack_bits, pack_matrix
from bipft_jax.infer.xnor import DEFAULT_CHUNK, and_matmul, xnor_matmul

Array = Any
KERNELS = ("auto", "xla", "native")


def resolve_kernel(kernel: str) -> str:
    """``"xla"`` or ``"native"`` for a ``kernel`` option (``"auto"``: native if it builds)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        return "native" if native.native_available() else "xla"
    return kernel


def _pack(x: Array, kernel: str) -> PackedSigns:
    """Sign and nonzero planes of float ``x`` (one native pass with ``kernel="native"``)."""
    if kernel == "native":
        return native.sign_pack_native(x)
    return pack_matrix(x, with_mask=True)


def _has_zero(p: PackedSigns) -> Array:
    """Whether a tensor packed with its mask plane has an exact zero (reads the mask words)."""
    full = jnp.asarray(pack_bits(np.ones(p.k, bool)))  # mask words of a zero-free row
    return jnp.any(p.mask != full)


def signed_matmul(
    a: Array, b: Array | PackedSigns, kernel: str = "xla", chunk: int = DEFAULT_CHUNK
) -> Array:
    """Exact int32 ``sign(a) @ sign(b).T`` (``sign(0) = 0``), packing in-graph.

    ``a``: float ``[..., M, K]``; ``b``: packed weight rows ``[N, Kw]`` or float ``[..., N, K]``.
    Both planes are packed in one pass and the zero test reads the packed mask words (testing
    ``a == 0`` on the floats made XLA compute ``a``'s producer, e.g. GELU, twice: ~15% of a
    BERT-base layer). The two-plane product runs only when an operand has an exact zero
    (``lax.cond``); else the one-plane product. ``kernel="native"`` packs and multiplies with
    the ``jax.ffi`` kernels where they apply.
    """
    pa = _pack(a, kernel)
    zero = _has_zero(pa)
    weight_mask = isinstance(b, PackedSigns) and b.mask is not None  # a weight with zeros
    if not isinstance(b, PackedSigns):
        b = _pack(b, kernel)
        zero = zero | _has_zero(b)

    def one_plane(pa: PackedSigns, pb: PackedSigns) -> Array:
        pa = PackedSigns(pa.signs, None, pa.k)
        if weight_mask:  # only ``a`` is zero-free: one-mask product
            return xnor_matmul(pa, pb, chunk)
        pb = PackedSigns(pb.signs, None, pb.k)
        if kernel == "native":
            return native.xnor_matmul_native(pa, pb, chunk)
        return xnor_matmul(pa, pb, chunk)

    return lax.cond(zero, lambda pa, pb: xnor_matmul(pa, pb, chunk), one_plane, pa, b)


def unsigned_matmul(
    u: Array, b: Array | PackedSigns, kernel: str = "xla", chunk: int = DEFAULT_CHUNK
) -> Array:
    """Exact int32 ``u @ sign(b).T`` for ``u`` in {0, 1} (float ``[..., M, K]``); ``b`` and
    ``kernel`` as in :func:`signed_matmul`."""
    if kernel == "native":
        matmul = native.and_matmul_native
        pu = PackedSigns(_pack(u, kernel).signs, None, u.shape[-1])
    else:
        matmul, pu = and_matmul, pack_matrix(u, with_mask=False)
    if isinstance(b, PackedSigns):
        return matmul(pu, b, chunk)
    pb = _pack(b, kernel)
    return lax.cond(
        _has_zero(pb),
        lambda pu, pb: and_matmul(pu, pb, chunk),
        lambda pu, pb: matmul(pu, PackedSigns(pb.signs, None, pb.k), chunk),
        pu,
        pb,
    )


def binary_linear(
    x: Array,
    packed_w: PackedSigns,
    w_scale: Array,
    alpha: Array | None = None,
    bias: Array | None = None,
    *,
    unsigned: bool = False,
    exact_zeros: bool = True,
    chunk: int = DEFAULT_CHUNK,
    wide: bool = True,
    kernel: str = "xla",
) -> Array:
    """``alpha * w_scale * (bin(x) @ W_pm1.T) + bias`` with ``x`` binarized and packed in-graph.

    ``x``: float ``[..., K]``; ``packed_w``: rows ``[N, Kw]`` (``pack_matrix(kernel, axis=0)``);
    ``w_scale``: scalar or ``[N]``; ``alpha``: activation scale, scalar or broadcastable to
    ``[..., 1]``. ``bin(x)`` is ``sign(x)`` (``unsigned=False``; exact zeros map to 0 when
    ``exact_zeros``, else the caller guarantees there are none and the one-plane path runs) or
    ``x > 0`` as ``{0, 1}`` (``unsigned=True``). Any learnable threshold must already be applied.
    ``kernel="native"`` packs and multiplies on the ``jax.ffi`` CPU kernels (``native/``) where
    they apply (no mask planes) and on XLA otherwise.
    """
    if kernel not in ("xla", "native"):
        raise ValueError(f"kernel must be 'xla' or 'native', got {kernel!r}")
    if x.shape[-1] != packed_w.k:
        raise ValueError(f"input has K={x.shape[-1]} but the packed weight has k={packed_w.k}")
    with_mask = exact_zeros and not unsigned
    if kernel == "native":
        a = native.sign_pack_native(x)
        a = a if with_mask else PackedSigns(a.signs, None, a.k)
        matmul = native.and_matmul_native if unsigned else native.xnor_matmul_native
        dot = matmul(a, packed_w, chunk)
    else:
        a = pack_matrix(x, with_mask=with_mask)
        dot = (and_matmul if unsigned else xnor_matmul)(a, packed_w, chunk, wide)
    y = dot.astype(jnp.float32) * jnp.asarray(w_scale, jnp.float32)
    if alpha is not None:
        y = y * alpha
    if bias is not None:
        y = y + bias
    return y
