"""GLUE data for fine-tuning: load + encode splits, shuffled train batches, padded eval batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bipft_jax import paths
from bipft_jax.data.glue import GlueDataError, TaskSpec, encode_glue, get_task, load_glue
from bipft_jax.data.tokenizer import BertTokenizer

FIELDS = ("input_ids", "token_type_ids", "attention_mask")


def resolve_task(task: str) -> TaskSpec:
    """`get_task` with a ValueError that names the known tasks (KeyError prints badly)."""
    try:
        return get_task(task)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None


def eval_splits(spec: TaskSpec) -> list[str]:
    """Dev splits reported for a task (MNLI: matched and mismatched)."""
    return [s for s in spec.splits if s.startswith("dev")]


def test_splits(spec: TaskSpec) -> list[str]:
    return [s for s in spec.splits if s.startswith("test")]


def load_split(
    spec: TaskSpec,
    split: str,
    tokenizer: BertTokenizer,
    max_length: int,
    data_dir: str | None = None,
    max_rows: int = 0,
) -> dict[str, np.ndarray]:
    """Encoded arrays of one split; `max_rows > 0` keeps the first rows only."""
    root = Path(data_dir) if data_dir else paths.default_glue_dir()
    if not root.is_dir():
        raise GlueDataError(f"GLUE data directory not found: {root} (set data_dir)")
    examples = load_glue(spec.name, split, root)
    if max_rows > 0:
        examples = examples[:max_rows]
    return encode_glue(examples, tokenizer, max_length, regression=spec.is_regression)


def train_batches(
    data: dict[str, np.ndarray], batch_size: int, seed: int, epoch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of full batches in a seed- and epoch-determined order (last partial dropped)."""
    n = len(data["labels"])
    if n < batch_size:
        raise ValueError(f"training set has {n} rows, fewer than batch_size={batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield {k: v[idx] for k, v in data.items()}


def eval_batches(
    data: dict[str, np.ndarray], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Fixed-shape batches in order, the last padded with all-pad rows; yields (batch, n_real)."""
    n = len(data["labels"])
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in data.items() if k in FIELDS}
        real = len(batch["input_ids"])
        if real < batch_size:
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - real, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch, real


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return n_rows // batch_size
