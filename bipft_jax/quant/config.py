"""Small frozen configs that select a binarizer. A paper is a choice of these, never a new layer."""

from __future__ import annotations

import dataclasses
from typing import Any

WEIGHT_METHODS = ("none", "bwn", "bibert")
ACT_METHODS = ("none", "sign", "bool", "elastic_signed", "elastic_unsigned")
STE_KINDS = ("identity", "clipped", "approx")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class WeightQuant:
    """How a weight tensor is binarized.

    method: "none" (FP), "bwn" (`m·sign(W-μ)`, identity STE; BiT/BiPFT) or "bibert" (per-channel
      detached scale, channel centring, gradient through `clip(W-μ, -1, 1)`).
    scale / center: "tensor" or "channel" (bwn only; bibert is always per channel).
    channel_axis: the axis that keeps its own scale and centre ([in, out] kernels: -1;
      [vocab, embed] embedding tables: 0).
    """

    method: str = "none"
    scale: str = "tensor"
    center: str = "tensor"
    channel_axis: int = -1

    def __post_init__(self):
        _check("WeightQuant.method", self.method, WEIGHT_METHODS)
        _check("WeightQuant.scale", self.scale, ("tensor", "channel"))
        _check("WeightQuant.center", self.center, ("tensor", "channel"))

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclasses.dataclass(frozen=True)
class ActQuant:
    """How an activation tensor is binarized (or k-bit quantized).

    method: "none", "sign" (BiBERT, no scale), "bool" (`1[x>0]`), "elastic_signed" (`α·sign(x)` /
      k-bit LSQ) or "elastic_unsigned" (`α·round(clip(x/α, 0, 1))` / k-bit LSQ); BiT/BiPFT.
    bits: 1, 2, 4 or 8 (elastic only).
    ste, clip, clip_inclusive: the straight-through estimator of "sign" / "bool".
    learnable_bias: add a per-channel β (init 0) before quantizing (BiT/BiPFT linear inputs).
    numel_multiplier: the LSQ gradient scale is `1/sqrt(numel·Qp·numel_multiplier)`; set it to the
      number of gradient-accumulation micro-steps so the α gradient equals that of the full batch.
    shift_min: k-bit unsigned only: quantize `x - min(x)` (BiT's reference behaviour).
    """

    method: str = "none"
    bits: int = 1
    ste: str = "clipped"
    clip: float = 1.0
    clip_inclusive: bool = True
    learnable_bias: bool = False
    numel_multiplier: int = 1
    shift_min: bool = True

    def __post_init__(self):
        _check("ActQuant.method", self.method, ACT_METHODS)
        _check("ActQuant.ste", self.ste, STE_KINDS)
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"ActQuant.bits must be 1, 2, 4 or 8, got {self.bits!r}")
        if self.bits != 1 and not self.method.startswith("elastic"):
            raise ValueError(
                f"ActQuant.bits={self.bits} needs an elastic method, got {self.method!r}"
            )
        if self.clip <= 0:
            raise ValueError(f"ActQuant.clip must be positive, got {self.clip!r}")
        if self.numel_multiplier < 1:
            raise ValueError(f"ActQuant.numel_multiplier must be >= 1, got {self.numel_multiplier}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def is_elastic(self) -> bool:
        return self.method.startswith("elastic")


@dataclasses.dataclass(frozen=True)
class DenseQuant:
    """The binarizers of one dense layer: its weight and its input."""

    weight: WeightQuant = WeightQuant()
    input: ActQuant = ActQuant()


def with_numel_multiplier(config: Any, k: int) -> Any:
    """A copy of a frozen config dataclass (``BertConfig``, ``QuantSpec``, ...) with every
    ``ActQuant.numel_multiplier`` set to ``k`` (the gradient-accumulation steps, so elastic α
    gradients are scaled as for the full batch), recursing through nested dataclasses."""
    if isinstance(config, ActQuant):
        return dataclasses.replace(config, numel_multiplier=k)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        new = with_numel_multiplier(value, k)
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(config, **changes) if changes else config
