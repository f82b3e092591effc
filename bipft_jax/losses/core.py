"""Basic supervised and distillation losses (pure jax.numpy, fp32 math).

Conventions follow the reference repos (methods.md §4): labels equal to ``IGNORE_INDEX`` (-100) are
ignored, ``soft_cross_entropy`` is the mean over B×C (not a per-example sum), and per-layer hidden
MSE is ``torch.nn.MSELoss()`` (mean over every element). Teacher tensors are wrapped in
``stop_gradient``: the teacher is frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

IGNORE_INDEX = -100
# TinyBERT/BiBERT guard: entries at or below this were set by the additive attention mask.
MASKED_SCORE_THRESHOLD = -1e2


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


def _safe_div(num: Array, den: Array) -> Array:
    """num / den, and 0 where den == 0 (an empty mask gives a zero loss, not NaN)."""
    return num / jnp.where(den > 0, den, 1.0)


def cross_entropy_with_ignore(
    logits: Array, labels: Array, weights: Array | None = None
) -> tuple[Array, Array]:
    """Weighted mean CE and accuracy over positions whose label is not ``IGNORE_INDEX``.

    ``logits`` is ``[..., C]``, ``labels`` is ``[...]`` (ints), ``weights`` optional ``[...]``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} disagree")
    valid = labels != IGNORE_INDEX
    w = valid.astype(jnp.float32)
    if weights is not None:
        w = w * _f32(weights)
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    x = _f32(logits)
    # logsumexp − gathered logit: no [..., C] log-prob buffer besides the logits themselves.
    picked = jnp.take_along_axis(x, safe_labels[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(x, axis=-1) - picked
    denom = jnp.sum(w)
    loss = _safe_div(jnp.sum(nll * w), denom)
    correct = (jnp.argmax(logits, axis=-1) == safe_labels).astype(jnp.float32)
    acc = _safe_div(jnp.sum(correct * w), denom)
    return loss, acc


def mlm_loss(logits: Array, labels: Array, weights: Array | None = None) -> tuple[Array, Array]:
    """Masked-LM loss: mean CE over masked tokens (labels != -100) and their accuracy.

    ``logits`` ``[B, L, V]``; ``labels`` ``[B, L]``.
    """
    return cross_entropy_with_ignore(logits, labels, weights)


def select_masked(labels: Array, num: int) -> tuple[Array, Array]:
    """The first ``num`` predicted positions of each row: ``(positions, labels)``, both [B, num].

    ``labels`` [B, L] holds token ids at predicted positions and ``IGNORE_INDEX`` elsewhere.
    Rows with fewer predictions are filled with position 0 and label ``IGNORE_INDEX``, so
    ``mlm_loss`` on the gathered logits equals the loss over all positions whenever every row has
    at most ``num`` predictions (the loader caps them: ``max_predictions``).
    """
    valid = labels != IGNORE_INDEX
    order = jnp.argsort(~valid, axis=-1, stable=True)[..., :num]  # predicted positions first
    picked = jnp.take_along_axis(labels, order, axis=-1)
    keep = picked != IGNORE_INDEX
    return jnp.where(keep, order, 0).astype(jnp.int32), jnp.where(keep, picked, IGNORE_INDEX)


def classification_loss(
    logits: Array, labels: Array, weights: Array | None = None
) -> tuple[Array, Array]:
    """Mean CE of ``[B, C]`` logits against int labels ``[B]``; returns (loss, accuracy)."""
    return cross_entropy_with_ignore(logits, labels, weights)


def nsp_loss(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Next-sentence-prediction CE on ``[B, 2]`` logits; returns (loss, accuracy)."""
    return classification_loss(logits, labels)


def _squeeze_last(x: Array) -> Array:
    return x[..., 0] if x.ndim > 1 and x.shape[-1] == 1 else x


def regression_loss(preds: Array, targets: Array) -> Array:
    """MSE; a trailing size-1 axis on either side (``[B, 1]`` logits) is squeezed."""
    p, t = _squeeze_last(_f32(preds)), _squeeze_last(_f32(targets))
    if p.shape != t.shape:
        raise ValueError(f"regression preds {preds.shape} and targets {targets.shape} disagree")
    return jnp.mean((p - t) ** 2)


def soft_cross_entropy(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
) -> Array:
    """Mean over every element (B×C) of ``-softmax(t/T) * log_softmax(s/T)`` (BiT/BiPFT/BiBERT).

    The reference divides by C as well as B. With one logit (STS-B regression) it is identically 0
    because log_softmax of a single value is 0. ``scale_by_t2`` multiplies by T² (Hinton).
    """
    s = _f32(student_logits) / temperature
    t = jax.lax.stop_gradient(_f32(teacher_logits)) / temperature
    loss = jnp.mean(-jax.nn.softmax(t, axis=-1) * jax.nn.log_softmax(s, axis=-1))
    return loss * temperature**2 if scale_by_t2 else loss


def masked_soft_cross_entropy(
    student_logits: Array, teacher_logits: Array, labels: Array, temperature: float = 1.0
) -> Array:
    """Soft-CE summed over the vocabulary, averaged over positions with ``labels != -100``.

    Logit KD for the MLM head. Unlike the reference's unused ``masked_soft_cross_entropy`` (which
    divides by V too, making the term ~3e-5 of a CE), this is a true cross-entropy per token.
    """
    s = _f32(student_logits) / temperature
    t = jax.lax.stop_gradient(_f32(teacher_logits)) / temperature
    per_tok = -jnp.sum(jax.nn.softmax(t, axis=-1) * jax.nn.log_softmax(s, axis=-1), axis=-1)
    w = (labels != IGNORE_INDEX).astype(jnp.float32)
    return _safe_div(jnp.sum(per_tok * w), jnp.sum(w))


def _check_layers(student: Sequence[Array], teacher: Sequence[Array], what: str) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"{what}: student has {len(student)} layers, teacher {len(teacher)}")
    if len(student) == 0:
        raise ValueError(f"{what}: no layers given")
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        if s.shape != t.shape:
            raise ValueError(f"{what}[{i}]: student {s.shape} != teacher {t.shape}")


def _reduce_layers(per_layer: list[Array], reduction: str) -> Array:
    total = jnp.sum(jnp.stack(per_layer))
    if reduction == "sum_over_layers":
        return total
    if reduction == "mean_over_layers":
        return total / len(per_layer)
    raise ValueError(
        f"reduction must be 'mean_over_layers' or 'sum_over_layers', got {reduction!r}"
    )


def _masked_mse(s: Array, t: Array, elem_mask: Array | None) -> Array:
    d2 = (_f32(s) - jax.lax.stop_gradient(_f32(t))) ** 2
    if elem_mask is None:
        return jnp.mean(d2)
    m = jnp.broadcast_to(_f32(elem_mask), d2.shape)
    return _safe_div(jnp.sum(d2 * m), jnp.sum(m))


def hidden_mse(
    student_hiddens: Sequence[Array],
    teacher_hiddens: Sequence[Array],
    reduction: str = "mean_over_layers",
    mask: Array | None = None,
) -> Array:
    """Layerwise MSE between hidden states ``[B, L, H]``.

    Per layer it is the mean over all elements (``MSELoss``), or over non-padding tokens when a
    ``[B, L]`` ``mask`` is given. ``mean_over_layers`` is BiPFT's (1/13)Σ, ``sum_over_layers``
    BiT's Σ.
    """
    _check_layers(student_hiddens, teacher_hiddens, "hidden_mse")
    elem = None if mask is None else mask[..., None]
    per = [_masked_mse(s, t, elem) for s, t in zip(student_hiddens, teacher_hiddens, strict=True)]
    return _reduce_layers(per, reduction)


def _as_layers(x: Sequence[Array] | Array) -> list[Array]:
    """A list/tuple of per-layer arrays, or one array taken as a single layer."""
    if isinstance(x, (list, tuple)):
        return [jnp.asarray(a) for a in x]
    return [jnp.asarray(x)]


def attention_kd(
    student_scores: Sequence[Array] | Array,
    teacher_scores: Sequence[Array] | Array,
    mask: Array | None = None,
    reduction: str = "sum_over_layers",
) -> Array:
    """TinyBERT-style MSE between attention scores ``[B, H, L, L]``, per layer then reduced.

    With ``mask=None`` entries ≤ -1e2 (from the additive mask) are zeroed on both sides, as in the
    reference; with a ``[B, L]`` token ``mask`` only (valid query, valid key) pairs are averaged.
    """
    s_list, t_list = _as_layers(student_scores), _as_layers(teacher_scores)
    _check_layers(s_list, t_list, "attention_kd")
    per = []
    for s, t in zip(s_list, t_list, strict=True):
        if mask is None:
            s = jnp.where(s <= MASKED_SCORE_THRESHOLD, 0.0, s)
            t = jnp.where(t <= MASKED_SCORE_THRESHOLD, 0.0, t)
            per.append(_masked_mse(s, t, None))
        else:
            m = _f32(mask)
            pair = m[:, None, :, None] * m[:, None, None, :]
            per.append(_masked_mse(s, t, pair))
    return _reduce_layers(per, reduction)
