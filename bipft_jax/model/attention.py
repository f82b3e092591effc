"""Self-attention: FP softmax, BiBERT Bi-Attention, BiT, and BiPFT (BiT + residual estimators).

One module; the method is the `QuantSpec` (methods.md §3):
  Q,K,V = linear(h) (binary linears as the spec says), Q̂,K̂,V̂ = qkv binarizer(Q,K,V)
  S     = (Q̂K̂ᵀ [+ m_q r_kᵀ + r_q m_kᵀ + r_q r_kᵀ]) / √d + mask
  P     = softmax(S)            (attention "softmax")   |  S   (attention "bool", BiBERT)
  P̂     = probs binarizer(dropout(P))
  C     = P̂·V̂ [+ P̂·r_v]       (the BiPFT value residual, broadcast over a head's channels)
The estimators `q_p, k_p, q_m, k_m` (rank r) and `v_p` (rank 1) are FP maps of the layer input h,
shared by all heads (paper) or one per head (`estimators.per_head`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bipft_jax.model.config import BertConfig
from bipft_jax.model.layers import DenseResidualNorm, Dropout, dense
from bipft_jax.quant import ActQuantizer, DenseQuant
from bipft_jax.quant.product import Quantized, quantized_einsum


class BertSelfAttention(nn.Module):
    """Scores, probabilities and context (Hugging Face `attention.self`)."""

    config: BertConfig
    deterministic: bool = True
    collect: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, mask_bias: jax.Array) -> tuple[jax.Array, dict]:
        cfg, spec = self.config, self.config.quant
        b, length, _ = h.shape
        heads, d = cfg.num_heads, cfg.head_dim

        def project(name: str) -> tuple[jax.Array, Quantized]:
            y = dense(cfg, cfg.hidden_size, spec.linear, ("embed", "heads"), name)(h)
            yb = ActQuantizer(spec.qkv, bias_axis=None, name=f"{name}_quant")(y, parts=True)
            split = lambda t: t.reshape(b, length, heads, d)
            return split(y), yb.map(split)

        q, qb = project("query")
        k, kb = project("key")
        v, vb = project("value")

        # Binary products take integer codes first, then the scales (quant/product.py).
        scores = quantized_einsum("bqhd,bkhd->bhqk", qb, kb, preferred_element_type=jnp.float32)
        est = spec.estimators
        if est.enabled:
            scores = scores + self._residual_polynomial(h)
        scores = scores / math.sqrt(d) + mask_bias
        dropout = Dropout(cfg.attention_dropout)
        if spec.attention == "softmax":
            probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
            probs_b = ActQuantizer(spec.probs, bias_axis=None, name="probs_quant")(
                dropout(probs, deterministic=self.deterministic), parts=True
            )
        else:  # BiBERT: no softmax; dropout on the scores, then bool.
            dropped = dropout(scores, deterministic=self.deterministic)
            probs_b = ActQuantizer(spec.probs, bias_axis=None, name="probs_quant")(
                dropped, parts=True
            )
            probs = probs_b.value
        probs_b = probs_b.map(lambda t: t.astype(cfg.dtype))
        context = quantized_einsum("bhqk,bkhd->bqhd", probs_b, vb)
        if est.enabled:
            v_p = dense(
                cfg, heads if est.per_head else 1, DenseQuant(), ("embed", "qkv_rank"), "v_p"
            )
            r_v = jnp.broadcast_to(v_p(h), (b, length, heads)).astype(cfg.dtype)
            pr = quantized_einsum("bhqk,bkh->bqh", probs_b, Quantized.plain(r_v))
            context = context + pr[..., None]
        context = context.reshape(b, length, heads * d)
        inter = {}
        if self.collect:
            inter = {
                "q": q.transpose(0, 2, 1, 3),
                "k": k.transpose(0, 2, 1, 3),
                "v": v.transpose(0, 2, 1, 3),
                "attention_scores": scores,
                "attention_probs": probs,
            }
        return context, inter

    def _residual_polynomial(self, h: jax.Array) -> jax.Array:
        """`m_q r_kᵀ + r_q m_kᵀ + r_q r_kᵀ` as [B, heads or 1, L, L] (float32)."""
        cfg, est = self.config, self.config.quant.estimators
        groups = cfg.num_heads if est.per_head else 1
        b, length, _ = h.shape

        def estimate(name: str) -> jax.Array:
            layer = dense(cfg, groups * est.rank, DenseQuant(), ("embed", "qkv_rank"), name)
            return layer(h).astype(jnp.float32).reshape(b, length, groups, est.rank)

        r_q, r_k, m_q, m_k = (estimate(n) for n in ("q_p", "k_p", "q_m", "k_m"))
        outer = lambda a, c: jnp.einsum("bqgr,bkgr->bgqk", a, c)
        return outer(m_q, r_k) + outer(r_q, m_k) + outer(r_q, r_k)


class BertAttention(nn.Module):
    """`attention.self` + `attention.output`."""

    config: BertConfig
    deterministic: bool = True
    collect: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, mask_bias: jax.Array) -> tuple[jax.Array, dict]:
        context, inter = BertSelfAttention(
            self.config, self.deterministic, self.collect, name="self"
        )(h, mask_bias)
        out = DenseResidualNorm(self.config, "linear", "heads", self.deterministic, name="output")(
            context, h
        )
        return out, inter


def mask_bias(attention_mask: jax.Array) -> jax.Array:
    """[B, L] keep-mask (1 = attend) -> additive float32 bias [B, 1, 1, L]."""
    keep = attention_mask.astype(bool)[:, None, None, :]
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
