"""Full training objectives of the three papers, built from the basic losses (methods.md §4)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bipft_jax.losses.core import (
    attention_kd,
    classification_loss,
    hidden_mse,
    masked_soft_cross_entropy,
    mlm_loss,
    nsp_loss,
    regression_loss,
    select_masked,
    soft_cross_entropy,
)
from bipft_jax.losses.dmd import dmd_loss

Array = jax.Array

# Batch keys of the objective: the loader's pre-masked columns (data/pretrain_examples.py).
MLM_LABELS_KEY = "mlm_labels"  # [B, L]: token id at predicted positions, IGNORE_INDEX elsewhere
NSP_LABELS_KEY = "next_sentence_label"
MASK_KEY = "attention_mask"
# The model's inputs, read by the forward of every step (not by the objective).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class Term:
    """One pretraining term: its default weight and what it reads besides the student."""

    default: float
    batch_keys: tuple[str, ...] = ()
    teacher: bool = False
    intermediates: bool = False  # hidden states, attention scores or Q/K/V


# The one table of pretraining terms. Defaults = BiPFT (learner.py): MLM CE + NSP CE + NSP
# soft-CE + (1/13)Σ hidden MSE; no MLM-logit or attention KD, no DMD.
PRETRAIN_TERMS: dict[str, Term] = {
    "mlm": Term(1.0, (MLM_LABELS_KEY,)),
    "nsp": Term(1.0, (NSP_LABELS_KEY,)),
    "nsp_kd": Term(1.0, teacher=True),
    "hidden": Term(1.0, teacher=True, intermediates=True),  # + the mask with mask_hidden
    "mlm_kd": Term(0.0, (MLM_LABELS_KEY,), teacher=True),
    "attn": Term(0.0, (MASK_KEY,), teacher=True, intermediates=True),
    "dmd": Term(0.0, (MASK_KEY,), teacher=True, intermediates=True),  # mask: per example
}
DEFAULT_PRETRAIN_WEIGHTS: dict[str, float] = {k: t.default for k, t in PRETRAIN_TERMS.items()}


@dataclasses.dataclass(frozen=True)
class DataContract:
    """What an objective reads: batch keys (besides the model inputs), teacher outputs, and the
    intermediate activations (hidden states, attention, Q/K/V) of both models."""

    batch_keys: tuple[str, ...]
    needs_teacher: bool
    needs_intermediates: bool


def _on(weight: Any) -> bool:
    """False only for a weight that is a plain number equal to 0 (arrays may be traced)."""
    return not (isinstance(weight, (int, float)) and weight == 0)


def pretrain_weights(weights: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every term's weight: ``weights`` over the defaults; an unknown term raises KeyError."""
    for key in weights or {}:
        if key not in PRETRAIN_TERMS:
            known = sorted(PRETRAIN_TERMS)
            raise KeyError(f"bipft_pretrain_loss: unknown loss weight {key!r} (known: {known})")
    return {**DEFAULT_PRETRAIN_WEIGHTS, **(weights or {})}


def pretrain_contract(
    weights: Mapping[str, Any] | None = None, mask_hidden: bool = False
) -> DataContract:
    """The ``DataContract`` of ``bipft_pretrain_loss`` with these weights (terms whose weight is
    the number 0 read nothing)."""
    on = [PRETRAIN_TERMS[k] for k, w in pretrain_weights(weights).items() if _on(w)]
    keys = {key for t in on for key in t.batch_keys}
    if mask_hidden and any(t is PRETRAIN_TERMS["hidden"] for t in on):
        keys.add(MASK_KEY)
    return DataContract(
        batch_keys=tuple(sorted(keys)),
        needs_teacher=any(t.teacher for t in on),
        needs_intermediates=any(t.intermediates for t in on),
    )


def mlm_targets(batch: Mapping[str, Array], max_predictions: int) -> tuple[Array, Array]:
    """``(positions, labels)`` [B, max_predictions] of the MLM head run on the masked positions
    only (``BertForPreTraining(masked_positions=positions)``; ``select_masked``)."""
    return select_masked(_require(batch, MLM_LABELS_KEY, "batch"), max_predictions)


def bibert_pred_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array | None = None,
    is_regression: bool = False,
    gt_beta: float = 0.5,
    temperature: float = 1.0,
) -> Array:
    """BiBERT ``L_pred``: soft-CE(s, t) + ``gt_beta``·CE(labels), or MSE(s, t) for regression."""
    if is_regression:
        return regression_loss(student_logits, jax.lax.stop_gradient(teacher_logits))
    if labels is None:
        raise ValueError("bibert_pred_loss: classification needs labels")
    kd = soft_cross_entropy(student_logits, teacher_logits, temperature)
    return kd + gt_beta * classification_loss(student_logits, labels)[0]


