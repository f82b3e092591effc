"""Small shared builders for the train tests: a tiny student/teacher and random MLM+NSP batches."""

from __future__ import annotations

import numpy as np

from bipft_jax.model.bert import BertForPreTraining
from bipft_jax.model.presets import get_model_config

VOCAB = 512


def tiny_model(method: str, **overrides) -> BertForPreTraining:
    """The `tiny` size with a 512-word vocabulary and no dropout (deterministic tests)."""
    cfg = get_model_config(
        method, "tiny", vocab_size=VOCAB, hidden_dropout=0.0, attention_dropout=0.0, **overrides
    )
    return BertForPreTraining(cfg)


def random_batch(seed: int, batch: int = 8, seq: int = 32, n_masked: int = 5) -> dict:
    """Random ids, full attention, exactly `n_masked` MLM labels per row (so per-row means of
    equal-sized micro-batches average to the full-batch mean)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(batch, seq), dtype=np.int32)
    labels = np.full((batch, seq), -100, np.int32)
    for r in range(batch):
        pos = rng.choice(np.arange(1, seq), size=n_masked, replace=False)
        labels[r, pos] = ids[r, pos]
        ids[r, pos] = 3
    types = np.zeros((batch, seq), np.int32)
    types[:, seq // 2 :] = 1
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": np.ones((batch, seq), np.int32),
        "mlm_labels": labels,
        "next_sentence_label": rng.integers(0, 2, size=(batch,), dtype=np.int32),
    }
