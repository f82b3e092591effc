"""One BERT model family: FP, BiBERT, BiT and BiPFT are presets (`QuantSpec`) of one model."""

from bipft_jax.model.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from bipft_jax.model.config import (
    BertConfig,
    EstimatorSpec,
    QuantSpec,
    from_config_dict,
    quant_from_config_dict,
    to_dict,
)
from bipft_jax.model.presets import get_model_config, get_model_config_dict

__all__ = [
    "BertConfig",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertModel",
    "EstimatorSpec",
    "QuantSpec",
    "from_config_dict",
    "get_model_config",
    "get_model_config_dict",
    "quant_from_config_dict",
    "to_dict",
]
