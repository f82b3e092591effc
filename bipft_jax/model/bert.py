"""BERT models: `BertModel`, `BertForPreTraining` (MLM + NSP), `BertForSequenceClassification`.

All return a dict. Always: `last_hidden_state`, `pooled`; per head: `mlm_logits` (all positions,
or only `masked_positions`), `nsp_logits`, `logits`. With `return_intermediates=True` also
(tuples, one entry per layer):
`hidden_states` (L+1: embeddings output, then each layer), `q`, `k`, `v` (pre-binarization,
[B, heads, L, head_dim]), `attention_scores` ([B, heads, L, L], scaled and masked, before
softmax) and `attention_probs` (softmax output before dropout/binarization; for "bool"
attention the {0,1} matrix fed to the context matmul).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bipft_jax.model.attention import mask_bias
from bipft_jax.model.config import BertConfig
from bipft_jax.model.embeddings import BertEmbeddings, default_ids
from bipft_jax.model.encoder import BertEncoder
from bipft_jax.model.heads import BertMLMHead, BertPooler
from bipft_jax.model.layers import Dropout, dense
from bipft_jax.quant import DenseQuant


class BertModel(nn.Module):
    """Embeddings, encoder and pooler (parameter names follow Hugging Face `BertModel`)."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        return_intermediates: bool = False,
    ) -> dict:
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        token_type_ids = default_ids(input_ids, token_type_ids, "zeros")
        position_ids = default_ids(input_ids, position_ids, "arange")
        h = BertEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic
        )
        encoder = BertEncoder(cfg, deterministic, return_intermediates, name="encoder")
        last, inter = encoder(h, mask_bias(attention_mask))
        out: dict[str, Any] = {
            "last_hidden_state": last,
            "pooled": BertPooler(cfg, name="pooler")(last),
        }
        if return_intermediates:
            out.update(inter)
            out["hidden_states"] = (h, *inter["hidden_states"])
        return out

    def attend(self, x: jax.Array) -> jax.Array:
        """`x @ Eᵀ` with the latent (un-binarized) FP word-embedding table E."""
        table = self.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        table = jnp.asarray(nn.unbox(table), self.config.dtype)
        return jnp.einsum("...e,ve->...v", x.astype(self.config.dtype), table)


class BertForPreTraining(nn.Module):
    """`bert` + MLM head (`predictions`, tied decoder) + NSP head (`seq_relationship`)."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        return_intermediates: bool = False,
        masked_positions: jax.Array | None = None,
    ) -> dict:
        """``masked_positions`` [B, P] (optional): run the MLM head on those positions only
        (``mlm_logits`` is then [B, P, V]), as original BERT's ``gather_indexes``."""
        cfg = self.config
        bert = BertModel(cfg, name="bert")
        out = bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            return_intermediates=return_intermediates,
        )
        hidden = out["last_hidden_state"]
        if masked_positions is not None:
            hidden = jnp.take_along_axis(hidden, masked_positions[..., None], axis=1)
        out["mlm_logits"] = BertMLMHead(cfg, name="predictions")(hidden, bert.attend)
        nsp = dense(cfg, 2, DenseQuant(), ("embed", "classes"), "seq_relationship")
        out["nsp_logits"] = nsp(out["pooled"])
        return out


class BertForSequenceClassification(nn.Module):
    """`bert` + dropout + FP `classifier` on the pooled output; `num_labels=1` is regression."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        return_intermediates: bool = False,
    ) -> dict:
        cfg = self.config
        out = BertModel(cfg, name="bert")(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            return_intermediates=return_intermediates,
        )
        x = Dropout(cfg.classifier_dropout)(out["pooled"], deterministic=deterministic)
        out["logits"] = dense(
            cfg, self.num_labels, DenseQuant(), ("embed", "classes"), "classifier"
        )(x)
        return out
