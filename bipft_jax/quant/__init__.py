"""Binarization numerics: pure `jax.custom_vjp` functions and the Linen blocks built on them."""

from bipft_jax.quant.config import ActQuant, DenseQuant, WeightQuant, with_numel_multiplier
from bipft_jax.quant.elastic import (
    ALPHA_MIN,
    elastic_quantize,
    elastic_quantized,
    init_alpha,
    levels,
)
from bipft_jax.quant.layers import (
    CALIBRATION,
    ActQuantizer,
    BinaryDense,
    LearnableBias,
    calibrate_alphas,
    logical_param,
)
from bipft_jax.quant.product import Quantized
from bipft_jax.quant.ste import bool_ste, sign_ste, ste_mask
from bipft_jax.quant.weights import bibert_weight, binarize_weight, bwn, quantize_weight

__all__ = [
    "ALPHA_MIN",
    "CALIBRATION",
    "ActQuant",
    "ActQuantizer",
    "BinaryDense",
    "DenseQuant",
    "LearnableBias",
    "Quantized",
    "WeightQuant",
    "bibert_weight",
    "binarize_weight",
    "bool_ste",
    "bwn",
    "calibrate_alphas",
    "elastic_quantize",
    "elastic_quantized",
    "init_alpha",
    "levels",
    "logical_param",
    "quantize_weight",
    "sign_ste",
    "ste_mask",
    "with_numel_multiplier",
]
