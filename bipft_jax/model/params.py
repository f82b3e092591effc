"""The one owner of parameter-tree knowledge: heads, layer stacking and every tensor's role.

A tensor is named by its Flax path (a tuple, or "/"-joined). Backbone paths start with
`embeddings`, `encoder`, `pooler` (under `bert/` when a head is attached); scanned layers are
stacked under `encoder/layer/...`, unstacked ones are `encoder/layer_<i>/...`. Both are accepted.

Kinds (what a tensor is): `word_embedding`, `pos_type_embedding`, `encoder_kernel` (Q, K, V,
attention output, FFN in/out), `pooler_kernel`, `bias`, `layernorm`, `quantizer` (α and β of an
activation binarizer, under `*_quant/`), `estimator` (BiPFT's `q_p k_p q_m k_m v_p`) and `head`
(MLM / NSP / classifier parameters).

Roles (how a preset deploys it): `latent_weight` (binarized by the preset's weight binarizer,
see `weight_quant`), `alpha`, `beta`, `estimator` or `fp` (kept in floating point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bipft_jax.model.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from bipft_jax.model.config import BertConfig
from bipft_jax.quant import DenseQuant, WeightQuant

HEADS = ("pretraining", "classification", "base")
HEAD_MODULES = ("predictions", "seq_relationship", "classifier")
# The BiPFT estimators (model/attention.py): rank-r maps of Q and K, and v_p of V.
ESTIMATORS = ("q_p", "k_p", "q_m", "k_m", "v_p")
KINDS = ("word_embedding", "pos_type_embedding", "encoder_kernel", "pooler_kernel", "bias",
         "layernorm", "quantizer", "estimator", "head")  # fmt: skip
ROLES = ("latent_weight", "alpha", "beta", "estimator", "fp")
_FFN_OUT = ("layer", "output", "dense")  # the FFN-out linear; other encoder linears use `linear`

Path = tuple[str, ...]


class ParamsError(ValueError):
    """A param tree that does not fit its config (missing, unexpected or mis-shaped tensors)."""


def _path(name: str | Sequence[str]) -> Path:
    return tuple(name.split("/")) if isinstance(name, str) else tuple(name)


def _backbone(path: Path) -> Path:
    return path[1:] if path[:1] == ("bert",) else path


# ----------------------------------------------------------------------------- kinds and roles


def param_kind(name: str | Sequence[str]) -> str:
    """The kind of one tensor (see the module docstring)."""
    path = _backbone(_path(name))
    if path[0] in HEAD_MODULES:
        return "head"
    if set(path) & set(ESTIMATORS):
        return "estimator"
    if any(p.endswith("_quant") for p in path):
        return "quantizer"
    if path[-1] == "embedding":
        return "word_embedding" if "word_embeddings" in path else "pos_type_embedding"
    if "LayerNorm" in path:
        return "layernorm"
    if path[-1] == "bias":
        return "bias"
    if path[-1] == "kernel":
        return "pooler_kernel" if path[0] == "pooler" else "encoder_kernel"
    raise ParamsError(f"unclassified parameter {'/'.join(path)}")


def dense_quant(name: str | Sequence[str], config: BertConfig) -> DenseQuant:
    """The weight + input binarizers of an encoder or pooler kernel."""
    path = _path(name)
    kind = param_kind(path)
    if kind == "pooler_kernel":
        return config.quant.pooler_quant
    if kind != "encoder_kernel":
        raise ParamsError(f"{'/'.join(path)} is not a binarizable linear ({kind})")
    module = tuple("layer" if p.startswith("layer_") else p for p in path[:-1])
    return config.quant.ffn_out if module[-3:] == _FFN_OUT else config.quant.linear


def weight_quant(name: str | Sequence[str], config: BertConfig) -> WeightQuant | None:
    """The binarizer a preset applies to this tensor, or None if it stays floating point."""
    kind = param_kind(name)
    if kind == "word_embedding":
        wq = config.quant.word_embedding
    elif kind in ("encoder_kernel", "pooler_kernel"):
        wq = dense_quant(name, config).weight
    else:
        return None
    return wq if wq.enabled else None


def tensor_role(name: str | Sequence[str], config: BertConfig) -> str:
    """`latent_weight`, `alpha`, `beta`, `estimator` or `fp` (see the module docstring)."""
    path = _path(name)
    kind = param_kind(path)
    if kind == "quantizer" and path[-1] == "alpha":
        return "alpha"
    if kind == "quantizer" and path[-2:] == ("shift", "bias"):
        return "beta"
    if kind == "estimator":
        return "estimator"
    return "latent_weight" if weight_quant(path, config) is not None else "fp"


def num_scales(wq: WeightQuant, shape: Sequence[int]) -> int:
    """How many scales `m` binarizing a (possibly layer-stacked) tensor of `shape` yields."""
    per_channel = wq.method == "bibert" or wq.scale == "channel"
    layers = shape[0] if len(shape) == 3 else 1
    return layers * (shape[wq.channel_axis] if per_channel else 1)


def student_only(name: str | Sequence[str]) -> bool:
    """A parameter with no full-precision BERT counterpart (α, β, estimators, BiPFT pooler LN)."""
    path = _backbone(_path(name))
    return param_kind(path) in ("quantizer", "estimator") or path[:2] == ("pooler", "LayerNorm")


# ----------------------------------------------------------------------------- layer stacking


def stacked_layer_axis(path: Path) -> int | None:
    """Index of the `layer` component of a scanned (layer-stacked) path, else None."""
    if "encoder" in path:
        i = path.index("encoder") + 1
        if i < len(path) and path[i] == "layer":
            return i
    return None


def unstack_layers(flat: Mapping[Path, Any], num_layers: int) -> dict[Path, Any]:
    """{path: value} with every stacked `encoder/layer/...` leaf split into `layer_<i>` leaves.

    Values may be arrays (sliced on axis 0) or shape structs (the leading axis dropped).
    """
    out: dict[Path, Any] = {}
    for path, value in flat.items():
        i = stacked_layer_axis(path)
        if i is None:
            out[path] = value
            continue
        if tuple(value.shape[:1]) != (num_layers,):
            raise ParamsError(
                f"scanned param {'/'.join(path)} has shape {tuple(value.shape)}; expected a "
                f"leading layer axis of {num_layers}"
            )
        for n in range(num_layers):
            layer = (
                jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
                if isinstance(value, jax.ShapeDtypeStruct)
                else value[n]
            )
            out[(*path[:i], f"layer_{n}", *path[i + 1 :])] = layer
    return out


def stack_layers(flat: Mapping[Path, np.ndarray], num_layers: int) -> dict[Path, np.ndarray]:
    """Inverse of `unstack_layers`: `layer_<i>` leaves stacked back on a leading axis."""
    stacked: dict[Path, list] = {}
    out: dict[Path, np.ndarray] = {}
    for path, value in flat.items():
        i = path.index("encoder") + 1 if "encoder" in path else None
        if i is None or i >= len(path) or not path[i].startswith("layer_"):
            out[path] = value
            continue
        key = (*path[:i], "layer", *path[i + 1 :])
        stacked.setdefault(key, [None] * num_layers)[int(path[i].removeprefix("layer_"))] = value
    return {**out, **{k: np.stack(v) for k, v in stacked.items()}}


# ----------------------------------------------------------------------------- trees and heads


def _params(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept either `variables` (with a "params" key) or the params tree itself."""
    return tree.get("params", tree)


