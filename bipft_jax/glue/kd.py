"""Fine-tuning objectives: task loss (BiPFT), BiT KD, BiBERT DMD + prediction KD (methods.md §4).

`finetune_loss(kind, student_out, teacher_out, labels, ...)` returns `(loss, parts)`; the model
outputs are the dicts of `BertForSequenceClassification` (with `return_intermediates=True` for
the KD kinds that need hidden states or q/k/v).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from bipft_jax.losses import (
    bibert_pred_loss,
    bit_kd_loss,
    classification_loss,
    dmd_loss,
    regression_loss,
)

KD_KINDS = ("none", "bit", "bibert")


def check_kd_kind(kind: str) -> str:
    if kind not in KD_KINDS:
        raise ValueError(f"config key 'kd.kind': unknown {kind!r}; choose one of {KD_KINDS}")
    return kind


def needs_intermediates(kind: str) -> bool:
    return kind in ("bit", "bibert")


def loss_options(kd: Mapping[str, Any]) -> dict[str, Any]:
    """`finetune_loss` keyword arguments from the config's `kd` block (`cfg.kd`):

    finetune_loss(kind, s_out, t_out, labels, is_regression=..., **loss_options(cfg.kd))
    """
    return {
        "temperature": kd["temperature"],
        "gt_beta": kd["gt_beta"],
        "regression_logit_mse": kd.get("regression_logit_mse", True),
    }


def label_loss(logits: jax.Array, labels: jax.Array, is_regression: bool) -> jax.Array:
    """CE on class ids, or MSE on the single regression logit (STS-B)."""
    if is_regression:
        return regression_loss(logits, labels)
    return classification_loss(logits, labels)[0]


def _qkv(out: Mapping[str, Any]) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    return list(zip(out["q"], out["k"], out["v"], strict=True))


def finetune_loss(
    kind: str,
    student_out: Mapping[str, Any],
    teacher_out: Mapping[str, Any] | None,
    labels: jax.Array,
    *,
    is_regression: bool,
    temperature: float = 1.0,
    gt_beta: float = 0.5,
    regression_logit_mse: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The fine-tuning loss of one KD kind.

    none:   CE / MSE against the labels (BiPFT's recipe).
    bit:    soft-CE(s/T, t/T) + Σ_l MSE(H_l) over the L+1 hidden states (MSE on logits for
            regression, see `bit_kd_loss`); no label term.
    bibert: BiBERT L_pred (soft-CE + gt_beta·CE, MSE for regression) + DMD over q/k/v and the
            hidden states (whole-batch Frobenius norms, no padding mask, as the reference).
    """
    check_kd_kind(kind)
    s_logits = student_out["logits"]
    if kind == "none":
        loss = label_loss(s_logits, labels, is_regression)
        return loss, {"task": loss}
    if teacher_out is None:
        raise ValueError(f"kd.kind={kind!r} needs a teacher")
    t_logits = jax.lax.stop_gradient(teacher_out["logits"])
    if kind == "bit":
        return bit_kd_loss(
            s_logits,
            t_logits,
            student_out["hidden_states"],
            teacher_out["hidden_states"],
            is_regression=is_regression,
            temperature=temperature,
            regression_logit_mse=regression_logit_mse,
        )
    pred = bibert_pred_loss(
        s_logits,
        t_logits,
        None if is_regression else labels,
        is_regression=is_regression,
        gt_beta=gt_beta,
        temperature=temperature,
    )
    teacher = jax.tree.map(jax.lax.stop_gradient, dict(teacher_out))
    dmd = dmd_loss(
        _qkv(student_out), _qkv(teacher), student_out["hidden_states"], teacher["hidden_states"]
    )
    return pred + dmd, {"pred": pred, "dmd": dmd, "total": pred + dmd}
