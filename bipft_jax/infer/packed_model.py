"""Pack a whole binary BERT into the versioned packed file, and load it back runnable.

Every binarized weight (the preset's encoder/pooler kernels and the word-embedding table) is
stored as its sign plane in uint32 words (``<name>.signs``) plus its scale ``<name>.scale``
(``m`` of ``m·sign(W - μ)``: per output channel ``[N]``, or a scalar; for embeddings ``[V, 1]``
per row; exact zeros below).
The centre ``μ`` is not stored: it only decides the signs, which are stored. Kernels ``[K, N]``
are stored as rows ``[N, ceil(K/32)]`` (packed along K); embedding tables ``[V, E]`` as
``[V, ceil(E/32)]``. α, β, BiPFT estimators and every keep-in-FP tensor are stored as they are
(role ``alpha`` / ``beta`` / ``estimator`` / ``fp``), named by their "/"-joined Flax path, with
the encoder layers stacked: ``.../encoder/layers/<rest>`` holds ``layer_<i>/<rest>`` for every
``i`` on a leading axis (one container entry instead of one per layer).

Exact zeros (an entry equal to its centre, ``W == μ``, has sign 0) need a second plane in memory,
the nonzero mask (``PackedSigns.mask``). On disk a weight with zeros stores either that plane,
``<name>.mask`` (role ``packed_mask``, the shape of ``.signs``), or, when its zeros are few (the
list has fewer bytes than the plane: fewer zeros than the plane has words), their sorted flat
positions ``<name>.zeros`` (role ``packed_zeros``; int32, int64 past 2**31 entries) in the
logical ``[rows, k]`` matrix, ``[layers, rows, k]`` for stacked layers
(``fileformat.masks_to_zeros``). A stacked layer without zeros gets an all-ones plane when
another layer has some. Trained models have 0-2 zeros per tensor, so a list of a few bytes
replaces e.g. the 1.4 MiB plane of a 30522 x 384 word table. Loading rebuilds the identical
plane; files with ``.mask`` planes only (format versions 1 and 2) load unchanged.

Options:
* ``float16="pos_type"`` stores the position and token-type tables (the largest FP tensors,
  1.5 MiB in BERT-base) in half precision; ``float16="fp"`` stores every ``fp``-role tensor
  (those tables, LayerNorm, biases, FP heads) so; α, β, scales and estimators stay float32.
  Both change the numbers (``benchmarks/results/packed_model.md`` reports the logit error),
  unless the model was trained with ``quant.table_storage="float16"``: its forward already uses
  the fp16-rounded tables, so ``"pos_type"`` is then exact and is the default (``float16=None``
  follows the config; a ``"bfloat16"`` table is stored in float32, also exact).
* ``all_1bit=True`` also binarizes the position and token-type tables with the word-embedding
  binarizer of the preset. This is a *different* model from the fake-quant one (those tables are
  FP there); its forward equals the fake-quant forward run with those tables pre-binarized.
* The pretraining head's MLM decoder is tied to the *latent* FP word table, so a pretraining
  export also keeps that table in FP (``<word table>`` next to its packed ``.signs``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bipft_jax.infer.fileformat import (
    PackedFormatError,
    load_packed,
    masks_to_zeros,
    packed_entries,
    packed_from_entries,
    save_packed,
    zeros_to_masks,
)
from bipft_jax.infer.packing import PackedSigns, num_words, pack_bits, pack_matrix
from bipft_jax.model.config import BertConfig, from_config_dict, to_dict
from bipft_jax.model.params import (
    abstract_params,
    build_model,
    check_shapes,
    flat_params,
    num_scales,
    stacked_layer_axis,
    tensor_role,
    unstack_layers,
    weight_quant,
)
from bipft_jax.quant import ActQuant, WeightQuant, binarize_weight

KIND = "bipft-packed-model"
FLOAT16 = ("none", "pos_type", "fp")
_POS_TYPE = ("position_embeddings/embedding", "token_type_embeddings/embedding")
_LAYER = re.compile(r"(^|/)encoder/layer_(\d+)/")


class PackedModelError(ValueError):
    """A model or config that packed inference does not support."""


def _check_act(name: str, q: ActQuant, allowed: tuple[str, ...]) -> None:
    if q.method not in allowed:
        raise PackedModelError(
            f"packed inference: quant.{name}.method={q.method!r} is not supported "
            f"(supported: {allowed})"
        )
    if q.is_elastic and q.bits != 1:
        raise PackedModelError(
            f"packed inference: quant.{name}.bits={q.bits}: only 1-bit activations can be packed"
        )


def check_supported(config: BertConfig) -> None:
    """Raise :class:`PackedModelError` unless every binarizer of ``config`` can run packed."""
    q = config.quant
    if not (q.linear_weight.enabled or q.word_embedding.enabled or q.pooler_quant.weight.enabled):
        raise PackedModelError(
            "this config binarizes no weight (the 'fp' preset?): packed 1-bit inference needs a "
            "binary preset (bibert, bit, bipft)"
        )
    for name, wq in (
        ("linear_weight", q.linear_weight),
        ("pooler_quant.weight", q.pooler_quant.weight),
    ):
        if (
            wq.enabled
            and wq.channel_axis % 2 != 1
            and (wq.method == "bibert" or wq.scale == "channel")
        ):
            raise PackedModelError(
                f"packed inference: quant.{name} has a per-input-channel scale (channel_axis="
                f"{wq.channel_axis}), which cannot be factored out of the popcount"
            )
    for name, dq in (
        ("linear", q.linear),
        ("ffn_out", q.ffn_out),
        ("pooler_quant", q.pooler_quant),
    ):
        if dq.input.enabled and not dq.weight.enabled:
            raise PackedModelError(f"packed inference: quant.{name} binarizes the input only")
    signed = ("sign", "elastic_signed")
    for name, aq in (("linear_input", q.linear_input), ("ffn_out_input", q.ffn_out_input)):
        if q.linear_weight.enabled:
            _check_act(name, aq, (*signed, "elastic_unsigned"))
    if q.pooler_quant.weight.enabled:
        _check_act("pooler_quant.input", q.pooler_quant.input, (*signed, "elastic_unsigned"))
    _check_act("qkv", q.qkv, signed)
    _check_act("probs", q.probs, ("bool", "elastic_unsigned"))


def _weight_quant(name: str, config: BertConfig, all_1bit: bool) -> WeightQuant | None:
    """The binarizer of a tensor that is stored packed, or None (stored as it is)."""
    q = config.quant
    if all_1bit and name.endswith(_POS_TYPE) and q.word_embedding.enabled:
        return q.word_embedding
    return weight_quant(name, config)


def _resolve_float16(float16: str | None, config: BertConfig) -> str:
    """``None``: "pos_type" for a model trained with fp16 tables (exact), else "none"."""
    if float16 is None:
        return "pos_type" if config.quant.table_storage == "float16" else "none"
    if float16 not in FLOAT16:
        raise ValueError(f"float16 must be one of {FLOAT16}, got {float16!r}")
    return float16


def _storage_dtype(name: str, role: str, float16: str) -> str:
    half = role == "fp" and (
        float16 == "fp" or (float16 == "pos_type" and name.endswith(_POS_TYPE))
    )
    return "float16" if half else "float32"


def binarize_for_packing(value: np.ndarray, wq: WeightQuant) -> tuple[np.ndarray, np.ndarray]:
    """``(signs, scale)`` of ``quantize_weight(value, wq)`` computed by the model's own code
    (``binarize_weight``): ``signs`` in {-1, 0, 1}, ``scale`` the keepdims ``m`` the fake-quant
    forward multiplies by."""
    q = binarize_weight(jnp.asarray(value, jnp.float32), wq)
    if q.codes is None:
        raise ValueError(f"weight method {wq.method!r} has no binary codes to pack")
    return np.asarray(q.codes), np.asarray(q.scale)


def pack_model(
    params: Mapping[str, Any],
    config: BertConfig,
    *,
    preset: str | None = None,
    size: str | None = None,
    float16: str | None = None,
    all_1bit: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(tensors, manifest)`` of a packed model; ``manifest["tensors"]`` describes each tensor
    (``shape``, ``dtype``, ``role``, ``k`` for packed planes), as on disk."""
    float16 = _resolve_float16(float16, config)
    check_supported(config)
    head, num_labels = check_shapes(params, config)
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    for path, value in flat_params(params, config).items():
        name = "/".join(path)
        value = np.asarray(value, np.float32)
        wq = _weight_quant(name, config, all_1bit)
        if wq is not None:
            table = name.endswith("/embedding")
            signs, scale = binarize_for_packing(value, wq)
            packed = pack_matrix(signs, axis=-1 if table else 0)
            if not table:  # [1, N] (or [1, 1]) -> [N] or a scalar
                scale = scale.reshape(-1) if scale.size > 1 else scale.reshape(())
            arrays, planes = packed_entries(name, packed)
            tensors.update(arrays)
            meta.update(planes)
            tensors[f"{name}.scale"] = scale.astype(np.float32)
            meta[f"{name}.scale"] = {"role": "scale"}
            if not (head == "pretraining" and name.endswith("word_embeddings/embedding")):
                continue
            name = f"{name}.latent"  # the tied MLM decoder multiplies by the latent table
        role = tensor_role(name, config) if wq is None else "fp"
        tensors[name] = value.astype(_storage_dtype(name, role, float16))
        meta[name] = {"role": role}
    tensors, meta = masks_to_zeros(*_stack_layers(tensors, meta, config.num_layers))
    manifest = {
        "kind": KIND,
        "preset": preset,
        "size": size,
        "head": head,
        "num_labels": num_labels,
        "float16": float16,
        "all_1bit": all_1bit,
        "config": to_dict(config),
        "tensors": {
            n: {"shape": list(a.shape), "dtype": a.dtype.name, **meta[n]}
            for n, a in sorted(tensors.items())
        },
    }
    return tensors, manifest


