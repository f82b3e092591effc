"""Evaluation of a fine-tuning stage: logits of a split through a jitted, sharded eval step
(length-sorted bucketed batches, put back in file order), metrics per dev split under the
paper's rules, and GLUE submission files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bipft_jax.data.glue import write_submission
from bipft_jax.data.glue_metrics import task_metrics
from bipft_jax.glue import data as glue_data
from bipft_jax.parallel import shard_host_batch


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's slice of a global batch (every process holds the same global batch)."""
    n, p, i = len(batch["input_ids"]), jax.process_count(), jax.process_index()
    return {k: v[i * n // p : (i + 1) * n // p] for k, v in batch.items()}


def predict(
    eval_step: Callable, state: Any, data: dict[str, np.ndarray], batch_size: int,
    pad_multiple: int, mesh,
) -> np.ndarray:  # fmt: skip
    """Logits [N, C] of a split in file order; ``eval_step(state, batch)`` returns logits."""
    out: np.ndarray | None = None
    for batch, rows in glue_data.eval_batches(data, batch_size, pad_multiple):
        logits = np.asarray(eval_step(state, shard_host_batch(local_rows(batch), mesh)))
        if out is None:
            out = np.zeros((len(data["labels"]), logits.shape[-1]), logits.dtype)
        out[rows] = logits[: len(rows)]
    if out is None:
        raise ValueError("cannot evaluate an empty split")
    return out


def evaluate(
    predict_split: Callable[[dict[str, np.ndarray]], np.ndarray],
    task_name: str,
    dev: dict[str, dict[str, np.ndarray]],
    splits: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Every metric of each dev split in ``splits`` (MNLI: matched, mismatched)."""
    return {s: task_metrics(task_name, predict_split(dev[s]), dev[s]["labels"]) for s in splits}


def write_predictions(
    predict_split: Callable[[dict[str, np.ndarray]], np.ndarray],
    task_name: str,
    is_regression: bool,
    test: dict[str, dict[str, np.ndarray]],
    out: Path,
) -> list[str]:
    """GLUE submission files of the test splits."""
    files = []
    for split, data in test.items():
        logits = predict_split(data)
        preds = logits[:, 0] if is_regression else logits.argmax(-1)
        name = split if len(test) > 1 else None
        files.append(str(write_submission(task_name, preds.tolist(), out, name)))
    return files
