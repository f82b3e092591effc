"""Export an FP model to the Hugging Face layout: safetensors (+ index), `config.json`, vocab.

Names come from `bipft_jax.model.hf_import.hf_name` (our path -> HF name, transpose flag), so
import and export share one table. Kernels are transposed to `[out, in]`, scanned layers are
unstacked, and the MLM decoder is tied to the word embedding (HF re-ties it on load).

    export_hf(variables, config, "out/", vocab_file="vocab.txt")
    transformers.BertForMaskedLM.from_pretrained("out/")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bipft_jax.infer.fileformat import save_safetensors
from bipft_jax.model.config import BertConfig
from bipft_jax.model.hf_import import hf_name
from bipft_jax.model.params import ParamsError, check_shapes, flat_params, student_only

_ACT_TO_HF = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}
_ARCH = {
    "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
    "base": "BertModel",
}
SAFE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class ExportError(ParamsError):
    """A config or parameter that a plain Hugging Face BERT cannot hold."""


def binary_features(config: BertConfig) -> list[str]:
    """The QuantSpec choices a plain Hugging Face BERT cannot express (empty for FP)."""
    q = config.quant
    found = [
        name
        for name, part in (
            ("word_embedding", q.word_embedding),
            ("linear_weight", q.linear_weight),
            ("linear_input", q.linear_input),
            ("ffn_out_input", q.ffn_out_input),
            ("qkv", q.qkv),
            ("probs", q.probs),
            ("pooler_quant.weight", q.pooler_quant.weight),
            ("pooler_quant.input", q.pooler_quant.input),
        )
        if part.enabled
    ]
    if q.attention != "softmax":
        found.append(f"attention={q.attention}")
    if q.pooler != "dense_tanh":
        found.append(f"pooler={q.pooler}")
    if q.estimators.enabled:
        found.append("estimators")
    if q.mlm_transform_act != config.hidden_act:
        found.append(f"mlm_transform_act={q.mlm_transform_act} != hidden_act")
    return found


def _check_fp(config: BertConfig) -> None:
    found = binary_features(config)
    if found:
        raise ExportError(
            f"export_hf writes a full-precision BERT; this config uses {found} "
            "(use export_binary for binary presets)"
        )
    if config.hidden_act not in _ACT_TO_HF:
        raise ExportError(f"hidden_act {config.hidden_act!r} has no Hugging Face name")


def hf_state_dict(params: Mapping[str, Any], config: BertConfig) -> dict[str, np.ndarray]:
    """{Hugging Face name: array} of an FP param tree (kernels transposed, layers unstacked)."""
    _check_fp(config)
    head, _ = check_shapes(params, config)
    state: dict[str, np.ndarray] = {}
    for path, value in flat_params(params, config).items():
        if student_only(path):
            raise ExportError(
                f"{'/'.join(path)} has no Hugging Face counterpart (binary-only parameter)"
            )
        name, transpose = hf_name(path)
        if path[0] == "bert":
            name = f"bert.{name}"
        state[name] = np.ascontiguousarray(value.T if transpose else value, np.float32)
    # The MLM decoder is tied (`tie_word_embeddings`): HF re-ties `cls.predictions.decoder.*`
    # to the word embedding and `cls.predictions.bias` on load, as its own save_pretrained does.
    return state


def hf_config_dict(config: BertConfig, head: str, num_labels: int = 2) -> dict[str, Any]:
    """`config.json` contents for `transformers.BertConfig`."""
    out: dict[str, Any] = {
        "architectures": [_ARCH[head]],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": _ACT_TO_HF[config.hidden_act],
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "classifier_dropout": config.classifier_dropout,
        "max_position_embeddings": config.max_position,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    if head == "classification":
        out["num_labels"] = num_labels
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        if num_labels == 1:
            out["problem_type"] = "regression"
    return out


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


def _shards(state: Mapping[str, np.ndarray], limit: int) -> list[dict[str, np.ndarray]]:
    """Greedy split in name order; a tensor larger than `limit` gets a shard of its own."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].nbytes
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    return shards


def export_hf(
    params: Mapping[str, Any],
    config: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    max_shard_size: int | str = "2GB",
) -> Path:
    """Write an FP model (`variables` or its `params`) as a Hugging Face model directory.

    Files: `model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index
    .json` when the tensors exceed `max_shard_size`; `config.json`; with `vocab_file`, the
    tokenizer files (`hf_tokenizer.TOKENIZER_FILES`: AutoTokenizer loads them).
    """
    state = hf_state_dict(params, config)
    head, num_labels = check_shapes(params, config)
    if vocab_file is not None and not Path(vocab_file).is_file():
        raise FileNotFoundError(f"vocab file not found: {vocab_file}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / SAFE_NAME, out / INDEX_NAME, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    shards = _shards(state, parse_size(max_shard_size))
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_safetensors(shards[0], out / SAFE_NAME, metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(shard, out / fname, metadata=meta)
            weight_map.update({k: fname for k in shard})
        index = {
            "metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    hf_cfg = hf_config_dict(config, head, num_labels)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    if vocab_file is not None:
        from bipft_jax.export.hf_tokenizer import write_tokenizer

        write_tokenizer(Path(vocab_file), out, config.vocab_size, config.max_position)
    return out
