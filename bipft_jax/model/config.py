"""Model configuration: `BertConfig` (sizes, numerics) and `QuantSpec` (every method flag).

A paper is a `QuantSpec` (see `bipft_jax/presets/{fp,bibert,bit,bipft}.py`); the model code never
branches on a paper's name. Both dataclasses are frozen (hashable), so they can be Flax module
attributes. `from_config_dict` builds them from the `ml_collections.ConfigDict` of a preset and
reports unknown or misspelled keys by their dotted path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from bipft_jax.quant import ActQuant, DenseQuant, WeightQuant

ATTENTION_KINDS = ("softmax", "bool")
POOLER_KINDS = ("dense_tanh", "bipft_ln_residual")
ACTIVATIONS = ("gelu", "relu", "gelu_tanh")
TABLE_STORAGE = ("float32", "float16", "bfloat16")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """BiPFT's low-rank estimators of the binarization-residual polynomials (methods.md §3.3).

    enabled: add `q_p, k_p, q_m, k_m` (rank `rank`) and `v_p` (rank 1) maps of the layer input.
    rank: rank r of the q/k estimators (paper and reference: 1). `v_p` is rank 1 as in the
      reference (`binary_finetune/binary_bert.py:181-185`): its output is broadcast over channels.
    per_head: one estimator per head (an extension) instead of one shared by all heads (paper).
    """

    enabled: bool = False
    rank: int = 1
    per_head: bool = False

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"quant.estimators.rank must be >= 1, got {self.rank}")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Every binarization choice of the model (methods.md §1.1); the defaults are full precision.

    word_embedding: weight binarizer of the [vocab, embed] table (`channel_axis=0` = per row).
    linear_weight: weight binarizer of Q, K, V, attention-output, FFN-in and FFN-out kernels.
    linear_input: input binarizer of Q, K, V, attention-output and FFN-in.
    ffn_out_input: input binarizer of the FFN-out linear (after the FFN activation).
    qkv: binarizer of Q, K and V after their projection.
    attention: "softmax" (FP softmax of the scores) or "bool" (BiBERT: no softmax).
    probs: binarizer of the attention probabilities after dropout (for "bool" attention it is
      applied to the dropped-out *scores*; BiBERT uses method "bool").
    pooler: "dense_tanh" (`tanh(dense(h₀))`) or "bipft_ln_residual" (`tanh(LN(dense(h₀)) + h₀)`).
    pooler_quant: binarizers of the pooler dense.
    estimators: BiPFT residual-polynomial estimators.
    mlm_transform_act: activation of the (FP) MLM head transform.
    table_storage: "float32", "float16" or "bfloat16": the dtype the position and token-type
      tables are deployed in. The forward looks up their values rounded to it (gradients pass
      straight through to the float32 params), so a packed file that stores them in 16 bits is
      exact for the model that was trained this way (BERT-base: -0.75 MiB on disk).
    """

    word_embedding: WeightQuant = WeightQuant(channel_axis=0)
    linear_weight: WeightQuant = WeightQuant()
    linear_input: ActQuant = ActQuant()
    ffn_out_input: ActQuant = ActQuant()
    qkv: ActQuant = ActQuant()
    attention: str = "softmax"
    probs: ActQuant = ActQuant()
    pooler: str = "dense_tanh"
    pooler_quant: DenseQuant = DenseQuant()
    estimators: EstimatorSpec = EstimatorSpec()
    mlm_transform_act: str = "gelu"
    table_storage: str = "float32"

    def __post_init__(self):
        _check("quant.table_storage", self.table_storage, TABLE_STORAGE)
        _check("quant.attention", self.attention, ATTENTION_KINDS)
        _check("quant.pooler", self.pooler, POOLER_KINDS)
        _check("quant.mlm_transform_act", self.mlm_transform_act, ACTIVATIONS)

    @property
    def linear(self) -> DenseQuant:
        """Binarizers of the Q/K/V/attention-output/FFN-in linears."""
        return DenseQuant(weight=self.linear_weight, input=self.linear_input)

    @property
    def ffn_out(self) -> DenseQuant:
        return DenseQuant(weight=self.linear_weight, input=self.ffn_out_input)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and numerics of a (binary) BERT encoder."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    # The word-embedding row whose lookups pass no gradient (torch `padding_idx`, as all three
    # references and Hugging Face BERT: [PAD] = 0); None lets padded positions train that row.
    padding_idx: int | None = 0
    quant: QuantSpec = QuantSpec()

    def __post_init__(self):
        _check("hidden_act", self.hidden_act, ACTIVATIONS)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.padding_idx is not None and not 0 <= self.padding_idx < self.vocab_size:
            raise ValueError(
                f"padding_idx must be None or in [0, vocab_size={self.vocab_size}), "
                f"got {self.padding_idx}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _dtype(value: Any, key: str) -> Any:
    if isinstance(value, str):
        if value not in _DTYPES:
            raise ValueError(f"{key} must be one of {tuple(_DTYPES)}, got {value!r}")
        return _DTYPES[value]
    return value


def _build(cls: type, data: Mapping[str, Any], path: str, nested: dict[str, type]) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursing into `nested` fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f" in {path!r}" if path else ""
        raise ValueError(f"unknown config key(s){where}: {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key in nested and isinstance(value, Mapping):
            kwargs[key] = _build(nested[key], value, full, _NESTED.get(nested[key], {}))
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid config {path or cls.__name__!r}: {e}") from e


_NESTED: dict[type, dict[str, type]] = {
    BertConfig: {"quant": QuantSpec},
    QuantSpec: {
        "word_embedding": WeightQuant,
        "linear_weight": WeightQuant,
        "linear_input": ActQuant,
        "ffn_out_input": ActQuant,
        "qkv": ActQuant,
        "probs": ActQuant,
        "pooler_quant": DenseQuant,
        "estimators": EstimatorSpec,
    },
    DenseQuant: {"weight": WeightQuant, "input": ActQuant},
}


def _plain(cfg: Any) -> Any:
    """ConfigDict / FrozenConfigDict / dict -> nested plain dicts."""
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    return cfg


def quant_from_config_dict(cfg: Any) -> QuantSpec:
    """A `QuantSpec` from a (nested) ConfigDict or dict; unknown keys are an error."""
    return _build(QuantSpec, _plain(cfg), "quant", _NESTED[QuantSpec])


def from_config_dict(cfg: Any) -> BertConfig:
    """A `BertConfig` from a ConfigDict/dict (dtype names such as "bfloat16" are accepted)."""
    data = dict(_plain(cfg))
    for key in ("dtype", "param_dtype"):
        if key in data:
            data[key] = _dtype(data[key], key)
    return _build(BertConfig, data, "", _NESTED[BertConfig])


def to_dict(config: BertConfig) -> dict[str, Any]:
    """Plain nested dict of a `BertConfig` (dtypes by name), e.g. for logging or checkpoints."""
    out = dataclasses.asdict(config)
    for key in ("dtype", "param_dtype"):
        out[key] = jnp.dtype(getattr(config, key)).name
    return out