def packed_bytes_estimate(
    config: BertConfig,
    head: str = "base",
    num_labels: int = 2,
    *,
    float16: str | None = None,
    all_1bit: bool = False,
) -> dict[str, int]:
    """Tensor bytes of :func:`pack_model`'s output computed from shapes alone (no params):
    ``{"packed_signs", "scale", "alpha", "beta", "estimator", "fp", "total"}``. Exact zeros are
    data, so not counted: a weight with ``z`` of them adds ``min(4·z, its mask plane)`` bytes
    (a ``.zeros`` list or a ``.mask`` plane the size of its ``.signs``). The file adds only the
    safetensors header and the manifest."""
    float16 = _resolve_float16(float16, config)
    check_supported(config)
    abstract = abstract_params(config, head, max(num_labels, 1))
    out = dict.fromkeys(("packed_signs", "scale", "alpha", "beta", "estimator", "fp"), 0)
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        name, shape = "/".join(path), tuple(leaf.shape)
        layers = 1
        if stacked_layer_axis(path) is not None:
            layers, shape = shape[0], shape[1:]
        wq = _weight_quant(name, config, all_1bit)
        if wq is None:
            role = tensor_role(name, config)
            nbytes = np.dtype(_storage_dtype(name, role, float16)).itemsize
            out[role] += layers * math.prod(shape) * nbytes
            continue
        table = name.endswith("/embedding")
        rows, k = (shape[0], shape[1]) if table else (shape[1], shape[0])
        out["packed_signs"] += layers * rows * num_words(k) * 4
        out["scale"] += layers * 4 * num_scales(wq, shape)
        if head == "pretraining" and name.endswith("word_embeddings/embedding"):
            nbytes = np.dtype(_storage_dtype(name, "fp", float16)).itemsize
            out["fp"] += math.prod(shape) * nbytes  # the latent table of the tied decoder
    out["total"] = sum(out.values())
    return out


