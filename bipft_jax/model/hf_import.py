"""Import Hugging Face BERT weights (local `config.json` + safetensors or `pytorch_model.bin`).

Into the FP model, or as the initialisation of a binary student: every FP weight is mapped; the
student-only parameters (α and β of the binarizers, BiPFT estimators, BiPFT's pooler LayerNorm)
stay at their init and α is then re-calibrated on a real batch (`calibrate_alphas`).

    hf_cfg, state = read_hf_checkpoint(model_dir)
    config = bert_config_from_hf(hf_cfg, quant=...)          # or a preset with matching sizes
    variables = model.init(rng, batch["input_ids"])
    variables, report = import_hf_weights(variables, state)
    variables = calibrate_alphas(model, variables, batch["input_ids"])   # binary students
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from bipft_jax.model.config import BertConfig
from bipft_jax.model.params import student_only

IGNORED_HF_KEYS = (
    "embeddings.position_ids",  # a buffer equal to arange(max_position)
    "cls.predictions.decoder.weight",  # tied to the word embedding
    "cls.predictions.decoder.bias",  # tied to cls.predictions.bias
)
_HF_ACT = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
_RENAMES = {"transform_dense": "transform.dense", "transform_LayerNorm": "transform.LayerNorm"}


class HFImportError(ValueError):
    """A checkpoint that does not fit the model (missing, unexpected or mis-shaped tensors)."""


def read_hf_checkpoint(model_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json as dict, {name: float32 array}) from a Hugging Face model directory."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    hf_config = json.loads(config_path.read_text())
    index = model_dir / "model.safetensors.index.json"
    if (model_dir / "model.safetensors").is_file():
        state = _load_safetensors([model_dir / "model.safetensors"])
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = _load_safetensors([model_dir / s for s in shards])
    elif (model_dir / "pytorch_model.bin").is_file():
        state = _load_torch_bin(model_dir / "pytorch_model.bin")
    else:
        raise FileNotFoundError(
            "no model.safetensors, model.safetensors.index.json or pytorch_model.bin "
            f"in {model_dir}"
        )
    return hf_config, state


def _load_safetensors(files: Sequence[Path]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs `torch` (pip install torch), "
            "or convert the checkpoint to model.safetensors"
        ) from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}


def bert_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> BertConfig:
    """A `BertConfig` with the sizes of a Hugging Face `config.json` (plus `overrides`)."""
    act = hf_config.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise HFImportError(f"config.json hidden_act {act!r} is not supported; use {list(_HF_ACT)}")
    kwargs = dict(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        intermediate_size=hf_config["intermediate_size"],
        max_position=hf_config.get("max_position_embeddings", 512),
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        hidden_dropout=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        hidden_act=_HF_ACT[act],
        initializer_range=hf_config.get("initializer_range", 0.02),
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


# The fields that make two configs' weights interchangeable (what `model.size = "hf"` copies).
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position", "type_vocab_size", "layer_norm_eps")  # fmt: skip


def sizes_of(config: BertConfig) -> dict[str, Any]:
    """``SIZE_FIELDS`` of a config, as ``get_model_config`` overrides."""
    return {k: getattr(config, k) for k in SIZE_FIELDS}


def hf_sizes(model_dir: str | Path) -> dict[str, Any]:
    """``sizes_of`` the model in a Hugging Face directory (its ``config.json``)."""
    hf_config, _ = read_hf_checkpoint(model_dir)
    return sizes_of(bert_config_from_hf(hf_config))


def normalize_hf_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip the `bert.` prefix, map old `gamma/beta` names, drop tied and buffer keys."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = key[len("bert.") :] if key.startswith("bert.") else key
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = np.asarray(value)
    if "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    for key in IGNORED_HF_KEYS:
        out.pop(key, None)
    return out


def hf_name(path: Sequence[str]) -> tuple[str, bool]:
    """Our parameter path -> (Hugging Face name without `bert.`, transpose?)."""
    parts = list(path[1:] if path and path[0] == "bert" else path)
    if parts and parts[0] in ("predictions", "seq_relationship"):
        parts[0] = f"cls.{parts[0]}"
    parts = [_RENAMES.get(p, p) for p in parts]
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts]
    leaf = parts[-1]
    parts[-1] = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join(parts), leaf == "kernel"


def _lookup(state: dict, path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[Any, list[str]]:
    """The value for one of our leaves (stacking layers for scanned params) and the keys used."""
    name, transpose = hf_name(path)
    if re.search(r"(^|\.)encoder\.layer\.(?!\d)", name):  # scanned: one leaf, all layers
        prefix, rest = name.split("encoder.layer.", 1)
        keys = [f"{prefix}encoder.layer.{i}.{rest}" for i in range(shape[0])]
        if not all(k in state for k in keys):
            return None, [k for k in keys if k not in state][:1]
        arrays = [state[k].T if transpose else state[k] for k in keys]
        return np.stack(arrays), keys
    if name not in state:
        return None, [name]
    return (state[name].T if transpose else state[name]), [name]


def import_hf_weights(
    variables: Mapping[str, Any],
    hf_state: Mapping[str, np.ndarray],
    *,
    ignore_missing: Sequence[str] = (),
    ignore_unexpected: Sequence[str] = (),
) -> tuple[dict, dict[str, list[str]]]:
    """Copy Hugging Face tensors into `variables["params"]` (a template from `model.init`).

    Keys may carry the `bert.` prefix or not. Student-only parameters (`params.student_only`) and
    paths starting with one of `ignore_missing` (e.g. "bert/pooler" for a `BertForMaskedLM`
    checkpoint) keep their init; HF keys starting with one of `ignore_unexpected` (e.g. "cls.")
    are skipped. Anything else that does not fit raises `HFImportError` listing every missing,
    unexpected and shape-mismatched key. Returns (new variables, report).
    """
    state = normalize_hf_state(hf_state)
    flat = traverse_util.flatten_dict(dict(variables["params"]), keep_empty_nodes=False)
    used: set[str] = set()
    missing, mismatched, kept = [], [], []
    new_flat = {}
    for path, leaf in flat.items():
        value = nn.unbox(leaf)
        joined = "/".join(path)
        array, keys = _lookup(state, path, np.shape(value))
        if array is None:
            if student_only(path) or joined.startswith(tuple(ignore_missing)):
                kept.append(joined)
            else:
                missing.append(f"{keys[0]} (for {joined})")
            new_flat[path] = leaf
            continue
        used.update(keys)
        if array.shape != np.shape(value):
            mismatched.append(f"{keys[0]}: checkpoint {array.shape} vs model {np.shape(value)}")
            new_flat[path] = leaf
            continue
        new = np.asarray(array, dtype=np.asarray(value).dtype)
        new_flat[path] = leaf.replace_boxed(new) if isinstance(leaf, nn.Partitioned) else new
    unexpected = sorted(
        k for k in state if k not in used and not k.startswith(tuple(ignore_unexpected))
    )
    if missing or unexpected or mismatched:
        lines = ["Hugging Face checkpoint does not fit the model:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise HFImportError("\n".join(lines))
    out = dict(variables)
    out["params"] = traverse_util.unflatten_dict(new_flat)
    report = {"loaded": sorted(used), "kept_at_init": kept, "ignored": sorted(set(state) - used)}
    return out, report
