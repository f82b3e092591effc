"""Run a `bipft export --format binary` directory in PyTorch (numpy + torch only, no JAX).

Self-contained on purpose: this file may be copied next to an export and used alone. It reads
`manifest.json` and `tensors.safetensors` (parsed with numpy, SHA-256 checked), binarizes the
latent weights once at load, and reproduces the JAX fake-quant forward pass of every preset:

    model = load("export_dir")                 # a torch.nn.Module, eval mode
    out = model(input_ids, token_type_ids, attention_mask)   # dict: logits / mlm_logits / ...

Numerics (as `bipft_jax.quant`): sign(0) = 0; BWN `mean|W|·sign(W - mean W)` per tensor or per
row; BiBERT per-channel; elastic signed `α·sign(x)` / unsigned `α·round(clip(x/α, 0, 1))` and
k-bit `α·clip(round(x/α), Qn, Qp)` (unsigned k-bit on `x - min x`), α clamped at 1e-5; bool
`1[x > 0]`; BiPFT residual estimators; both pooler variants.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

ALPHA_MIN = 1e-5
_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I32": np.int32,
    "I64": np.int64,
    "U32": np.uint32,
    "U8": np.uint8,
    "BF16": None,
}


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("bipft_jax.export.torch_bert needs PyTorch (pip install torch)") from e
    return torch


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a safetensors file with numpy only."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(rec["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {rec['dtype']}")
        start, end = rec["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype).reshape(rec["shape"]).copy()
    return out


def read_export(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, manifest) of an export directory, with file sizes and checksums verified."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"no manifest.json in {root}")
    manifest = json.loads(mpath.read_text())
    if manifest.get("kind") != "bipft-binary-latent":
        raise ValueError(f"{mpath} is not a binary-latent export (kind={manifest.get('kind')!r})")
    for name, rec in manifest["files"].items():
        f = root / name
        if not f.is_file() or f.stat().st_size != rec["bytes"]:
            raise ValueError(f"{f} is missing or truncated (manifest says {rec['bytes']} bytes)")
        if hashlib.sha256(f.read_bytes()).hexdigest() != rec["sha256"]:
            raise ValueError(f"{f} is corrupt (sha256 differs from the manifest)")
    return read_safetensors(root / "tensors.safetensors"), manifest


# ---------------------------------------------------------------- numerics (torch tensors)


def binarize_weight(w, q: dict):
    """`WeightQuant` forward: identity, BWN (tensor/channel scale and centre) or BiBERT."""
    torch = _torch()
    if q["method"] == "none":
        return w
    bibert = q["method"] == "bibert"
    keep = q["channel_axis"] % w.ndim

    def axes(per_channel: bool) -> list[int]:
        return [a for a in range(w.ndim) if not (per_channel and a == keep)]

    scale = w.abs().mean(dim=axes(bibert or q["scale"] == "channel"), keepdim=True)
    centre = w.mean(dim=axes(bibert or q["center"] == "channel"), keepdim=True)
    return scale * torch.sign(w - centre)


def quantize_act(x, q: dict, tensors: dict, prefix: str):
    """`ActQuant` forward with the params under `prefix` (`shift/bias`, `alpha`)."""
    torch = _torch()
    method = q["method"]
    if method == "none":
        return x
    if q["learnable_bias"]:
        x = x + tensors[f"{prefix}/shift/bias"]
    if method == "sign":
        return torch.sign(x)
    if method == "bool":
        return (x > 0).to(x.dtype)
    signed, bits = method == "elastic_signed", q["bits"]
    alpha = torch.clamp(tensors[f"{prefix}/alpha"], min=ALPHA_MIN)
    if signed:
        qn, qp = (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        qn, qp = 0, 2**bits - 1
    offset = x.min() if (not signed and bits > 1 and q["shift_min"]) else 0.0
    xs = x - offset
    if signed and bits == 1:
        return alpha * torch.sign(xs) + offset
    return alpha * torch.clamp(torch.round(xs / alpha), qn, qp) + offset


def _activation(name: str):
    torch = _torch()
    fns = {
        "gelu": lambda x: torch.nn.functional.gelu(x),
        "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
        "relu": torch.relu,
    }
    return fns[name]


# ---------------------------------------------------------------- the model


def _build_module_class():
    torch = _torch()
    functional = torch.nn.functional

    class BinaryBert(torch.nn.Module):
        """Fake-quant BERT of a binary-latent export; `forward` returns a dict as in JAX."""

        def __init__(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]):
            super().__init__()
            self.manifest = manifest
            self.config = manifest["config"]
            self.head = manifest["head"]
            self.prefix = "" if self.head == "base" else "bert/"
            self.t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in arrays.items()}
            self._binarize_weights()

        def _binarize_weights(self) -> None:
            """Binarize every latent weight once (latent embedding kept for the MLM decoder)."""
            q = self.config["quant"]
            self.w = dict(self.t)
            for name, rec in self.manifest["tensors"].items():
                if rec.get("role") != "latent_weight":
                    continue
                if name.endswith("word_embeddings/embedding"):
                    wq = q["word_embedding"]
                elif "pooler/" in name:
                    wq = q["pooler_quant"]["weight"]
                else:
                    wq = q["linear_weight"]
                self.w[name] = binarize_weight(self.t[name], wq)

        def dense(self, x, name: str, dq: dict | None = None):
            if dq is not None:
                x = quantize_act(x, dq["input"], self.t, f"{name}/input_quant")
            return x @ self.w[f"{name}/kernel"] + self.t[f"{name}/bias"]

        def layer_norm(self, x, name: str):
            shape = (x.shape[-1],)
            eps = self.config["layer_norm_eps"]
            return functional.layer_norm(
                x, shape, self.t[f"{name}/scale"], self.t[f"{name}/bias"], eps
            )

        def attention(self, h, bias, name: str):
            cfg, q = self.config, self.config["quant"]
            b, length, _ = h.shape
            heads = cfg["num_heads"]
            d = cfg["hidden_size"] // heads
            lin = {"weight": q["linear_weight"], "input": q["linear_input"]}

            def project(kind: str):
                y = self.dense(h, f"{name}/self/{kind}", lin)
                y = quantize_act(y, q["qkv"], self.t, f"{name}/self/{kind}_quant")
                return y.reshape(b, length, heads, d).transpose(1, 2)  # b h l d

            qb, kb, vb = project("query"), project("key"), project("value")
            scores = qb @ kb.transpose(-1, -2)
            est = q["estimators"]
            if est["enabled"]:
                groups = heads if est["per_head"] else 1

                def estimate(kind: str):
                    y = self.dense(h, f"{name}/self/{kind}")
                    return y.reshape(b, length, groups, est["rank"]).transpose(1, 2)

                r_q, r_k, m_q, m_k = (estimate(k) for k in ("q_p", "k_p", "q_m", "k_m"))
                outer = lambda a, c: a @ c.transpose(-1, -2)
                scores = scores + (outer(m_q, r_k) + outer(r_q, m_k) + outer(r_q, r_k))
            scores = scores / math.sqrt(d) + bias
            probs_in = torch.softmax(scores, dim=-1) if q["attention"] == "softmax" else scores
            probs = quantize_act(probs_in, q["probs"], self.t, f"{name}/self/probs_quant")
            context = probs @ vb  # b h l d
            if est["enabled"]:
                r_v = self.dense(h, f"{name}/self/v_p").expand(b, length, heads)
                context = context + (probs @ r_v.transpose(1, 2)[..., None])
            context = context.transpose(1, 2).reshape(b, length, heads * d)
            out = self.dense(context, f"{name}/output/dense", lin)
            return self.layer_norm(out + h, f"{name}/output/LayerNorm")

        def encoder_layer(self, h, bias, name: str):
            q = self.config["quant"]
            a = self.attention(h, bias, f"{name}/attention")
            lin = {"weight": q["linear_weight"], "input": q["linear_input"]}
            x = _activation(self.config["hidden_act"])(
                self.dense(a, f"{name}/intermediate/dense", lin)
            )
            ffn_out = {"weight": q["linear_weight"], "input": q["ffn_out_input"]}
            x = self.dense(x, f"{name}/output/dense", ffn_out)
            return self.layer_norm(x + a, f"{name}/output/LayerNorm")

        def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> dict:
            cfg, p = self.config, self.prefix
            input_ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
            b, length = input_ids.shape
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            token_type_ids = torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long)
            keep = torch.as_tensor(np.asarray(attention_mask)).bool()[:, None, None, :]
            low = torch.finfo(torch.float32).min
            bias = torch.where(keep, torch.tensor(0.0), torch.tensor(low))
            emb = f"{p}embeddings"
            store = getattr(torch, cfg["quant"].get("table_storage", "float32"))
            table = lambda name: self.t[f"{emb}/{name}/embedding"].to(store).float()  # noqa: E731
            h = (
                self.w[f"{emb}/word_embeddings/embedding"][input_ids]
                + table("position_embeddings")[torch.arange(length)][None]
                + table("token_type_embeddings")[token_type_ids]
            )
            h = self.layer_norm(h, f"{emb}/LayerNorm")
            for i in range(cfg["num_layers"]):
                h = self.encoder_layer(h, bias, f"{p}encoder/layer_{i}")
            first = h[:, 0]
            pooled = self.dense(first, f"{p}pooler/dense", cfg["quant"]["pooler_quant"])
            if cfg["quant"]["pooler"] == "bipft_ln_residual":
                pooled = self.layer_norm(pooled, f"{p}pooler/LayerNorm") + first
            out = {"last_hidden_state": h, "pooled": torch.tanh(pooled)}
            if self.head == "pretraining":
                x = self.dense(h, "predictions/transform_dense")
                x = _activation(cfg["quant"]["mlm_transform_act"])(x)
                x = self.layer_norm(x, "predictions/transform_LayerNorm")
                table = self.t[f"{emb}/word_embeddings/embedding"]  # latent (tied decoder)
                out["mlm_logits"] = x @ table.T + self.t["predictions/bias"]
                out["nsp_logits"] = self.dense(out["pooled"], "seq_relationship")
            elif self.head == "classification":
                out["logits"] = self.dense(out["pooled"], "classifier")
            return out

    return BinaryBert


def load(path: str | os.PathLike):
    """A `BinaryBert` (torch.nn.Module, eval mode) for an export directory."""
    arrays, manifest = read_export(path)
    return _build_module_class()(arrays, manifest).eval()
