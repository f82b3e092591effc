"""Export a (binary) model as latent weights + every quantizer parameter, with a manifest.

The directory is the versioned container of `bipft_jax.infer.fileformat` (manifest with
checksums + `tensors.safetensors`). Tensors are named by their "/"-joined Flax path with scanned
layers unstacked to `layer_<i>`; each carries its `role` (`bipft_jax.model.params.tensor_role`):
`latent_weight` (a binarized kernel or embedding, stored un-binarized), `alpha` (elastic step
size), `beta` (learnable input shift), `estimator` (BiPFT) or `fp`. The manifest names the
preset and holds the full `BertConfig` (every QuantSpec flag), the head and `num_labels`.
`bipft_jax.export.torch_bert` runs it in PyTorch without JAX.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from bipft_jax.infer.fileformat import load_packed, save_packed
from bipft_jax.model.config import BertConfig, from_config_dict, to_dict
from bipft_jax.model.params import check_shapes, flat_params, stack_layers, tensor_role

KIND = "bipft-binary-latent"


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
        flat = stack_layers(flat, config.num_layers)
    return traverse_util.unflatten_dict(flat), config, manifest
