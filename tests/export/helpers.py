"""Tiny random models shared by the export tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax.model.params import build_model
from bipft_jax.model.presets import get_model_config

TINY = dict(
    vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16
)


def tiny_config(method: str = "fp", **overrides):
    return get_model_config(method, "tiny", **{**TINY, **overrides})


def random_batch(batch: int = 3, seq: int = 8, vocab: int = 97, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int32)
    mask[1, seq - 3 :] = 0
    return {
        "input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int32),
        "token_type_ids": (np.arange(seq)[None] >= seq // 2).repeat(batch, 0).astype(np.int32),
        "attention_mask": mask,
    }


def init_params(config, head: str, num_labels: int = 3, seed: int = 0, scale: float = 1.0):
    """Random params; every leaf (LayerNorm, biases, α, β, estimators) perturbed off its init."""
    model = build_model(config, head, num_labels)
    batch = random_batch()
    variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(batch["input_ids"]))
    params = jax.tree.map(np.asarray, jax.tree.map(lambda x: x, _unbox(variables["params"])))
    rng = np.random.default_rng(seed + 1)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = []
    for path, x in flat:
        name = jax.tree_util.keystr(path)
        if "alpha" in name:  # keep α positive, moved away from its data init
            leaves.append((x * rng.uniform(0.5, 1.5) + rng.uniform(0.05, 0.3)).astype(x.dtype))
        else:
            leaves.append((x + scale * 0.1 * rng.standard_normal(x.shape)).astype(x.dtype))
    return model, jax.tree.unflatten(jax.tree.structure(params), leaves)


def _unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def write_vocab(path, size: int = 97):
    """A `size`-token vocab.txt: the 5 BERT special tokens, then made-up words."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(size - len(tokens))]
    path.write_text("\n".join(tokens) + "\n")
    return path