def bit_kd_loss(
    student_logits: Array,
    teacher_logits: Array,
    student_hiddens: Sequence[Array],
    teacher_hiddens: Sequence[Array],
    is_regression: bool = False,
    temperature: float = 1.0,
    regression_logit_mse: bool = True,
    mask: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """BiT KD: soft-CE(s/T, t/T) + Σ_l MSE(H_l^s, H_l^t); no label loss.

    For regression the reference's soft-CE is identically 0 (a single logit), so STS-B learns from
    hidden MSE alone; ``regression_logit_mse=True`` (default) uses MSE(s, t) on the logits instead,
    ``False`` keeps the reference's (zero) soft-CE for exact parity.
    """
    if is_regression and regression_logit_mse:
        logit = regression_loss(student_logits, jax.lax.stop_gradient(teacher_logits))
    else:
        logit = soft_cross_entropy(student_logits, teacher_logits, temperature)
    rep = hidden_mse(student_hiddens, teacher_hiddens, "sum_over_layers", mask)
    return logit + rep, {"logit_kd": logit, "hidden_mse": rep}


def _require(mapping: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise KeyError(f"bipft_pretrain_loss: {what} has no {key!r} (available: {sorted(mapping)})")
    return mapping[key]


def _qkv_layers(out: Mapping[str, Any], what: str) -> list[tuple[Array, Array, Array]]:
    q, k, v = (_require(out, name, what) for name in ("q", "k", "v"))
    return list(zip(q, k, v, strict=True))


def bipft_pretrain_loss(
    student_out: Mapping[str, Any],
    teacher_out: Mapping[str, Any],
    batch: Mapping[str, Array],
    weights: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    mask_hidden: bool = False,
    dmd_per_example: bool = True,
    max_predictions: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """BiPFT pretraining objective; returns (total, parts).

    ``total = w_mlm·CE_MLM + w_nsp·CE_NSP + w_nsp_kd·softCE(NSP) + w_hidden·(1/(L+1))Σ MSE(H)
    [+ w_mlm_kd·masked MLM soft-CE + w_attn·attention KD + w_dmd·DMD]``. Missing weights take
    ``DEFAULT_PRETRAIN_WEIGHTS`` (the reference); terms whose weight is the number 0 are not
    computed, so their inputs need not exist (``pretrain_contract`` says what is read); weights
    may be (traced) arrays, e.g. scheduled. ``batch`` holds the loader's ``mlm_labels`` [B, L]
    (-100 ignored) and ``next_sentence_label``; ``attention_mask`` is used by ``mask_hidden``,
    attention KD and DMD. ``max_predictions``: the MLM logits are those of the masked positions
    ``mlm_targets(batch, max_predictions)`` (else of every position). Attention KD is averaged
    over layers here (``attention_kd`` alone sums, as TinyBERT).
    """
    w = pretrain_weights(weights)
    mask = batch.get(MASK_KEY)
    parts: dict[str, Array] = {}
    total = jnp.float32(0.0)

    def on(name: str) -> bool:
        return _on(w[name])

    def add(name: str, value: Array) -> None:
        nonlocal total
        parts[name] = value
        total = total + w[name] * value

    if on("mlm") or on("mlm_kd"):
        if max_predictions is None:
            mlm_labels = _require(batch, MLM_LABELS_KEY, "batch")
        else:
            _, mlm_labels = mlm_targets(batch, max_predictions)
        s_mlm = _require(student_out, "mlm_logits", "student_out")
    if on("mlm"):
        loss, parts["mlm_acc"] = mlm_loss(s_mlm, mlm_labels)
        add("mlm", loss)
    if on("mlm_kd"):
        t_mlm = _require(teacher_out, "mlm_logits", "teacher_out")
        add("mlm_kd", masked_soft_cross_entropy(s_mlm, t_mlm, mlm_labels, temperature))
    if on("nsp") or on("nsp_kd"):
        s_nsp = _require(student_out, "nsp_logits", "student_out")
    if on("nsp"):
        loss, parts["nsp_acc"] = nsp_loss(s_nsp, _require(batch, NSP_LABELS_KEY, "batch"))
        add("nsp", loss)
    if on("nsp_kd"):
        t_nsp = _require(teacher_out, "nsp_logits", "teacher_out")
        add("nsp_kd", soft_cross_entropy(s_nsp, t_nsp, temperature))
    if on("hidden") or on("dmd"):
        s_h = _require(student_out, "hidden_states", "student_out")
        t_h = _require(teacher_out, "hidden_states", "teacher_out")
    if on("hidden"):
        h_mask = _require(batch, MASK_KEY, "batch") if mask_hidden else None
        add("hidden", hidden_mse(s_h, t_h, "mean_over_layers", h_mask))
    if on("attn"):
        s_a = _require(student_out, "attention_scores", "student_out")
        t_a = _require(teacher_out, "attention_scores", "teacher_out")
        add("attn", attention_kd(s_a, t_a, mask, "mean_over_layers"))
    if on("dmd"):
        s_qkv = _qkv_layers(student_out, "student_out")
        t_qkv = _qkv_layers(teacher_out, "teacher_out")
        dmd_mask = mask if dmd_per_example else None
        add("dmd", dmd_loss(s_qkv, t_qkv, s_h, t_h, dmd_mask, dmd_per_example))
    parts["total"] = total
    return total, parts
