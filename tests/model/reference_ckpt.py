"""Reference-code state dicts (exact key names and torch layouts) and their forward pass in NumPy.

Key names as the reference modules register them (read in the reference repositories):
  BiT    facebookresearch/bit transformer/modeling_bert_quant.py + utils_quant.py (QuantizeLinear:
         weight, bias, input_clip_val (AlphaInit, 0-d), move.bias; BertSelfAttention: clip_query/
         key/value/attn, the dead move_q/k/v; BertLayerNorm weight/bias).
  BiPFT  Xingrun-Xing/BiPFT binary_finetune/binary_bert.py, binary_pretraining/bipft.py (BiT's
         QuantizeLinear, no move_q/k/v, q_p/k_p/q_m/k_m/v_p nn.Linear, pooler.LayerNorm, cls.*).
  BiBERT htqin/BiBERT transformer/modeling_quant.py + utils_quant.py (QuantizeLinear: weight,
         bias, weight_clip_val, act_clip_val, scale; gate in the output blocks; clip_* buffers;
         word_embeddings.weight_clip_val).
The forward follows the reference formulas (float64, loops over heads), not our code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

SIZES = dict(vocab=50, hidden=16, layers=2, heads=2, inter=32, positions=16, types=2)
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")  # fmt: skip


def _linear(sd, rng, name, n_in, n_out, kind):
    sd[f"{name}.weight"] = rng.normal(0, 0.3, (n_out, n_in))
    sd[f"{name}.bias"] = rng.normal(0, 0.1, n_out)
    if kind == "bibert":
        sd[f"{name}.weight_clip_val"] = np.array([-2.5, 2.5])
        sd[f"{name}.act_clip_val"] = np.array([-2.5, 2.5])
        sd[f"{name}.scale"] = np.array(0.0)
    else:
        sd[f"{name}.input_clip_val"] = np.array(rng.uniform(0.3, 1.5))
        sd[f"{name}.move.bias"] = rng.normal(0, 0.2, n_in)


def _ln(sd, rng, name, n):
    sd[f"{name}.weight"] = 1 + rng.normal(0, 0.1, n)
    sd[f"{name}.bias"] = rng.normal(0, 0.1, n)


def reference_state(kind: str, head: str = "classification", num_labels: int = 3, seed: int = 0):
    """A random state dict of the reference model with every key the reference saves."""
    rng, s = np.random.default_rng(seed), SIZES
    h, sd = s["hidden"], {}
    sd["bert.embeddings.word_embeddings.weight"] = rng.normal(0, 0.5, (s["vocab"], h))
    if kind == "bibert":
        sd["bert.embeddings.word_embeddings.weight_clip_val"] = np.array([-2.5, 2.5])
    sd["bert.embeddings.position_embeddings.weight"] = rng.normal(0, 0.5, (s["positions"], h))
    sd["bert.embeddings.token_type_embeddings.weight"] = rng.normal(0, 0.5, (s["types"], h))
    _ln(sd, rng, "bert.embeddings.LayerNorm", h)
    for i in range(s["layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in LINEARS:
            n_in = s["inter"] if name == "output.dense" else h
            n_out = s["inter"] if name == "intermediate.dense" else h
            _linear(sd, rng, p + name, n_in, n_out, kind)
        _ln(sd, rng, p + "attention.output.LayerNorm", h)
        _ln(sd, rng, p + "output.LayerNorm", h)
        for c in ("query", "key", "value", "attn"):
            if kind == "bibert":
                sd[f"{p}attention.self.clip_{c}"] = np.array([-2.5, 2.5])
            else:  # α_p ≈ 4/L for the probabilities
                lo, hi = (0.1, 0.4) if c == "attn" else (0.3, 1.5)
                sd[f"{p}attention.self.clip_{c}"] = np.array(rng.uniform(lo, hi))
        if kind == "bit":
            for c in "qkv":
                sd[f"{p}attention.self.move_{c}.bias"] = rng.normal(0, 0.2, h)
        if kind == "bipft":
            for e in ("q_p", "k_p", "q_m", "k_m", "v_p"):
                sd[f"{p}attention.self.{e}.weight"] = rng.normal(0, 0.2, (1, h))
                sd[f"{p}attention.self.{e}.bias"] = rng.normal(0, 0.1, 1)
        if kind == "bibert":
            sd[f"{p}attention.output.gate"] = np.array(1.0)
            sd[f"{p}output.gate"] = np.array(1.0)
    _linear(sd, rng, "bert.pooler.dense", h, h, kind)
    if kind == "bipft":
        _ln(sd, rng, "bert.pooler.LayerNorm", h)
    if head == "classification":
        sd["classifier.weight"] = rng.normal(0, 0.3, (num_labels, h))
        sd["classifier.bias"] = rng.normal(0, 0.1, num_labels)
    else:  # BiPFT's BinaryBertForPreTraining
        sd["cls.predictions.bias"] = rng.normal(0, 0.1, s["vocab"])
        sd["cls.predictions.transform.dense.weight"] = rng.normal(0, 0.3, (h, h))
        sd["cls.predictions.transform.dense.bias"] = rng.normal(0, 0.1, h)
        _ln(sd, rng, "cls.predictions.transform.LayerNorm", h)
        sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
        sd["cls.seq_relationship.weight"] = rng.normal(0, 0.3, (2, h))
        sd["cls.seq_relationship.bias"] = rng.normal(0, 0.1, 2)
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def _layer_norm(x, sd, name, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _lsq(x, alpha, bits, signed):
    """ElasticQuantBinarizerSigned / Unsigned forward (BiT utils_quant.py:22-144)."""
    a = max(float(alpha), 1e-5)
    if signed:
        if bits == 1:
            return a * np.sign(x)
        qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return a * np.clip(np.round(x / a), qn, qp)
    if bits == 1:
        return a * np.clip(np.round(x / a), 0, 1)
    low = x.min()
    return a * np.clip(np.round((x - low) / a), 0, 2**bits - 1) + low


def _qlinear(x, sd, name, kind, bits, signed=True):
    w, b = sd[f"{name}.weight"].astype(np.float64), sd[f"{name}.bias"]
    if kind == "bibert":  # per output row scale and centre, sign(x) input
        wq = np.abs(w).mean(1, keepdims=True) * np.sign(w - w.mean(1, keepdims=True))
        return np.sign(x) @ wq.T + b
    wq = np.abs(w).mean() * np.sign(w - w.mean())  # BWN, one scalar per matrix
    xq = _lsq(x + sd[f"{name}.move.bias"], sd[f"{name}.input_clip_val"], bits, signed)
    return xq @ wq.T + b


def _act(x, name):
    return np.maximum(x, 0) if name == "relu" else 0.5 * x * (1 + erf(x / math.sqrt(2)))


def reference_forward(kind, sd, ids, mask, types, bits=1, act=None):
    """{"pooled", and "logits" or "nsp_logits"} of the reference model (dropout off)."""
    s = SIZES
    act = act or ("relu" if kind == "bit" else "gelu")
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    emb = sd["bert.embeddings.word_embeddings.weight"]
    if kind == "bibert":
        table = np.abs(emb).mean(1, keepdims=True) * np.sign(emb - emb.mean(1, keepdims=True))
    else:  # per-row scale, global centre (embed_layerwise=False)
        table = np.abs(emb).mean(1, keepdims=True) * np.sign(emb - emb.mean())
    pos = sd["bert.embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
    x = table[ids] + pos + sd["bert.embeddings.token_type_embeddings.weight"][types]
    h = _layer_norm(x, sd, "bert.embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    nh, d = s["heads"], s["hidden"] // s["heads"]
    for i in range(s["layers"]):
        p = f"bert.encoder.layer.{i}."
        split = lambda t: t.reshape(*t.shape[:2], nh, d).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(_qlinear(h, sd, p + f"attention.self.{n}", kind, bits))
                   for n in ("query", "key", "value"))  # fmt: skip
        if kind == "bibert":
            q, k, v = np.sign(q), np.sign(k), np.sign(v)
            probs = (q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias > 0).astype(np.float64)
            ctx = probs @ v
        else:
            q, k, v = (_lsq(t, sd[f"{p}attention.self.clip_{n}"], bits, True)
                       for t, n in ((q, "query"), (k, "key"), (v, "value")))  # fmt: skip
            scores = q @ k.transpose(0, 1, 3, 2)
            if kind == "bipft":
                w = {
                    e: sd[f"{p}attention.self.{e}.weight"]
                    for e in ("q_p", "k_p", "q_m", "k_m", "v_p")
                }
                est = {e: h @ m.T + sd[f"{p}attention.self.{e}.bias"] for e, m in w.items()}
                rq, rk, mq, mk = est["q_p"], est["k_p"], est["q_m"], est["k_m"]
                poly = (
                    mq @ rk.transpose(0, 2, 1)
                    + rq @ mk.transpose(0, 2, 1)
                    + rq @ rk.transpose(0, 2, 1)
                )
                scores = scores + poly[:, None]
            scores = scores / math.sqrt(d) + bias
            e = np.exp(scores - scores.max(-1, keepdims=True))
            probs = _lsq(
                e / e.sum(-1, keepdims=True), sd[f"{p}attention.self.clip_attn"], bits, False
            )
            ctx = probs @ v
            if kind == "bipft":
                ctx = ctx + probs @ est["v_p"][:, None, :, :]  # r_v broadcast to heads/channels
        ctx = ctx.transpose(0, 2, 1, 3).reshape(h.shape)
        a = _layer_norm(_qlinear(ctx, sd, p + "attention.output.dense", kind, bits) + h, sd,
                        p + "attention.output.LayerNorm")  # fmt: skip
        inter = _act(_qlinear(a, sd, p + "intermediate.dense", kind, bits), act)
        out = _qlinear(inter, sd, p + "output.dense", kind, bits, signed=kind != "bit")
        h = _layer_norm(out + a, sd, p + "output.LayerNorm")
    first = h[:, 0]
    pooled = _qlinear(first, sd, "bert.pooler.dense", kind, bits)
    if kind == "bipft":
        pooled = _layer_norm(pooled, sd, "bert.pooler.LayerNorm") + first
    out = {"pooled": np.tanh(pooled)}
    for key, name in (("logits", "classifier"), ("nsp_logits", "cls.seq_relationship")):
        if f"{name}.weight" in sd:
            out[key] = out["pooled"] @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
    return out
