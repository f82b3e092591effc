"""GLUE data for fine-tuning: load + encode splits, dynamically padded train and eval batches.

Splits are encoded once, padded to ``max_length``. Every batch is then cut to its *bucket*: the
longest real row rounded up to a multiple of ``pad_multiple`` (capped at ``max_length``), so a
run compiles at most ``max_length / pad_multiple`` shapes and short-sentence tasks run several
times faster; ``pad_multiple = 0`` keeps fixed padding. Real tokens are left-aligned and padding
is masked, so predictions do not depend on the bucket (tested against fixed padding).

Train batch ``step`` is a pure function of ``(seed, step)``: epoch ``step // steps_per_epoch``
shuffled by ``(seed, epoch)``, rows ``[i·B, (i+1)·B)`` of it (the last partial batch dropped), so a
resumed run sees exactly the batches an uninterrupted one would. With several processes each
takes its slice of the global batch; all agree on the bucket.

``group_by_length = G > 0`` (Hugging Face's ``group_by_length``, off by default: the references
draw batches at random): the shuffled epoch is cut into mega-batches of ``G`` batches, each
sorted by length, and the batches are shuffled again, so a batch holds rows of similar length
and pads far less. Still a pure function of ``(seed, step)``; every row is seen once per epoch.
"""

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


def bucket_length(longest: int, pad_multiple: int, max_length: int) -> int:
    """``longest`` rounded up to a multiple of ``pad_multiple`` (0: ``max_length``), capped."""
    if pad_multiple <= 0:
        return max_length
    return min(max_length, max(pad_multiple, -(-longest // pad_multiple) * pad_multiple))


def _cut(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    return {k: (v[:, :length] if k in FIELDS else v) for k, v in batch.items()}


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return n_rows // batch_size


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: int = 0
) -> np.ndarray:
    """Row ids of every full batch of ``epoch``, ``[steps_per_epoch, batch_size]``."""
    n = len(lengths)
    per_epoch = steps_per_epoch(n, batch_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)[: per_epoch * batch_size]
    if group_by_length > 0:
        mega = group_by_length * batch_size
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(mega, len(order), mega))
        ])  # fmt: skip
        return order.reshape(per_epoch, batch_size)[rng.permutation(per_epoch)]
    return order.reshape(per_epoch, batch_size)


class EpochOrder:
    """The batch order of one training set and seed: row lengths computed once, the current
    epoch's batches (``epoch_batches``) kept until the step moves to the next epoch."""

    def __init__(
        self, data: dict[str, np.ndarray], batch_size: int, seed: int, group_by_length: int = 0
    ):
        n = len(data["labels"])
        self.per_epoch = steps_per_epoch(n, batch_size)
        if self.per_epoch == 0:
            raise ValueError(f"training set has {n} rows, fewer than batch_size={batch_size}")
        self.lengths = data["attention_mask"].sum(1)
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self._epoch, self._batches = -1, np.zeros((0, batch_size), np.int64)

    def rows(self, step: int) -> np.ndarray:
        """Row ids of global batch ``step``."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = epoch_batches(
                self.lengths, self.batch_size, self.seed, epoch, self.group_by_length
            )
        return self._batches[i]


def train_batch(
    data: dict[str, np.ndarray],
    batch_size: int,
    seed: int,
    step: int,
    pad_multiple: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    group_by_length: int = 0,
    order: EpochOrder | None = None,
) -> dict[str, np.ndarray]:
    """This process's rows of global train batch ``step`` (see the module docstring). Pass the
    ``order`` of ``data`` (same batch size, seed and grouping) to reuse it between calls."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    order = order or EpochOrder(data, batch_size, seed, group_by_length)
    idx = order.rows(step)
    length = bucket_length(int(order.lengths[idx].max()), pad_multiple, data["input_ids"].shape[1])
    local = batch_size // process_count
    idx = idx[process_index * local : (process_index + 1) * local]
    return _cut({k: v[idx] for k, v in data.items()}, length)


def train_batches(
    data: dict[str, np.ndarray], batch_size: int, seed: int, start_step: int = 0, **kw
) -> Iterator[dict[str, np.ndarray]]:
    """``train_batch`` for ``start_step``, ``start_step + 1``, ... (endless)."""
    order = EpochOrder(data, batch_size, seed, kw.get("group_by_length", 0))
    step = start_step
    while True:
        yield train_batch(data, batch_size, seed, step, order=order, **kw)
        step += 1


def eval_batches(
    data: dict[str, np.ndarray], batch_size: int, pad_multiple: int = 0
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Batches of ``batch_size`` rows in order of length (each cut to its bucket; the last one
    filled with all-padding rows); yields ``(batch, row_ids)`` with the original row of each real
    row, so predictions can be put back in file order."""
    n = len(data["labels"])
    lengths = data["attention_mask"].sum(1)
    order = np.argsort(lengths, kind="stable") if pad_multiple > 0 else np.arange(n)
    max_length = data["input_ids"].shape[1]
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = {k: data[k][idx] for k in FIELDS}
        if len(idx) < batch_size:
            fill = batch_size - len(idx)
            batch = {k: np.concatenate([v, np.zeros((fill, v.shape[1]), v.dtype)])
                     for k, v in batch.items()}  # fmt: skip
        length = bucket_length(int(lengths[idx].max()), pad_multiple, max_length)
        yield _cut(batch, length), idx


def padded_fraction(
    data: dict[str, np.ndarray], batch_size: int, pad_multiple: int, group_by_length: int = 0
) -> float:
    """Share of padding tokens in one epoch of train batches (a cost figure for the logs)."""
    order = EpochOrder(data, batch_size, 0, group_by_length)
    real = total = 0
    for step in range(order.per_epoch):
        b = train_batch(data, batch_size, 0, step, pad_multiple, order=order)
        real += int(b["attention_mask"].sum())
        total += b["attention_mask"].size
    return 1.0 - real / max(total, 1)
