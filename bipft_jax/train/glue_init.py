"""Models for fine-tuning: stage specs (`fp`, `bit`, `bit:a2`, ...), configs, initial weights.

A stage spec is `<preset>[:a<bits>]`: a method preset of `bipft_jax.model.presets` and, for the
elastic presets, the activation bit width of every elastic `ActQuant` (BiT's W1A2 = `bit:a2`).
Initial weights come from scratch, a Hugging Face BERT directory, or an Orbax checkpoint of our
pretraining / fine-tuning runs; anything that does not fit the config raises `InitError` listing
every mismatched parameter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.model.config import BertConfig
from bipft_jax.model.hf_import import bert_config_from_hf, import_hf_weights, read_hf_checkpoint
from bipft_jax.model.presets import METHODS, get_model_config
from bipft_jax.quant.layers import calibrate_alphas

INIT_KINDS = ("scratch", "hf", "checkpoint")
_ACT_FIELDS = ("linear_input", "ffn_out_input", "qkv", "probs")
_SIZE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
              "max_position", "type_vocab_size")  # fmt: skip


class InitError(ValueError):
    """An init source that is missing or does not fit the model config."""


@dataclasses.dataclass(frozen=True)
class StageSpec:
    method: str
    act_bits: int | None = None

    @property
    def name(self) -> str:
        return self.method if self.act_bits is None else f"{self.method}_a{self.act_bits}"


def parse_stage(text: str) -> StageSpec:
    """`"bit"` / `"bit:a2"` → StageSpec; errors name the allowed forms."""
    method, _, bits = text.strip().partition(":")
    if method not in METHODS:
        raise ValueError(f"stage {text!r}: unknown preset {method!r}; choose one of {METHODS}")
    if not bits:
        return StageSpec(method)
    if not (bits.startswith("a") and bits[1:].isdigit()):
        raise ValueError(f"stage {text!r}: expected '<preset>:a<bits>', e.g. 'bit:a2'")
    return StageSpec(method, int(bits[1:]))


def parse_chain(text: str) -> list[StageSpec]:
    """`"fp,bit:a2,bit"` → stages; stage i>0 is distilled from stage i-1."""
    stages = [parse_stage(s) for s in text.split(",") if s.strip()]
    if not stages:
        raise ValueError("config key 'chain' is empty; give e.g. 'bipft' or 'fp,bit'")
    return stages


def _hf_sizes(hf_dir: str) -> dict[str, Any]:
    hf_cfg, _ = read_hf_checkpoint(hf_dir)
    sized = bert_config_from_hf(hf_cfg)
    return {k: getattr(sized, k) for k in (*_SIZE_KEYS, "layer_norm_eps")}


def model_config(stage: StageSpec, size: str, hf_dir: str | None = None, **extra) -> BertConfig:
    """The stage's preset at `size` (or at the sizes of the HF directory when `size == "hf"`)."""
    overrides: dict[str, Any] = dict(extra)
    if size == "hf":
        if not hf_dir:
            raise ValueError("model.size='hf' needs init.path = a Hugging Face BERT directory")
        overrides.update(_hf_sizes(hf_dir))
        size = "base"
    if stage.act_bits is not None:
        if stage.method not in ("bit", "bipft"):
            raise ValueError(f"stage {stage.name}: act bits need an elastic preset (bit, bipft)")
        for field in _ACT_FIELDS:
            overrides[f"quant.{field}.bits"] = stage.act_bits
    return get_model_config(stage.method, size, **overrides)


def init_params(
    model: BertForSequenceClassification, batch: dict[str, np.ndarray], seed: int
) -> dict:
    """Fresh (unboxed) params from `model.init` on a real batch."""
    variables = jax.jit(model.init)(
        jax.random.PRNGKey(seed),
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    return nn.meta.unbox(variables["params"])


def _shapes(tree: Any) -> dict[str, tuple]:
    flat = traverse_util.flatten_dict(tree)
    return {"/".join(map(str, k)): tuple(np.shape(v)) for k, v in flat.items()}


def merge_encoder(params: dict, source: dict, what: str) -> dict:
    """Copy every `bert/...` leaf of `source` into `params`; any shape mismatch raises InitError.

    Leaves of the model missing from `source` keep their init only if they are student-only
    (binarizer α/β, estimators, BiPFT pooler LN) or the classifier head.
    """
    if "bert" not in source:
        raise InitError(f"{what}: no 'bert' parameters (top-level keys: {sorted(source)})")
    want, have = _shapes(params["bert"]), _shapes(source["bert"])
    bad = [f"bert/{k}: checkpoint {have[k]} vs config {s}" for k, s in want.items()
           if k in have and have[k] != s]  # fmt: skip
    if bad:
        raise InitError(
            f"{what} does not match the model config ({len(bad)} shape mismatches): "
            + "; ".join(bad[:8])
            + (" ..." if len(bad) > 8 else "")
        )
    flat = traverse_util.flatten_dict(params["bert"])
    src = traverse_util.flatten_dict(source["bert"])
    merged = {k: (jnp.asarray(src[k], v.dtype) if k in src else v) for k, v in flat.items()}
    out = dict(params)
    out["bert"] = traverse_util.unflatten_dict(merged)
    if "classifier" in source and _shapes(source["classifier"]) == _shapes(params["classifier"]):
        out["classifier"] = source["classifier"]
    return out


def restore_params(path: str) -> dict:
    """Params of the newest step of an Orbax checkpoint directory (ours: `state.params`)."""
    from bipft_jax.train.checkpoint import CheckpointManager

    root = Path(path)
    workdir = root.parent if root.name == "checkpoints" else root
    if not (workdir / "checkpoints").is_dir():
        raise InitError(f"init checkpoint not found: {workdir}/checkpoints does not exist")
    with CheckpointManager(workdir, async_save=False, read_only=True) as mngr:
        state, _ = mngr.restore()
    params = state.get("params", state) if isinstance(state, dict) else state
    return jax.tree.map(np.asarray, dict(params))


def load_initial_params(
    model: BertForSequenceClassification,
    batch: dict[str, np.ndarray],
    seed: int,
    kind: str,
    path: str = "",
) -> tuple[dict, str]:
    """(params, description) from `kind` in INIT_KINDS; binary students get α calibrated."""
    if kind not in INIT_KINDS:
        raise ValueError(f"config key 'init.kind': unknown {kind!r}; choose one of {INIT_KINDS}")
    params = init_params(model, batch, seed)
    if kind == "scratch":
        return params, "scratch"
    if not path:
        raise ValueError(f"config key 'init.path' is required with init.kind={kind!r}")
    if kind == "hf":
        if not Path(path).is_dir():
            raise InitError(f"init.path: Hugging Face directory not found: {path}")
        _, state = read_hf_checkpoint(path)
        try:
            variables, _ = import_hf_weights(
                {"params": params},
                state,
                ignore_missing=("classifier", "bert/pooler"),
                ignore_unexpected=("cls.", "classifier."),
            )
        except ValueError as e:
            raise InitError(f"init.path {path}: {e}") from None
        params = variables["params"]
    else:
        params = merge_encoder(params, restore_params(path), f"init checkpoint {path}")
    return calibrate(model, params, batch), f"{kind}:{path}"


def calibrate(model: BertForSequenceClassification, params: dict, batch: dict) -> dict:
    """Re-derive elastic α from a real batch after loading FP weights (no-op for FP models)."""
    if model.config.quant == type(model.config.quant)():
        return params
    fn = jax.jit(lambda v, *args: calibrate_alphas(model, v, *args))
    new = fn(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    return nn.meta.unbox(new["params"])
