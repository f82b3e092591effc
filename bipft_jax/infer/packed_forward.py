"""Forward pass of a :class:`~.packed_model.PackedModel` with 1-bit products on packed words.

Binary linears: the input is binarized and packed inside the graph, then multiplied with the
packed weight rows by XNOR-popcount (signed inputs: ``sign(x)``, ``α·sign(x + β)``) or
AND-popcount (unsigned ``α·1[round((x + β)/α) ≥ 1]``); the exact int32 result is scaled by
``α·m`` and the bias added. Attention, per the config's ``QuantSpec``:

* Q̂K̂ᵀ: XNOR-popcount of ``sign(Q)`` and ``sign(K)`` (both packed along the head dim), × α_q α_k;
* BiPFT estimators (rank r): float, added before ``1/√d`` as in the model;
* probabilities: BiBERT ``bool`` (``1[scores > 0]``, no softmax) or BiT/BiPFT unsigned
  ``{0, α_p}`` of the softmax, packed along the key axis;
* P̂V̂: AND-popcount against ``sign(V)`` packed along the key axis, × α_p α_v (+ BiPFT's float
  ``P̂·r_v``).

Everything else (embedding lookups of the packed tables, LayerNorm, GELU/ReLU, softmax, pooler
tanh, heads) is float32. Exact zeros (``sign(0) = 0``) are honoured: each signed product checks
its operands at run time and takes the two-plane (sign + nonzero mask) path only when a zero is
present (``lax.cond``), else the one-plane path (native ``jax.ffi`` kernel with
``kernel="native"``). The fake-quant model computes its binary products the same way (integer
codes first, then one combined scale ``m·α``; ``quant/product.py``) and its LayerNorm with the
same ``normalize``, so on XLA:CPU the two give identical logits (every GLUE-study model,
``benchmarks/results/deploy_study.md``; random models in ``tests/infer/test_packed_model.py``),
also where the caller's ``jit`` closes over the packed model and its scales become compile-time
constants (``_times``; ``tests/infer/test_packed_constants.py``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bipft_jax.infer.kernels import resolve_kernel, signed_matmul, unsigned_matmul
from bipft_jax.infer.packed_model import PackedModel
from bipft_jax.infer.packing import PackedSigns
from bipft_jax.infer.xnor import DEFAULT_CHUNK
from bipft_jax.model.attention import mask_bias
from bipft_jax.model.layers import activation, normalize
from bipft_jax.quant import ALPHA_MIN, ActQuant
from bipft_jax.quant.product import combined_scale

Array = Any


class _Ctx:
    """The tensors, config and kernel choice of one forward call."""

    def __init__(self, model: PackedModel, kernel: str, chunk: int):
        self.t, self.cfg, self.chunk = model.tensors, model.config, chunk
        self.kernel = resolve_kernel(kernel)

    def signed(self, a: Array, b: Array | PackedSigns) -> Array:
        return signed_matmul(a, b, self.kernel, self.chunk)

    def unsigned(self, u: Array, b: Array | PackedSigns) -> Array:
        return unsigned_matmul(u, b, self.kernel, self.chunk)

    def binarize(self, x: Array, q: ActQuant, prefix: str) -> tuple[Array, Array | None, bool]:
        """``(v, α, signed)``: the product uses ``sign(v)`` (signed) or ``v`` in {0, 1}; the
        activation is ``α·that`` (α None: 1). Same float ops as ``ActQuantizer``."""
        if q.learnable_bias:
            x = x + self.t[f"{prefix}/shift/bias"]
        alpha = None
        if q.is_elastic:
            alpha = jnp.maximum(self.t[f"{prefix}/alpha"], ALPHA_MIN)
        if q.method in ("sign", "elastic_signed"):
            return x, alpha, True
        if q.method == "bool":
            return (x > 0).astype(jnp.float32), alpha, False
        return (jnp.round(x / alpha) >= 1).astype(jnp.float32), alpha, False

    def dense(self, x: Array, name: str, q: ActQuant | None = None) -> Array:
        """A linear: packed (binarized input, popcount) when its kernel is packed, else FP."""
        w, b = self.t[f"{name}/kernel"], self.t[f"{name}/bias"]
        if not isinstance(w, PackedSigns):
            dims = (((x.ndim - 1,), (0,)), ((), ()))
            return lax.dot_general(x, w, dims) + b
        if q is None or not q.enabled:  # W1A32: float input times the unpacked signs, then m
            return (x @ w.unpack(jnp.float32).T) * self.t[f"{name}/kernel.scale"] + b
        v, alpha, signed = self.binarize(x, q, f"{name}/input_quant")
        dot = self.signed(v, w) if signed else self.unsigned(v, w)
        return _times(dot.astype(jnp.float32), self.t[f"{name}/kernel.scale"], alpha) + b

    def layer_norm(self, x: Array, name: str) -> Array:
        scale, bias = self.t[f"{name}/scale"], self.t[f"{name}/bias"]
        return normalize(x, scale, bias, self.cfg.layer_norm_eps)

    def embed(self, name: str, ids: Array) -> Array:
        table = self.t[name]
        if not isinstance(table, PackedSigns):
            return jnp.take(table, ids, axis=0)
        mask = None if table.mask is None else jnp.take(table.mask, ids, axis=0)
        rows = PackedSigns(jnp.take(table.signs, ids, axis=0), mask, table.k)
        scale = self.t[f"{name}.scale"]  # [V, 1], or [1, 1] / [1, E] (not per row)
        scale = jnp.take(scale, ids, axis=0) if scale.shape[0] > 1 else scale[0]
        return rows.unpack(jnp.float32) * scale

    def attention(self, h: Array, bias: Array, name: str) -> Array:
        cfg, spec = self.cfg, self.cfg.quant
        b, length, _ = h.shape
        heads, d = cfg.num_heads, cfg.head_dim

        def project(kind: str) -> tuple[Array, Array | None]:  # [b, heads, L, d] pre-sign
            y = self.dense(h, f"{name}/self/{kind}", spec.linear_input)
            v, alpha, _ = self.binarize(y, spec.qkv, f"{name}/self/{kind}_quant")
            return v.reshape(b, length, heads, d).transpose(0, 2, 1, 3), alpha

        (q, a_q), (k, a_k), (v, a_v) = project("query"), project("key"), project("value")
        scores = self.signed(q, k).astype(jnp.float32)
        scores = _times(scores, a_q, a_k)
        est = spec.estimators
        if est.enabled:
            scores = scores + self.residual_polynomial(h, f"{name}/self")
        scores = scores / math.sqrt(d) + bias
        probs_in = jax.nn.softmax(scores, axis=-1) if spec.attention == "softmax" else scores
        u, a_p, _ = self.binarize(probs_in, spec.probs, f"{name}/self/probs_quant")
        context = self.unsigned(u, v.transpose(0, 1, 3, 2)).astype(jnp.float32)
        context = _times(context, a_p, a_v).transpose(0, 2, 1, 3)  # [b, L, heads, d]
        if est.enabled:
            r_v = self.dense(h, f"{name}/self/v_p")
            r_v = jnp.broadcast_to(r_v, (b, length, heads))
            # P̂·r_v = α_p (u @ r_v) as a batched mat-vec ([b, h, q, k] @ [b, h, k, 1]); XLA's CPU
            # einsum "bhqk,bkh->bqh" was measured 8x slower at seq 512.
            pr = _times(u @ r_v.transpose(0, 2, 1)[..., None], a_p)  # [b, h, q, 1]
            context = context + pr.transpose(0, 2, 1, 3)
        out = self.dense(
            context.reshape(b, length, heads * d), f"{name}/output/dense", spec.linear_input
        )
        return self.layer_norm(out + h, f"{name}/output/LayerNorm")

    def residual_polynomial(self, h: Array, name: str) -> Array:
        """BiPFT ``m_q r_kᵀ + r_q m_kᵀ + r_q r_kᵀ`` as [B, groups, L, L] (float)."""
        est, (b, length, _) = self.cfg.quant.estimators, h.shape
        groups = self.cfg.num_heads if est.per_head else 1
        r_q, r_k, m_q, m_k = (
            self.dense(h, f"{name}/{n}").reshape(b, length, groups, est.rank)
            for n in ("q_p", "k_p", "q_m", "k_m")
        )
        outer = lambda a, c: jnp.einsum("bqgr,bkgr->bgqk", a, c)
        return outer(m_q, r_k) + outer(r_q, m_k) + outer(r_q, r_k)

    def layer(self, h: Array, bias: Array, name: str) -> Array:
        q = self.cfg.quant
        a = self.attention(h, bias, f"{name}/attention")
        x = activation(self.cfg.hidden_act)(
            self.dense(a, f"{name}/intermediate/dense", q.linear_input)
        )
        x = self.dense(x, f"{name}/output/dense", q.ffn_out_input)
        return self.layer_norm(x + a, f"{name}/output/LayerNorm")


def _times(x: Array, *scales: Array | None) -> Array:
    """``x`` times the product of the scales that are not None, multiplied together first
    (``quant.product.combined_scale``, the fake-quant model's order).

    The product passes an optimization barrier: where the model is closed over by the caller's
    ``jit``, its α and m are compile-time constants, and XLA folds ``(x·c)·(1/√d)`` on the
    scores into ``x·(c/√d)``, one rounding instead of the fake-quant model's two (its α are
    runtime params); a softmax output within an ulp of ``α_p/2`` then binarizes differently
    (seen on a trained BiT model). Behind the barrier the scale is an opaque runtime value
    either way."""
    present = [s for s in scales if s is not None]
    return x * lax.optimization_barrier(combined_scale(present)) if present else x


def packed_encoder_layer(
    model: PackedModel,
    h: Array,
    bias: Array,
    index: int,
    *,
    kernel: str = "auto",
    chunk: int = DEFAULT_CHUNK,
) -> Array:
    """Encoder layer ``index`` of ``model`` on hidden states ``h`` [B, L, H] with the additive
    attention bias ``bias`` (``model.attention.mask_bias`` of the keep-mask)."""
    return _Ctx(model, kernel, chunk).layer(h, bias, f"{model.prefix}encoder/layer_{index}")


def packed_forward(
    model: PackedModel,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    position_ids: Array | None = None,
    *,
    kernel: str = "auto",
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, Array]:
    """Logits of a packed model, as the fake-quant model's ``apply`` (deterministic) returns:
    ``last_hidden_state``, ``pooled`` and per head ``mlm_logits``/``nsp_logits`` or ``logits``.

    ``kernel``: ``"native"`` packs and multiplies on the ``jax.ffi`` CPU kernels where they apply
    (XLA elsewhere), ``"xla"`` uses XLA ops only, ``"auto"`` (default) is native when the kernels
    build on this machine. Jit it with ``static_argnames=("kernel", "chunk")``.
    """
    ctx, cfg, p = _Ctx(model, kernel, chunk), model.config, model.prefix
    b, length = input_ids.shape
    if length > cfg.max_position:
        raise ValueError(f"sequence length {length} exceeds max_position {cfg.max_position}")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(length, dtype=input_ids.dtype), (b, length))
    emb = f"{p}embeddings"
    h = (
        ctx.embed(f"{emb}/word_embeddings/embedding", input_ids)
        + ctx.embed(f"{emb}/position_embeddings/embedding", position_ids)
        + ctx.embed(f"{emb}/token_type_embeddings/embedding", token_type_ids)
    )
    h = ctx.layer_norm(h, f"{emb}/LayerNorm")
    bias = mask_bias(attention_mask)
    for i in range(cfg.num_layers):
        h = ctx.layer(h, bias, f"{p}encoder/layer_{i}")
    first = h[:, 0]
    pooled = ctx.dense(first, f"{p}pooler/dense", cfg.quant.pooler_quant.input)
    if cfg.quant.pooler == "bipft_ln_residual":
        pooled = ctx.layer_norm(pooled, f"{p}pooler/LayerNorm") + first
    out = {"last_hidden_state": h, "pooled": jnp.tanh(pooled)}
    if model.head == "pretraining":
        x = ctx.dense(h, "predictions/transform_dense")
        x = activation(cfg.quant.mlm_transform_act)(x)
        x = ctx.layer_norm(x, "predictions/transform_LayerNorm")
        table = model.tensors[f"{emb}/word_embeddings/embedding.latent"]
        out["mlm_logits"] = (
            jnp.einsum("...e,ve->...v", x, table) + model.tensors["predictions/bias"]
        )
        out["nsp_logits"] = ctx.dense(out["pooled"], "seq_relationship")
    elif model.head == "classification":
        out["logits"] = ctx.dense(out["pooled"], "classifier")
    return out