def save_packed_model(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    *,
    compress: bool = False,
) -> Path:
    """Write the output of :func:`pack_model` with the versioned container (manifest + sha256);
    ``compress`` stores the float tensors losslessly compressed (``fileformat``)."""
    body = {k: v for k, v in manifest.items() if k != "tensors"}
    meta = {
        n: {k: v for k, v in rec.items() if k not in ("shape", "dtype")}
        for n, rec in manifest["tensors"].items()
    }
    return save_packed(path, tensors, body, meta, compress=compress)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedModel:
    """A runnable packed model: ``tensors`` maps names to float arrays or :class:`PackedSigns`
    (binarized weights, with their ``<name>.scale``); run it with ``packed_forward``."""

    tensors: dict[str, Any]
    config: BertConfig = dataclasses.field(metadata=dict(static=True))
    head: str = dataclasses.field(metadata=dict(static=True))
    num_labels: int = dataclasses.field(metadata=dict(static=True))

    @property
    def prefix(self) -> str:
        return "" if self.head == "base" else "bert/"

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray], manifest: Mapping[str, Any], where: str = "packed"
    ) -> PackedModel:
        """Build from :func:`pack_model` output or :func:`load_packed` output; checks the kind,
        the config and that every parameter the config implies is present."""
        if manifest.get("kind") != KIND:
            raise PackedFormatError(f"{where} is not a {KIND} (kind={manifest.get('kind')!r})")
        try:
            config = from_config_dict(manifest["config"])
            head, num_labels = str(manifest["head"]), int(manifest["num_labels"])
            build_model(config, head, max(num_labels, 1))  # checks the head name
        except (KeyError, TypeError, ValueError) as e:
            raise PackedFormatError(f"{where}: bad manifest config/head: {e}") from e
        tensors, records = zeros_to_masks(tensors, manifest["tensors"], where)
        tensors, records = _unstack_layers(tensors, records, where)
        out: dict[str, Any] = {}
        for name, rec in records.items():
            role = rec.get("role")
            if role == "packed_signs":
                base = name.removesuffix(".signs")
                p = packed_from_entries(tensors, {"tensors": records}, base)
                out[base] = PackedSigns(
                    jnp.asarray(p.signs), None if p.mask is None else jnp.asarray(p.mask), p.k
                )
            elif role != "packed_mask":
                out[name] = jnp.asarray(tensors[name], jnp.float32)
        missing = [
            n
            for n in _expected_names(config, head, num_labels)
            if n not in out or (isinstance(out[n], PackedSigns) and f"{n}.scale" not in out)
        ]
        if missing:
            raise PackedFormatError(f"{where}: missing tensors {missing[:8]}")
        return cls(out, config, head, num_labels)


