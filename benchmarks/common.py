"""Shared pieces of the speed benchmarks: a random pretraining batch and interleaved timing."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def random_pretrain_batch(batch: int, seq: int, n_pred: int, seed: int = 0) -> dict:
    """An MLM + NSP batch: token ids in [1000, 30000), ``n_pred`` masked positions per row
    (never the first or last), binary NSP and sequence-classification labels, no padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (batch, seq), dtype=np.int32)
    labels = np.full((batch, seq), -100, np.int32)
    for row in range(batch):
        pos = rng.choice(np.arange(1, seq - 1), n_pred, replace=False)
        labels[row, pos] = ids[row, pos]
    return {
        "input_ids": ids,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
        "mlm_labels": labels,
        "next_sentence_label": rng.integers(0, 2, batch).astype(np.int32),
        "labels": rng.integers(0, 2, batch).astype(np.int32),
    }


def interleaved(
    contenders: dict[str, Callable[[], None]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Time one call of every contender per round, after each one's first (compiling) call and
    one warm-up call. Each call must block until its result is ready. Returns (seconds per call
    for every round, seconds of the first call) by contender name."""
    first = {}
    for name, fn in contenders.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times, first
