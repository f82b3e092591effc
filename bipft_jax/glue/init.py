"""Models for fine-tuning: stage specs (`fp`, `bit`, `bit:a2`, ...), configs, initial weights.

A stage spec is `<preset>[:a<bits>]`: a method preset of `bipft_jax.model.presets` and, for the
elastic presets, the activation bit width of every elastic `ActQuant` (BiT's W1A2 = `bit:a2`).
Initial weights come from scratch, a Hugging Face BERT directory, or an Orbax checkpoint of our
pretraining / fine-tuning runs; anything that does not fit the config raises `InitError` listing
every mismatched parameter.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bipft_jax import paths
from bipft_jax.checkpoint import (
    CheckpointNotFoundError,
    ParamsMismatchError,
    restore_params,
    transfer_params,
)
from bipft_jax.checkpoint.model_card import find_model_card, read_model_card
from bipft_jax.checkpoint.transfer import differences, leaf_shapes
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.model.config import BertConfig
from bipft_jax.model.hf_import import hf_sizes, import_hf_weights, read_hf_checkpoint, sizes_of
from bipft_jax.model.presets import (
    METHODS,
    act_bits_overrides,
    apply_overrides,
    get_model_config,
)
from bipft_jax.quant.layers import calibrate_alphas

INIT_KINDS = ("scratch", "hf", "checkpoint")


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


def model_config(
    stage: StageSpec,
    size: str,
    hf_dir: str | None = None,
    *,
    pooler_follows_bits: bool = True,
    **extra,
) -> BertConfig:
    """The stage's preset at `size` (or at the sizes of the HF directory when `size == "hf"`).

    A stage's activation bits (`bit:a2`) apply to every elastic activation binarizer and, with
    `pooler_follows_bits` (BiT's reference, `modeling_bert_quant.py:377-382`), to the pooler
    input as well; `False` leaves the pooler at the preset's A1.
    """
    overrides: dict[str, Any] = dict(extra)
    if size == "hf":
        if not hf_dir:
            raise ValueError("model.size='hf' needs init.path = a Hugging Face BERT directory")
        overrides.update(hf_sizes(hf_dir))
        size = "base"
    if stage.act_bits is not None:
        if stage.method not in ("bit", "bipft"):
            raise ValueError(f"stage {stage.name}: act bits need an elastic preset (bit, bipft)")
        overrides.update(act_bits_overrides(stage.act_bits, pooler_follows_bits))
    return get_model_config(stage.method, size, **overrides)


def stage_model_config(cfg: Any, stage: StageSpec) -> BertConfig:
    """A stage's model config from a `bipft finetune` config (keys `model.*`, `init.*`).

    `model.size = "hf"` takes the sizes of `init.path`: a Hugging Face directory (or "minilm"),
    or, with `init.kind = checkpoint`, the model card beside one of our checkpoints.
    `model.pooler_follows_stage_bits` absent (a run saved before the key) = the pooler stayed
    at A1; `model.padding_idx < 0` = no padding row; `model.overrides`: nested BertConfig /
    QuantSpec fields.
    """
    m = cfg.model
    extra: dict[str, Any] = {"num_layers": m.num_layers} if m.num_layers > 0 else {}
    pad = m.get("padding_idx", 0)
    extra["padding_idx"] = None if pad is None or pad < 0 else pad
    extra["dtype"] = m.get("dtype", "float32")
    follow = bool(m.get("pooler_follows_stage_bits", False))
    size, hf_dir = m.size, None
    if size == "hf" and cfg.init.kind == "checkpoint":
        source, _, _ = read_model_card(find_model_card(cfg.init.path))
        size = "base"
        extra = {**sizes_of(source), **extra}
    elif size == "hf":
        hf_dir = paths.resolve_model_dir(cfg.init.path) if cfg.init.path else None
    config = model_config(stage, size, hf_dir, pooler_follows_bits=follow, **extra)
    return apply_overrides(config, m.get("overrides", ()))


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


def merge_encoder(
    params: dict, source: dict, what: str, classifier: bool = True
) -> tuple[dict, set[str]]:
    """`params` with every leaf that `source` holds copied in (`transfer_params`: any shape
    mismatch raises InitError listing each one).

    Leaves of the model missing from `source` keep their init (binarizer α/β, estimators, BiPFT
    pooler LN of an FP source; the classifier of a pretraining checkpoint); source leaves the
    model lacks (pretraining heads) are left out. With `classifier` the source's classifier is
    copied too (the references start from it; one of another shape is an error: set
    `init.load_classifier=False`). Returns the merged params and the paths ("bert/.../alpha")
    of the leaves that kept their init.
    """
    if "bert" not in source:
        raise InitError(f"{what}: no 'bert' parameters (top-level keys: {sorted(source)})")
    try:
        skip = () if classifier else ("classifier",)
        names = ("model config", "checkpoint")
        out, report = transfer_params(params, source, what=what, skip=skip, names=names)
    except ParamsMismatchError as e:
        shapes, _, _ = differences(leaf_shapes(params), leaf_shapes(source))
        head = all(k.startswith("classifier/") for k in shapes)  # another task's classifier
        raise InitError(f"{e}" + ("; set init.load_classifier=False" if head else "")) from None
    # Heads may go, and whole layers past a shallower `model.num_layers` (a deliberate cut);
    # any other encoder array left over means another method or config.
    layer = re.compile(r"bert/encoder/layer_(\d+)/")
    kept_layers = {m.group(1) for k in leaf_shapes(params) if (m := layer.match(k))}

    def cut_layer(k: str) -> bool:
        m = layer.match(k)
        return bool(kept_layers and m and m.group(1) not in kept_layers)

    dropped = [k for k in report.unused if k.startswith("bert/") and not cut_layer(k)]
    if dropped:
        raise InitError(
            f"{what}: {len(dropped)} encoder arrays of the checkpoint have no place in this model "
            f"(e.g. {', '.join(dropped[:3])}): it was trained with another method or config "
            "(chain / model.method); pick the matching one"
        )
    return out, set(report.kept)


def load_initial_params(
    model: BertForSequenceClassification,
    batch: dict[str, np.ndarray],
    seed: int,
    kind: str,
    path: str = "",
    *,
    keep_alpha: bool = True,
    load_classifier: bool = True,
    step: int | None = None,
) -> tuple[dict, str]:
    """(params, description) from `kind` in INIT_KINDS.

    keep_alpha: quantizer parameters (α, β) and estimators that the source holds stay as loaded
    (a binary-pretrained checkpoint keeps its learned α, as the references' lazy α init does);
    only parameters new to the model (a binary student initialised from FP weights) are
    calibrated on ``batch``. False re-derives every α from ``batch``.
    load_classifier: take the source's classifier when it has one of the right shape (BiT and
    BiBERT start the student from the fine-tuned teacher's directory, classifier included).
    """
    if kind not in INIT_KINDS:
        raise ValueError(f"config key 'init.kind': unknown {kind!r}; choose one of {INIT_KINDS}")
    params = init_params(model, batch, seed)
    if kind == "scratch":
        return params, "scratch"
    if not path:
        raise ValueError(f"config key 'init.path' is required with init.kind={kind!r}")
    if kind == "hf":
        if path != "minilm" and not Path(path).is_dir():
            raise InitError(f"init.path: Hugging Face directory not found: {path}")
        path = paths.resolve_model_dir(path)
        _, state = read_hf_checkpoint(path)
        if not load_classifier:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        try:
            variables, report = import_hf_weights(
                {"params": params},
                state,
                ignore_missing=("classifier", "bert/pooler"),
                ignore_unexpected=("cls.",),
            )
        except ValueError as e:
            raise InitError(f"init.path {path}: {e}") from None
        params, new = variables["params"], set(report["kept_at_init"])
    else:
        try:
            source = restore_params(path, step)
        except CheckpointNotFoundError as e:
            raise InitError(f"init {e}") from None
        params, new = merge_encoder(params, source, f"init checkpoint {path}", load_classifier)
    return init_alphas(model, params, batch, new, keep_alpha), f"{kind}:{path}"


def init_alphas(
    model: BertForSequenceClassification,
    params: dict,
    batch: dict,
    new: set[str],
    keep_alpha: bool = True,
) -> dict:
    """Calibrate α from ``batch``: only the parameters in ``new`` (not loaded from the source)
    with ``keep_alpha``, else every α (BiPFT `utils_quant.py:51,116` skips the lazy init of a
    loaded α ≠ 1.0)."""
    return calibrate(model, params, batch, only=new if keep_alpha else None)


def calibrate(
    model: BertForSequenceClassification, params: dict, batch: dict, only: set[str] | None = None
) -> dict:
    """Re-derive elastic α from a real batch (no-op for FP models).

    ``only``: the paths ("bert/.../alpha") that may change (the parameters new to the model);
    every other leaf keeps its value. ``None`` recalibrates every α.
    """
    if model.config.quant == type(model.config.quant)() or only == set():
        return params
    fn = jax.jit(lambda v, *args: calibrate_alphas(model, v, *args))
    new = fn(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    new = nn.meta.unbox(new["params"])
    if only is None:
        return new
    flat_old, flat_new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    kept = {k: (flat_new[k] if "/".join(k) in only else v) for k, v in flat_old.items()}
    return traverse_util.unflatten_dict(kept)
