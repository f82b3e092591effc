"""What a user judges a pretraining run by: eval MLM loss/accuracy and per-layer agreement of the
student's hidden states with the teacher's (MSE and cosine), at step 0 and at the end.

``make_pretrain_eval(student, teacher, max_predictions)`` builds ``metric_fn(params, batch,
teacher_params)`` for ``loop.jit_step``; ``mean_metrics`` averages it over eval batches;
``write_summary`` keeps the step-0 figures (``summary.json``) so a resumed run can still print
"before → after".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax.losses import mlm_loss, mlm_targets

SUMMARY = "summary.json"


def layer_agreement(
    student: Sequence[jax.Array], teacher: Sequence[jax.Array], mask: jax.Array
) -> dict[str, jax.Array]:
    """Per layer [L+1]: MSE and mean token cosine between student and teacher hidden states,
    over non-padding tokens (``mask`` [B, L])."""
    m = mask.astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(m), 1.0)
    mse, cos = [], []
    for s, t in zip(student, teacher, strict=True):
        s, t = s.astype(jnp.float32), t.astype(jnp.float32)
        mse.append(jnp.sum(jnp.mean((s - t) ** 2, -1) * m) / n_tok)
        num = jnp.sum(s * t, -1)
        den = jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1)
        cos.append(jnp.sum(num / jnp.maximum(den, 1e-12) * m) / n_tok)
    return {"hidden_mse": jnp.stack(mse), "hidden_cos": jnp.stack(cos)}


def make_pretrain_eval(
    student: Any, teacher: Any, max_predictions: int
) -> Callable[..., dict[str, jax.Array]]:
    """``metric_fn(params, batch, teacher_params)``: MLM loss/acc on the masked positions and the
    per-layer hidden agreement with the teacher (deterministic forwards)."""

    def metric_fn(params, batch, teacher_params):
        positions, labels = mlm_targets(batch, max_predictions)
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        s = student.apply({"params": params}, *args, return_intermediates=True,
                          masked_positions=positions)  # fmt: skip
        t = teacher.apply({"params": teacher_params}, *args, return_intermediates=True,
                          masked_positions=positions)  # fmt: skip
        loss, acc = mlm_loss(s["mlm_logits"], labels)
        agree = layer_agreement(s["hidden_states"], t["hidden_states"], batch["attention_mask"])
        return {"mlm_loss": loss, "mlm_acc": acc, **agree}

    return metric_fn


def mean_metrics(per_batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over batches; per-layer vectors stay vectors (as lists)."""
    out: dict[str, Any] = {}
    for key in per_batch[0]:
        value = np.mean([np.asarray(m[key], np.float64) for m in per_batch], axis=0)
        out[key] = value.tolist() if value.ndim else float(value)
    return out


def write_summary(workdir: str | Path, label: str, step: int, metrics: dict[str, Any]) -> dict:
    """Record ``metrics`` under ``label`` ("step0" / "final") in ``workdir/summary.json``."""
    path = Path(workdir) / SUMMARY
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[label] = {"step": step, **metrics}
    path.write_text(json.dumps(data, indent=2))
    return data


def read_summary(workdir: str | Path) -> dict:
    path = Path(workdir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def format_summary(data: dict) -> str:
    """A short before/after table: eval MLM, mean and per-layer hidden agreement."""
    cols = [k for k in ("step0", "final") if k in data]
    if not cols:
        return "no evaluation recorded"
    head = "".join(f"{c + ' (step ' + str(data[c]['step']) + ')':>22}" for c in cols)
    lines = [f"{'':<22}{head}"]
    for key, fmt in (("mlm_loss", "{:.4f}"), ("mlm_acc", "{:.4f}")):
        lines.append(f"{key:<22}" + "".join(f"{fmt.format(data[c][key]):>22}" for c in cols))
    for key in ("hidden_mse", "hidden_cos"):
        lines.append(
            f"{key + ' (mean)':<22}" + "".join(f"{np.mean(data[c][key]):>22.4f}" for c in cols)
        )
        for i in range(len(data[cols[0]][key])):
            name = "embeddings" if i == 0 else f"layer {i}"
            lines.append(
                f"  {key} {name:<10}"[:22].ljust(22)
                + "".join(f"{data[c][key][i]:>22.4f}" for c in cols)
            )
    return "\n".join(lines)
