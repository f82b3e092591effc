"""BiPFT (Xingrun-Xing/BiPFT @63ec0a0), reference-parity preset (methods.md §1.1, §2.1, §3.3).

BiT's binarizers (`binary_pretraining/utils_quant.py` is byte-identical to BiT's) plus the
residual-polynomial estimators; `file:line` refer to `binary_pretraining/bipft.py`.
"""

import ml_collections

_WEIGHT = dict(method="bwn", scale="tensor", center="tensor", channel_axis=-1)  # BWN per matrix
_SIGNED_INPUT = dict(method="elastic_signed", bits=1, learnable_bias=True)  # alpha*sign(x+b)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # GELU is hard-coded in the FFN; config hidden_act='relu' only reaches the MLM head (§9.2).
    c.hidden_act = "gelu"
    q = c.quant = ml_collections.ConfigDict()
    q.word_embedding = dict(method="bwn", scale="channel", center="tensor", channel_axis=0)
    q.linear_weight = _WEIGHT
    q.linear_input = _SIGNED_INPUT
    q.ffn_out_input = _SIGNED_INPUT  # signed, also after GELU (bipft.py:419)
    q.qkv = dict(method="elastic_signed", bits=1, learnable_bias=False)
    q.attention = "softmax"
    q.probs = dict(method="elastic_unsigned", bits=1, learnable_bias=False)  # bipft.py:299
    # Pooler: tanh(LN(dense(x)) + x) with a W1A1 dense (methods.md §1.1).
    q.pooler = "bipft_ln_residual"
    q.pooler_quant = dict(weight=_WEIGHT, input=_SIGNED_INPUT)
    # q_p, k_p, q_m, k_m, v_p: rank-1 FP maps of the layer input, shared by all heads, added
    # before 1/sqrt(d) (bipft.py:162-311; rank: binary_finetune/binary_bert.py:181-185).
    q.estimators = dict(enabled=True, rank=1, per_head=False)
    q.mlm_transform_act = "relu"  # FP MLM transform uses hidden_act='relu'
    return c