def flat_params(tree: Mapping[str, Any], config: BertConfig) -> dict[Path, np.ndarray]:
    """{path: float array} with boxes removed and scanned layers split into `layer_<i>`."""
    flat = traverse_util.flatten_dict(dict(_params(tree)), keep_empty_nodes=False)
    arrays = {path: np.asarray(nn.unbox(leaf)) for path, leaf in flat.items()}
    return unstack_layers(arrays, config.num_layers)


def detect_head(tree: Mapping[str, Any]) -> tuple[str, int]:
    """("pretraining" | "classification" | "base", num_labels) from the top-level param names."""
    top = set(_params(tree))
    if "bert" not in top:
        if {"embeddings", "encoder"} <= top:
            return "base", 0
        raise ParamsError(f"not a BERT param tree: top-level keys {sorted(top)}")
    if "predictions" in top:
        return "pretraining", 0
    if "classifier" in top:
        kernel = nn.unbox(_params(tree)["classifier"]["kernel"])
        return "classification", int(np.shape(kernel)[-1])
    return "base", 0


def build_model(config: BertConfig, head: str, num_labels: int = 2) -> nn.Module:
    """The Linen model class for a head name."""
    if head == "pretraining":
        return BertForPreTraining(config)
    if head == "classification":
        return BertForSequenceClassification(config, num_labels=num_labels)
    if head == "base":
        return BertModel(config)
    raise ParamsError(f"unknown head {head!r}; choose one of {HEADS}")


def abstract_params(config: BertConfig, head: str = "base", num_labels: int = 2) -> Any:
    """The unboxed param tree of `build_model(...)` as shape structs (`jax.eval_shape`)."""
    model = build_model(config, head, num_labels)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return nn.unbox(jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"])


def check_shapes(tree: Mapping[str, Any], config: BertConfig) -> tuple[str, int]:
    """Compare every param with the shapes `config` implies; raise listing every mismatch."""
    head, num_labels = detect_head(tree)
    want = {k: tuple(v.shape) for k, v in _flat(abstract_params(config, head, max(num_labels, 1)))}
    got = {k: tuple(np.shape(v)) for k, v in _flat(_params(tree))}
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
    problems += [
        f"{k}: params {got[k]} vs config {want[k]}"
        for k in sorted(set(want) & set(got))
        if want[k] != got[k]
    ]
    if problems:
        raise ParamsError(
            f"params do not match the config ({len(problems)} problem(s)): "
            + "; ".join(problems[:12])
            + (" ..." if len(problems) > 12 else "")
        )
    return head, num_labels


def _flat(tree: Mapping[str, Any]) -> list[tuple[str, Any]]:
    flat = traverse_util.flatten_dict(dict(tree), keep_empty_nodes=False)
    return [("/".join(k), nn.unbox(v)) for k, v in flat.items()]
