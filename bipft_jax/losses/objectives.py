"""Full training objectives of the three papers, built from the basic losses (methods.md §4)."""

from __future__ import annotations

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
    soft_cross_entropy,
)
from bipft_jax.losses.dmd import dmd_loss

Array = jax.Array

# BiPFT (learner.py): NSP soft-CE + (1/13)Σ hidden MSE + MLM CE + NSP CE; no MLM-logit/attn KD.
DEFAULT_PRETRAIN_WEIGHTS: dict[str, float] = {
    "mlm": 1.0,
    "nsp": 1.0,
    "nsp_kd": 1.0,
    "hidden": 1.0,
    "mlm_kd": 0.0,
    "attn": 0.0,
    "dmd": 0.0,
}
# Batch keys (the reference's pre-masked dataset columns).
MLM_LABELS_KEY = "labels"
NSP_LABELS_KEY = "next_sentence_label"
MASK_KEY = "attention_mask"


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
) -> tuple[Array, dict[str, Array]]:
    """BiPFT pretraining objective; returns (total, parts).

    ``total = w_mlm·CE_MLM + w_nsp·CE_NSP + w_nsp_kd·softCE(NSP) + w_hidden·(1/(L+1))Σ MSE(H)
    [+ w_mlm_kd·masked MLM soft-CE + w_attn·attention KD + w_dmd·DMD]``. Missing weights take
    ``DEFAULT_PRETRAIN_WEIGHTS`` (the reference); terms whose weight is the number 0 are not
    computed, so their outputs need not exist; weights may be (traced) arrays, e.g. scheduled.
    ``batch`` needs ``labels`` (MLM, -100 ignored) and ``next_sentence_label``;
    ``attention_mask`` is used by ``mask_hidden``, attention KD and DMD. Attention KD is averaged
    over layers here (``attention_kd`` alone sums, as TinyBERT).
    """
    w: dict[str, Any] = dict(DEFAULT_PRETRAIN_WEIGHTS)
    for key, value in (weights or {}).items():
        if key not in DEFAULT_PRETRAIN_WEIGHTS:
            raise KeyError(
                f"bipft_pretrain_loss: unknown loss weight {key!r} "
                f"(known: {sorted(DEFAULT_PRETRAIN_WEIGHTS)})"
            )
        w[key] = value
    mask = batch.get(MASK_KEY)
    parts: dict[str, Array] = {}
    total = jnp.float32(0.0)

    def on(name: str) -> bool:
        """False only for a weight that is a plain number equal to 0 (arrays may be traced)."""
        return not (isinstance(w[name], (int, float)) and w[name] == 0)

    def add(name: str, value: Array) -> None:
        nonlocal total
        parts[name] = value
        total = total + w[name] * value

    if on("mlm") or on("mlm_kd"):
        mlm_labels = _require(batch, MLM_LABELS_KEY, "batch")
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
