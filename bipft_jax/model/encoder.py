"""Post-LN encoder layer (attention + FFN) and the encoder stack (optional remat and scan)."""

from __future__ import annotations

import flax.linen as nn
import jax

from bipft_jax.model.attention import BertAttention
from bipft_jax.model.config import BertConfig
from bipft_jax.model.layers import DenseResidualNorm, activation, dense

INTERMEDIATE_KEYS = ("q", "k", "v", "attention_scores", "attention_probs")


class BertIntermediate(nn.Module):
    """FFN-in linear and activation (`intermediate`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = dense(cfg, cfg.intermediate_size, cfg.quant.linear, ("embed", "mlp"), "dense")(x)
        return activation(cfg.hidden_act)(x)


class BertLayer(nn.Module):
    """One post-LN transformer layer. Returns (hidden, per-layer intermediates or {})."""

    config: BertConfig
    deterministic: bool = True
    collect: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, mask_bias: jax.Array) -> tuple[jax.Array, dict]:
        cfg = self.config
        a, inter = BertAttention(cfg, self.deterministic, self.collect, name="attention")(
            h, mask_bias
        )
        x = BertIntermediate(cfg, name="intermediate")(a)
        out = DenseResidualNorm(cfg, "ffn_out", "mlp", self.deterministic, name="output")(x, a)
        if self.collect:
            inter = {**inter, "hidden": out}
        return out, inter


class BertEncoder(nn.Module):
    """`num_layers` layers; `scan_layers` stacks their params on a leading "layers" axis."""

    config: BertConfig
    deterministic: bool = True
    collect: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, mask_bias: jax.Array) -> tuple[jax.Array, dict]:
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat:
            layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={True: 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, self.deterministic, self.collect, name="layer")
            h, stacked = stack(h, mask_bias)
            per_layer = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(cfg.num_layers)]
        else:
            per_layer = []
            for i in range(cfg.num_layers):
                h, inter = layer_cls(cfg, self.deterministic, self.collect, name=f"layer_{i}")(
                    h, mask_bias
                )
                per_layer.append(inter)
        if not self.collect:
            return h, {}
        out = {key: tuple(p[key] for p in per_layer) for key in INTERMEDIATE_KEYS}
        out["hidden_states"] = tuple(p["hidden"] for p in per_layer)
        return h, out
