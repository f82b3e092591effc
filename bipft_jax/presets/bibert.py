"""BiBERT (htqin/BiBERT @91fd347), reference-parity preset (methods.md §1.1, §2.2, §3.1).

Every choice is spelled out; `file:line` refer to the reference repo.
"""

import ml_collections

# sign STE of linear inputs: 1[-1 <= x <= 1] (transformer/utils_quant.py:230-233).
_SIGN_INPUT = dict(method="sign", ste="clipped", clip=1.0, clip_inclusive=True)
# BinaryQuantizer on Q/K/V: sign with STE 1[|x| < 1] (utils_quant.py:12-25).
_SIGN_QKV = dict(method="sign", ste="clipped", clip=1.0, clip_inclusive=False)
# Weights: m_r * sign(W - mu_r), per output row, m detached, grad through clip(W - mu_r, -1, 1)
# (QuantizeLinear.forward, utils_quant.py:219-228). Dense kernels are [in, out]: rows = axis -1.
_WEIGHT = dict(method="bibert", channel_axis=-1)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.hidden_act = "gelu"  # FFN nonlinearity GELU (methods.md §1.1)
    q = c.quant = ml_collections.ConfigDict()
    # Word embedding 1-bit, per-row (token) scale, row-mean-centred (utils_quant.py:259-266).
    q.word_embedding = dict(method="bibert", channel_axis=0)
    q.linear_weight = _WEIGHT
    q.linear_input = _SIGN_INPUT  # sign(x), no scale, no bias
    q.ffn_out_input = _SIGN_INPUT  # the FFN-out input is signed too
    q.qkv = _SIGN_QKV
    # Bi-Attention: no softmax; bool(dropout(QbKb^T/8 + mask)) = 1[x > 0], STE 1[|x| < 1]
    # (ZMeanBinaryQuantizer, utils_quant.py:28-42; modeling_quant.py:141-184).
    q.attention = "bool"
    q.probs = dict(method="bool", ste="clipped", clip=1.0, clip_inclusive=False)
    q.pooler = "dense_tanh"  # pooler dense is W1A1, tanh (modeling_quant.py)
    q.pooler_quant = dict(weight=_WEIGHT, input=_SIGN_INPUT)
    q.estimators = dict(enabled=False, rank=1, per_head=False)
    q.mlm_transform_act = "gelu"  # BiBERT has no pretraining heads; unused
    return c
