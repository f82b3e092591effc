"""BiBERT's Direction-Matching Distillation (DMD), methods.md §4.1.

Reference parity (``per_example=False, mask=None``): ``d(Gs, Gt) = ‖Gs/‖Gs‖_F − Gt/‖Gt‖_F‖_F``
with the Frobenius norm over the WHOLE batch tensor, not squared, padding included, so the value
depends on the batch composition and on data-parallel sharding (§9 item 4).

Improvement (``per_example=True`` and/or a ``[B, L]`` token ``mask``): padding entries are zeroed,
each example is normalized by its own norm, and the per-example distances are averaged over the
batch, so the loss of an example does not depend on its batch mates.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from bipft_jax.losses.core import MASKED_SCORE_THRESHOLD

Array = jax.Array

_TINY = 1e-12


def similarity_matrix(x: Array) -> Array:
    """``x xᵀ / √D`` for ``x`` of shape ``[B, H, L, D]`` → ``[B, H, L, L]``."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.einsum("bhld,bhmd->bhlm", x, x) / jnp.sqrt(jnp.float32(x.shape[-1]))


def _safe_norm(x: Array, axes: tuple[int, ...] | None) -> Array:
    """Frobenius norm with a finite gradient at 0 (gradient 0 there)."""
    sq = jnp.sum(x * x, axis=axes, keepdims=True)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _element_mask(mask: Array, ndim: int) -> Array:
    """Token mask ``[B, L]`` → mask for a similarity ``[B,H,L,L]`` or hidden ``[B,L,D]`` tensor."""
    m = jnp.asarray(mask, jnp.float32)
    if ndim == 4:
        return m[:, None, :, None] * m[:, None, None, :]
    if ndim == 3:
        return m[:, :, None]
    raise ValueError(f"dmd_distance mask needs a 3-D or 4-D tensor, got {ndim}-D")


def dmd_distance(
    gs: Array, gt: Array, mask: Array | None = None, per_example: bool = False
) -> Array:
    """Normalized-Frobenius distance between student ``gs`` and teacher ``gt`` (same shape).

    See the module docstring for the reference and the mask-aware per-example variants.
    """
    if gs.shape != gt.shape:
        raise ValueError(f"dmd_distance: student {gs.shape} != teacher {gt.shape}")
    s = jnp.asarray(gs, jnp.float32)
    t = jax.lax.stop_gradient(jnp.asarray(gt, jnp.float32))
    if mask is None:
        # The reference's guard for mask-added scores (practically never fires on QQᵀ).
        s = jnp.where(s <= MASKED_SCORE_THRESHOLD, 0.0, s)
        t = jnp.where(t <= MASKED_SCORE_THRESHOLD, 0.0, t)
    else:
        m = _element_mask(mask, s.ndim)
        s, t = s * m, t * m
    axes = tuple(range(1, s.ndim)) if per_example else None
    diff = s / jnp.maximum(_safe_norm(s, axes), _TINY) - t / jnp.maximum(_safe_norm(t, axes), _TINY)
    dist = _safe_norm(diff, axes)
    return jnp.mean(dist)


def dmd_loss(
    student_qkv_list: Sequence[Sequence[Array]],
    teacher_qkv_list: Sequence[Sequence[Array]],
    student_hiddens: Sequence[Array] | None,
    teacher_hiddens: Sequence[Array] | None,
    mask: Array | None = None,
    per_example: bool = False,
) -> Array:
    """``Σ_l [d(G_Q)+d(G_K)+d(G_V)] + Σ_l d(H_l^s, H_l^t)`` (all weights 1, as in BiBERT).

    ``*_qkv_list`` holds one ``(q, k, v)`` triple per layer, each ``[B, H, L, D]`` taken BEFORE
    binarization; ``*_hiddens`` are the L+1 hidden states ``[B, L, H]`` (pass ``None`` to skip).
    """
    if len(student_qkv_list) != len(teacher_qkv_list):
        raise ValueError(
            f"dmd_loss: student has {len(student_qkv_list)} q/k/v layers, "
            f"teacher {len(teacher_qkv_list)}"
        )
    total = jnp.float32(0.0)
    for s_layer, t_layer in zip(student_qkv_list, teacher_qkv_list, strict=True):
        if len(s_layer) != 3 or len(t_layer) != 3:
            raise ValueError("dmd_loss: each layer entry must be a (q, k, v) triple")
        for s_x, t_x in zip(s_layer, t_layer, strict=True):
            total = total + dmd_distance(
                similarity_matrix(s_x), similarity_matrix(t_x), mask, per_example
            )
    if student_hiddens is not None:
        if teacher_hiddens is None or len(student_hiddens) != len(teacher_hiddens):
            raise ValueError("dmd_loss: student and teacher hidden-state lists differ in length")
        for s_h, t_h in zip(student_hiddens, teacher_hiddens, strict=True):
            total = total + dmd_distance(s_h, t_h, mask, per_example)
    return total
