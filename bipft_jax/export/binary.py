"""Export a (binary) model as latent weights + every quantizer parameter, with a manifest.

The directory is the versioned container of `bipft_jax.infer.fileformat` (manifest with
checksums + `tensors.safetensors`). Tensors are named by their "/"-joined Flax path with scanned
layers unstacked to `layer_<i>`; each carries a `role`: `latent_weight` (a binarized kernel or
embedding, stored un-binarized), `alpha` (elastic step size), `beta` (learnable input shift),
`estimator` (BiPFT q_p/k_p/q_m/k_m/v_p) or `fp`. The manifest names the preset and holds the full
`BertConfig` (every QuantSpec flag), the head and `num_labels`. `bipft_jax.export.torch_bert`
runs it in PyTorch without JAX.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from bipft_jax.export.common import check_shapes, flat_params
from bipft_jax.infer.fileformat import load_packed, save_packed
from bipft_jax.model.config import BertConfig, from_config_dict, to_dict

KIND = "bipft-binary-latent"
_ESTIMATOR = re.compile(r"/(q_p|k_p|q_m|k_m|v_p)/")


def tensor_role(name: str, config: BertConfig) -> str:
    """The role of one exported tensor (see the module docstring)."""
    q = config.quant
    if name.endswith("/alpha"):
        return "alpha"
    if name.endswith("/shift/bias"):
        return "beta"
    if _ESTIMATOR.search(f"/{name}"):
        return "estimator"
    if name.endswith("word_embeddings/embedding"):
        return "latent_weight" if q.word_embedding.enabled else "fp"
    if name.endswith("/kernel"):
        pooler = "pooler/dense/" in name
        weight = q.pooler_quant.weight if pooler else q.linear_weight
        binary_linear = "/encoder/" in f"/{name}" and not _ESTIMATOR.search(f"/{name}")
        if weight.enabled and (pooler or binary_linear):
            return "latent_weight"
    return "fp"


def export_binary(
    params: Mapping[str, Any],
    config: BertConfig,
    out_dir: str | os.PathLike,
    preset: str | None = None,
    size: str | None = None,
) -> Path:
    """Write `params` (or `variables`) and `config` as a binary-latent export directory."""
    head, num_labels = check_shapes(params, config)
    arrays = {"/".join(p): np.array(v, copy=True) for p, v in flat_params(params, config).items()}
    # `param_shape`: the container stores 0-d tensors (α) as shape (1,); loading restores it.
    meta = {
        name: {"role": tensor_role(name, config), "param_shape": list(a.shape)}
        for name, a in arrays.items()
    }
    manifest = {
        "kind": KIND,
        "preset": preset,
        "size": size,
        "head": head,
        "num_labels": num_labels,
        "layers": "unstacked",
        "config": to_dict(config),
    }
    return save_packed(out_dir, arrays, manifest, meta)


def load_binary(path: str | os.PathLike) -> tuple[dict, BertConfig, dict[str, Any]]:
    """(params tree for the JAX model, its `BertConfig`, the manifest) of an export directory.

    Scanned configs get their per-layer tensors stacked back on the leading layer axis.
    """
    arrays, manifest = load_packed(path)
    if manifest.get("kind") != KIND:
        raise ValueError(f"{path} is not a {KIND} export (kind={manifest.get('kind')!r})")
    config = from_config_dict(manifest["config"])
    tensors = manifest["tensors"]
    flat = {
        tuple(k.split("/")): v.reshape(tensors[k].get("param_shape", v.shape))
        for k, v in arrays.items()
    }
    if config.scan_layers:
        stacked: dict[tuple[str, ...], list] = {}
        rest = {}
        for p, v in flat.items():
            m = "encoder" in p and re.fullmatch(r"layer_(\d+)", p[p.index("encoder") + 1])
            if m:
                i = p.index("encoder") + 1
                key = (*p[:i], "layer", *p[i + 1 :])
                stacked.setdefault(key, [None] * config.num_layers)[int(m.group(1))] = v
            else:
                rest[p] = v
        flat = {**rest, **{k: np.stack(v) for k, v in stacked.items()}}
    return traverse_util.unflatten_dict(flat), config, manifest
