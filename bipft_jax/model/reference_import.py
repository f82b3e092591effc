"""Import the PyTorch state dicts of the reference code (BiPFT, BiT, BiBERT) into our params.

The references keep Hugging Face BERT's names for every FP tensor, so `hf_import` maps those;
this module renames what the references add (methods.md §11):
  α  `<linear>.input_clip_val`             -> `<linear>/input_quant/alpha`   (BiT, BiPFT)
     `attention.self.clip_{query,key,value}` -> `attention/self/{query,key,value}_quant/alpha`
     `attention.self.clip_attn`             -> `attention/self/probs_quant/alpha`
  β  `<linear>.move.bias`                   -> `<linear>/input_quant/shift/bias`
BiPFT's estimators `attention.self.{q_p,k_p,q_m,k_m,v_p}` and its pooler LayerNorm have the
same names in both layouts. Tensors the reference stores but never uses are dropped by name:
BiT's `move_{q,k,v}` (overwritten before use, `modeling_bert_quant.py:225-231`), BiBERT's
`scale`, `gate`, `weight_clip_val`, `act_clip_val` and `clip_{query,key,value,attn}` (buffers
of its unused k-bit path). Anything else unknown, and every parameter of the model the state
dict lacks, raises `ReferenceImportError` listing the keys by their reference names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from bipft_jax.model.hf_import import (
    HFImportError,
    hf_name,
    import_hf_weights,
    normalize_hf_state,
)
from bipft_jax.model.params import student_only

REFERENCES = ("bipft", "bit", "bibert")
# (reference name pattern, our Hugging-Face-style name) for α and β.
_ELASTIC = (
    (r"\.input_clip_val$", ".input_quant.alpha"),
    (r"\.move\.bias$", ".input_quant.shift.bias"),
    (r"attention\.self\.clip_(query|key|value)$", r"attention.self.\1_quant.alpha"),
    (r"attention\.self\.clip_attn$", "attention.self.probs_quant.alpha"),
)
_RENAMES = {"bipft": _ELASTIC, "bit": _ELASTIC, "bibert": ()}
_UNUSED = {
    "bipft": (),
    "bit": (r"attention\.self\.move_[qkv]\.bias$",),
    "bibert": (
        r"\.(weight_clip_val|act_clip_val|scale|gate)$",
        r"attention\.self\.clip_(query|key|value|attn)$",
    ),
}
_BACK = (  # our names in an error message -> the reference's
    (r"\b([\w.]+)\.input_quant\.shift\.bias\b", r"\1.move.bias"),
    (r"\b([\w.]+)\.input_quant\.alpha\b", r"\1.input_clip_val"),
    (r"attention\.self\.probs_quant\.alpha\b", "attention.self.clip_attn"),
    (r"attention\.self\.(query|key|value)_quant\.alpha\b", r"attention.self.clip_\1"),
)


class ReferenceImportError(ValueError):
    """A reference state dict that does not fit the model config."""


def _check_kind(kind: str) -> None:
    if kind not in REFERENCES:
        raise ReferenceImportError(f"unknown reference {kind!r}; choose one of {REFERENCES}")


def strip_wrappers(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drop a `module.` prefix (nn.DataParallel) and convert values to float32 arrays."""
    out = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        out[name] = np.asarray(value, np.float32)
    return out


def to_hf_names(kind: str, state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(state with α/β renamed for `hf_import`, the unused reference keys that were dropped)."""
    _check_kind(kind)
    out: dict[str, np.ndarray] = {}
    dropped = []
    for key, value in strip_wrappers(state).items():
        if any(re.search(p, key) for p in _UNUSED[kind]):
            dropped.append(key)
            continue
        name = key
        for pattern, new in _RENAMES[kind]:
            name = re.sub(pattern, new, name)
        out[name] = value.reshape(()) if name.endswith(".alpha") and value.size == 1 else value
    return out, sorted(dropped)


def reference_names(text: str) -> str:
    """Our α/β names in `text` written back as the reference's."""
    for pattern, old in _BACK:
        text = re.sub(pattern, old, text)
    return text


def _lacking(variables: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> list[str]:
    """Reference names of the student-only parameters (α, β, estimators, pooler LN) that the
    state lacks: `hf_import` would keep them at init silently."""
    have = set(normalize_hf_state(state))
    out = []
    for path in traverse_util.flatten_dict(dict(variables["params"]), keep_empty_nodes=False):
        name, _ = hf_name(path)
        if student_only(path) and name not in have:
            out.append(reference_names(name))
    return out


def import_reference(
    kind: str, variables: Mapping[str, Any], state: Mapping[str, Any]
) -> tuple[dict, dict[str, list[str]]]:
    """Copy a reference state dict into `variables["params"]` (a template from `model.init` of
    the matching preset). Every model parameter must come from the state dict (no α/β left at
    init). Returns (new variables, report with `loaded` and `dropped` reference keys)."""
    renamed, dropped = to_hf_names(kind, state)
    lacking = _lacking(variables, renamed)
    note = f"\n  missing ({len(lacking)}): " + ", ".join(lacking) if lacking else ""
    try:
        new, report = import_hf_weights(variables, renamed)
    except HFImportError as e:
        message = str(e).replace("Hugging Face checkpoint", f"{kind} reference checkpoint", 1)
        raise ReferenceImportError(reference_names(message) + note) from None
    if lacking:
        raise ReferenceImportError(f"{kind} reference checkpoint does not fit the model:{note}")
    return new, {"loaded": [reference_names(k) for k in report["loaded"]], "dropped": dropped}


def infer_sizes(state: Mapping[str, Any]) -> dict[str, int]:
    """`BertConfig` sizes readable from tensor shapes (all but `num_heads`)."""
    names = {k.removeprefix("module.").removeprefix("bert."): v for k, v in state.items()}

    def shape(name: str) -> tuple[int, ...]:
        if name not in names:
            raise ReferenceImportError(f"cannot infer the model size: no {name!r} in the state")
        return tuple(np.shape(names[name]))

    layers = {int(m.group(1)) for k in names if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    vocab, hidden = shape("embeddings.word_embeddings.weight")
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=max(layers) + 1 if layers else 0,
        intermediate_size=shape("encoder.layer.0.intermediate.dense.weight")[0],
        max_position=shape("embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
    )
