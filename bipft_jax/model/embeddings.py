"""BERT input embeddings: word (optionally 1-bit), position and token type, LayerNorm, dropout."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bipft_jax.model.config import BertConfig
from bipft_jax.model.layers import Dropout, QuantEmbed, layer_norm


class BertEmbeddings(nn.Module):
    """Sum of the three embeddings, then LayerNorm and dropout (Hugging Face layout)."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        common = dict(
            features=cfg.hidden_size,
            init_std=cfg.initializer_range,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        self.word_embeddings = QuantEmbed(
            num_embeddings=cfg.vocab_size, quant=cfg.quant.word_embedding, **common
        )
        storage = cfg.quant.table_storage
        self.position_embeddings = QuantEmbed(
            num_embeddings=cfg.max_position, axes=("position", "embed"), storage=storage, **common
        )
        self.token_type_embeddings = QuantEmbed(
            num_embeddings=cfg.type_vocab_size,
            axes=("token_type", "embed"),
            storage=storage,
            **common,
        )
        self.LayerNorm = layer_norm(cfg, "LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        seq = input_ids.shape[-1]
        if seq > self.config.max_position:
            raise ValueError(
                f"sequence length {seq} exceeds max_position {self.config.max_position}"
            )
        x = (
            stop_pad_gradient(self.word_embeddings(input_ids), input_ids, self.config.padding_idx)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the latent FP word-embedding table (tied MLM decoder)."""
        return self.word_embeddings.attend(x)


def stop_pad_gradient(x: jax.Array, ids: jax.Array, padding_idx: int | None) -> jax.Array:
    """`x` unchanged; positions whose id is `padding_idx` pass no gradient (torch `padding_idx`:
    the [PAD] row of the table gets none from lookups; the tied MLM decoder still trains it)."""
    if padding_idx is None:
        return x
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(x), x)


def default_ids(input_ids: jax.Array, ids: jax.Array | None, fill: str) -> jax.Array:
    """Zeros (token types) or `arange` (positions) shaped like `input_ids` when `ids` is None."""
    if ids is not None:
        return ids
    if fill == "zeros":
        return jnp.zeros_like(input_ids)
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1], dtype=input_ids.dtype), input_ids.shape)
