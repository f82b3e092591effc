"""Serialized `jax.export` (StableHLO) artifacts of the inference function.

    exp = export_inference(params, config, seq_len=128)          # batch size symbolic
    save_exported(exp, "model.jaxexport")
    # elsewhere, with only jax + numpy (`hlo_artifact.py` is standalone, no model code):
    out = hlo_artifact.load_artifact("model.jaxexport").call(ids, types, mask)

The function takes `(input_ids, token_type_ids, attention_mask)` (int32 `[batch, seq_len]`),
or `(params, input_ids, token_type_ids, attention_mask)` with `params_as_argument=True`, and
returns the head's outputs as a dict: `logits` (classification), `mlm_logits` + `nsp_logits`
(pretraining) or `last_hidden_state` + `pooled` (encoder only). Params are baked in as constants
by default, so the artifact is self-contained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from bipft_jax.export.common import build_model, check_shapes
from bipft_jax.export.hlo_artifact import load_artifact, save_artifact
from bipft_jax.model.config import BertConfig

OUTPUTS = {
    "classification": ("logits",),
    "pretraining": ("mlm_logits", "nsp_logits"),
    "base": ("last_hidden_state", "pooled"),
}


def params_for_call(params: Mapping[str, Any]) -> Any:
    """Unboxed numpy params (original, possibly scanned, structure): the first argument of a
    `params_as_argument=True` artifact."""
    import flax.linen as nn

    return jax.tree.map(np.asarray, nn.unbox(dict(params.get("params", params))))


def export_inference(
    params: Mapping[str, Any],
    config: BertConfig,
    seq_len: int,
    batch_size: int | None = None,
    params_as_argument: bool = False,
    platforms: Sequence[str] | None = None,
) -> jax_export.Exported:
    """`jax.export` of the deterministic forward pass; `batch_size=None` makes it symbolic."""
    if seq_len > config.max_position:
        raise ValueError(
            f"seq_len {seq_len} exceeds the model's max_position {config.max_position}"
        )
    head, num_labels = check_shapes(params, config)
    model = build_model(config, head, max(num_labels, 1))
    tree = params_for_call(params)
    keys = OUTPUTS[head]

    def forward(p, input_ids, token_type_ids, attention_mask):
        out = model.apply({"params": p}, input_ids, attention_mask, token_type_ids)
        return {k: out[k] for k in keys}

    batch: Any = jax_export.symbolic_shape("batch")[0] if batch_size is None else batch_size
    ids = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    plats = None if platforms is None else tuple(platforms)
    if params_as_argument:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
        return jax_export.export(jax.jit(forward), platforms=plats)(abstract, ids, ids, ids)
    baked = lambda a, b, c: forward(tree, a, b, c)
    return jax_export.export(jax.jit(baked), platforms=plats)(ids, ids, ids)


def save_exported(exported: jax_export.Exported, path: str | os.PathLike) -> Path:
    """Write the artifact (format: `bipft_jax.export.hlo_artifact`)."""
    return save_artifact(exported, path)


def load_exported(path: str | os.PathLike) -> jax_export.Exported:
    """Read an artifact written by `save_exported`; call it with `.call(...)`."""
    return load_artifact(path)
