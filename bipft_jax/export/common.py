"""Shared export helpers: flatten a Linen param tree, unstack scanned layers, find the head."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from bipft_jax.model.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from bipft_jax.model.config import BertConfig

HEADS = ("pretraining", "classification", "base")


class ExportError(ValueError):
    """Params or config that cannot be exported (wrong shapes, unsupported features)."""


def _params(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept either `variables` (with a "params" key) or the params tree itself."""
    return tree.get("params", tree)


def flat_params(tree: Mapping[str, Any], config: BertConfig) -> dict[tuple[str, ...], np.ndarray]:
    """{path: float array} with boxes removed and scanned layers split into `layer_<i>`."""
    flat = traverse_util.flatten_dict(dict(_params(tree)), keep_empty_nodes=False)
    out: dict[tuple[str, ...], np.ndarray] = {}
    for path, leaf in flat.items():
        value = np.asarray(nn.unbox(leaf))
        if "encoder" in path and path[path.index("encoder") + 1] == "layer":
            i = path.index("encoder") + 1
            if value.shape[:1] != (config.num_layers,):
                raise ExportError(
                    f"scanned param {'/'.join(path)} has shape {value.shape}; expected a leading "
                    f"layer axis of {config.num_layers}"
                )
            for n in range(config.num_layers):
                out[(*path[:i], f"layer_{n}", *path[i + 1 :])] = value[n]
        else:
            out[path] = value
    return out


def detect_head(tree: Mapping[str, Any]) -> tuple[str, int]:
    """("pretraining" | "classification" | "base", num_labels) from the top-level param names."""
    top = set(_params(tree))
    if "bert" not in top:
        if {"embeddings", "encoder"} <= top:
            return "base", 0
        raise ExportError(f"not a BERT param tree: top-level keys {sorted(top)}")
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
    raise ExportError(f"unknown head {head!r}; choose one of {HEADS}")


def check_shapes(tree: Mapping[str, Any], config: BertConfig) -> tuple[str, int]:
    """Compare every param with the shapes `config` implies; raise listing every mismatch."""
    import jax
    import jax.numpy as jnp

    head, num_labels = detect_head(tree)
    model = build_model(config, head, max(num_labels, 1))
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"]
    want = {k: tuple(v.shape) for k, v in _flat(abstract).items()}
    got = {k: tuple(np.shape(v)) for k, v in _flat(_params(tree)).items()}
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
    problems += [
        f"{k}: params {got[k]} vs config {want[k]}"
        for k in sorted(set(want) & set(got))
        if want[k] != got[k]
    ]
    if problems:
        raise ExportError(
            f"params do not match the config ({len(problems)} problem(s)): "
            + "; ".join(problems[:12])
            + (" ..." if len(problems) > 12 else "")
        )
    return head, num_labels


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(dict(tree), keep_empty_nodes=False)
    return {"/".join(k): nn.unbox(v) for k, v in flat.items()}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "2GB", "500MB", "10KiB" (HF conventions)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use e.g. 2GB, 500MB, 1GiB or bytes")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * base**power)
