"""Serialized `jax.export` (StableHLO) artifacts of the inference function.

    exp = export_inference(params, config, seq_len=128)          # batch size symbolic
    save_exported(exp, "model.jaxexport")        # + model.jaxexport.sha256 (sha256sum -c)
    # elsewhere, with only jax (+ flatbuffers), no model code:
    exp = jax.export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    out = exp.call(ids, types, mask)

Two containers: ``"jax"`` (default) is `Exported.serialize()`, JAX's own format, with a
`sha256sum`-compatible checksum file beside it that `load_exported` verifies (the format has no
checksum of its own: a file cut by a few bytes still deserializes); ``"bipft"`` is the
single-file checksummed container of `hlo_artifact` (JSON header + StableHLO bytecode).

The function takes `(input_ids, token_type_ids, attention_mask)` (int32 `[batch, seq_len]`),
or `(params, input_ids, token_type_ids, attention_mask)` with `params_as_argument=True`, and
returns the head's outputs as a dict: `logits` (classification), `mlm_logits` + `nsp_logits`
(pretraining) or `last_hidden_state` + `pooled` (encoder only). Params are baked in as constants
by default, so the artifact is self-contained.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from bipft_jax.export.hlo_artifact import MAGIC, load_artifact, save_artifact
from bipft_jax.model.config import BertConfig
from bipft_jax.model.params import build_model, check_shapes

CONTAINERS = ("jax", "bipft")
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


def save_exported(
    exported: jax_export.Exported, path: str | os.PathLike, container: str = "jax"
) -> Path:
    """Write the artifact in ``container`` "jax" (+ ``<path>.sha256``) or "bipft" (see above)."""
    if container not in CONTAINERS:
        raise ValueError(f"unknown artifact container {container!r}; choose one of {CONTAINERS}")
    if container == "bipft":
        return save_artifact(exported, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = bytes(exported.serialize())
    path.write_bytes(raw)
    _checksum_file(path).write_text(f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")
    return path


def load_exported(path: str | os.PathLike) -> jax_export.Exported:
    """Read an artifact of either container; call the result with ``.call(...)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported artifact not found: {path}")
    raw = path.read_bytes()
    if raw.startswith(MAGIC):
        return load_artifact(path)
    sums = _checksum_file(path)
    if sums.is_file():
        want = sums.read_text().split()[0] if sums.read_text().strip() else ""
        if hashlib.sha256(raw).hexdigest() != want:
            raise ValueError(f"{path} is corrupt or truncated (sha256 differs from {sums.name})")
    try:
        return jax_export.deserialize(bytearray(raw))
    except Exception as e:  # flatbuffers raises bare struct/IndexErrors on junk
        raise ValueError(f"{path} is not a jax.export artifact ({type(e).__name__}: {e})") from e


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")
