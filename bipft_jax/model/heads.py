"""Pooler variants and the FP MLM head (decoder tied to the latent word embedding)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bipft_jax.model.config import BertConfig
from bipft_jax.model.layers import activation, dense, layer_norm
from bipft_jax.quant import DenseQuant


class BertPooler(nn.Module):
    """`tanh(dense(h₀))` (BERT, BiBERT, BiT) or `tanh(LN(dense(h₀)) + h₀)` (BiPFT)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        first = hidden[:, 0]
        x = dense(cfg, cfg.hidden_size, cfg.quant.pooler_quant, ("embed", "mlp"), "dense")(first)
        if cfg.quant.pooler == "bipft_ln_residual":
            x = layer_norm(cfg, "LayerNorm")(x) + first
        return jnp.tanh(x)


class BertMLMHead(nn.Module):
    """FP transform (dense, activation, LayerNorm), tied decoder `attend`, own output bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, attend: Callable[[jax.Array], jax.Array]) -> jax.Array:
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, DenseQuant(), ("embed", "mlp"), "transform_dense")(hidden)
        x = activation(cfg.quant.mlm_transform_act)(x)
        x = layer_norm(cfg, "transform_LayerNorm")(x)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (cfg.vocab_size,),
            cfg.param_dtype,
        )
        return attend(x) + jnp.asarray(bias, cfg.dtype)