def _stack_layers(
    tensors: dict[str, np.ndarray], meta: dict[str, dict[str, Any]], num_layers: int
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Stack ``.../encoder/layer_<i>/<rest>`` into ``.../encoder/layers/<rest>`` [L, ...]: one
    container entry per layer tensor instead of L (the manifest and safetensors header shrink
    ~L times). A mask plane present in some layers only is completed with all-ones planes."""
    groups: dict[str, dict[int, str]] = {}
    for name in tensors:
        m = _LAYER.search(name)
        if m:
            key = f"{name[: m.start()]}{m.group(1)}encoder/layers/{name[m.end() :]}"
            groups.setdefault(key, {})[int(m.group(2))] = name
    out = {n: a for n, a in tensors.items() if not _LAYER.search(n)}
    out_meta = {n: meta[n] for n in out}
    for key, names in groups.items():
        parts = []
        for i in range(num_layers):
            if i in names:
                parts.append(tensors[names[i]])
            else:  # a missing mask plane: that layer's weight has no zeros
                signs = tensors[names[next(iter(names))].removesuffix(".mask") + ".signs"]
                k = int(meta[names[next(iter(names))]]["k"])
                parts.append(pack_bits(np.ones(signs.shape[:-1] + (k,), bool)))
        out[key] = np.stack(parts)
        out_meta[key] = {**meta[names[next(iter(names))]], "layers": num_layers}
    return out, out_meta


def _unstack_layers(
    tensors: Mapping[str, np.ndarray], records: Mapping[str, Any], where: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`_stack_layers` (tensors and manifest records)."""
    out, out_rec = {}, {}
    for name, rec in records.items():
        if name not in tensors:
            raise PackedFormatError(f"{where}: tensor {name!r} is in the manifest but not stored")
        if "layers" not in rec:
            out[name], out_rec[name] = tensors[name], rec
            continue
        stacked = tensors[name]
        if stacked.shape[:1] != (rec["layers"],):
            raise PackedFormatError(
                f"{where}: {name!r} has shape {stacked.shape}, not L={rec['layers']}"
            )
        for i in range(rec["layers"]):
            layer_name = name.replace("encoder/layers/", f"encoder/layer_{i}/", 1)
            out[layer_name] = stacked[i]
            out_rec[layer_name] = {k: v for k, v in rec.items() if k != "layers"}
    return out, out_rec


def _expected_names(config: BertConfig, head: str, num_labels: int) -> list[str]:
    """ "/"-joined names (scanned layers unstacked) of every param the model has."""
    flat = traverse_util.flatten_dict(abstract_params(config, head, max(num_labels, 1)))
    return ["/".join(p) for p in unstack_layers(flat, config.num_layers)]


def load_packed_model(path: str | os.PathLike) -> PackedModel:
    """Load and verify (size, sha256, manifest) a directory written by :func:`save_packed_model`."""
    tensors, manifest = load_packed(path)
    return PackedModel.from_tensors(tensors, manifest, where=str(path))
