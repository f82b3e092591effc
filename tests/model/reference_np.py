"""Independent NumPy re-implementation of one post-LN layer of each method (methods.md §1-3).

Written from the formulas, not from the JAX code: float64, explicit loops over heads.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def act_quant(x, cfg, p):
    """x -> binarized x per `cfg` (an ActQuant); `p` holds `alpha` and `shift/bias` if any."""
    if cfg.method == "none":
        return x
    if cfg.learnable_bias:
        x = x + p["shift"]["bias"]
    if cfg.method == "sign":
        return np.sign(x)
    if cfg.method == "bool":
        return (x > 0).astype(np.float64)
    a = max(float(p["alpha"]), 1e-5)
    if cfg.method == "elastic_signed":
        return a * np.sign(x)
    assert cfg.method == "elastic_unsigned"
    return a * np.round(np.clip(x / a, 0.0, 1.0))


def weight_quant(w, cfg):
    """[in, out] kernel (channel_axis -1) or [vocab, embed] table (channel_axis 0)."""
    if cfg.method == "none":
        return w
    keep = cfg.channel_axis % w.ndim
    reduce = tuple(i for i in range(w.ndim) if i != keep)
    per_scale = cfg.method == "bibert" or cfg.scale == "channel"
    per_center = cfg.method == "bibert" or cfg.center == "channel"
    m = np.abs(w).mean(axis=reduce, keepdims=True) if per_scale else np.abs(w).mean()
    mu = w.mean(axis=reduce, keepdims=True) if per_center else w.mean()
    return m * np.sign(w - mu)


def linear(x, p, dense_quant):
    xq = act_quant(x, dense_quant.input, p.get("input_quant", {}))
    return xq @ weight_quant(p["kernel"], dense_quant.weight) + p["bias"]


def layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def act(x, name):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def bert_layer(p, h, keep, cfg):
    """One layer; `keep` [B, L] attention mask; returns the layer output [B, L, H]."""
    spec = cfg.quant
    b, length, hidden = h.shape
    nh, d = cfg.num_heads, hidden // cfg.num_heads
    sa = p["attention"]["self"]
    proj = {n: linear(h, sa[n], spec.linear) for n in ("query", "key", "value")}
    qb = {n: act_quant(proj[n], spec.qkv, sa.get(f"{n}_quant", {})) for n in proj}
    est = spec.estimators
    context = np.zeros((b, length, hidden))
    for i in range(nh):
        sl = slice(i * d, (i + 1) * d)
        s = qb["query"][..., sl] @ qb["key"][..., sl].transpose(0, 2, 1)
        if est.enabled:
            g = i if est.per_head else 0
            r = est.rank

            def e(name):
                y = h @ sa[name]["kernel"] + sa[name]["bias"]
                return y[..., g * r : (g + 1) * r]

            r_q, r_k, m_q, m_k = e("q_p"), e("k_p"), e("q_m"), e("k_m")
            tr = lambda t: t.transpose(0, 2, 1)
            s = s + m_q @ tr(r_k) + r_q @ tr(m_k) + r_q @ tr(r_k)
        s = s / math.sqrt(d) + np.where(keep[:, None, :] > 0, 0.0, -1e30)
        if spec.attention == "softmax":
            e_ = np.exp(s - s.max(-1, keepdims=True))
            probs = e_ / e_.sum(-1, keepdims=True)
        else:
            probs = s
        pb = act_quant(probs, spec.probs, sa.get("probs_quant", {}))
        c = pb @ qb["value"][..., sl]
        if est.enabled:
            r_v = h @ sa["v_p"]["kernel"] + sa["v_p"]["bias"]
            c = c + (pb @ r_v[..., (i if est.per_head else 0) : (i if est.per_head else 0) + 1])
        context[..., sl] = c
    ao = p["attention"]["output"]
    a = layer_norm(
        linear(context, ao["dense"], spec.linear) + h, ao["LayerNorm"], cfg.layer_norm_eps
    )
    x = act(linear(a, p["intermediate"]["dense"], spec.linear), cfg.hidden_act)
    out = p["output"]
    return layer_norm(
        linear(x, out["dense"], spec.ffn_out) + a, out["LayerNorm"], cfg.layer_norm_eps
    )
