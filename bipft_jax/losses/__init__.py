"""Losses: MLM/NSP/task CE, MSE, soft-CE KD, hidden/attention KD, BiBERT DMD, objectives."""

from bipft_jax.losses.core import (
    IGNORE_INDEX,
    attention_kd,
    classification_loss,
    cross_entropy_with_ignore,
    hidden_mse,
    masked_soft_cross_entropy,
    mlm_loss,
    nsp_loss,
    regression_loss,
    soft_cross_entropy,
)
from bipft_jax.losses.dmd import dmd_distance, dmd_loss, similarity_matrix
from bipft_jax.losses.objectives import (
    DEFAULT_PRETRAIN_WEIGHTS,
    MODEL_INPUT_KEYS,
    PRETRAIN_TERMS,
    DataContract,
    bibert_pred_loss,
    bipft_pretrain_loss,
    bit_kd_loss,
    mlm_targets,
    pretrain_contract,
    pretrain_weights,
)

__all__ = [
    "DEFAULT_PRETRAIN_WEIGHTS",
    "IGNORE_INDEX",
    "MODEL_INPUT_KEYS",
    "PRETRAIN_TERMS",
    "DataContract",
    "attention_kd",
    "bibert_pred_loss",
    "bipft_pretrain_loss",
    "bit_kd_loss",
    "classification_loss",
    "cross_entropy_with_ignore",
    "dmd_distance",
    "dmd_loss",
    "hidden_mse",
    "masked_soft_cross_entropy",
    "mlm_loss",
    "mlm_targets",
    "nsp_loss",
    "pretrain_contract",
    "pretrain_weights",
    "regression_loss",
    "similarity_matrix",
    "soft_cross_entropy",
]
