"""Full-precision BERT (the teacher / baseline): nothing binarized, exact-erf GELU (HF parity)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.hidden_act = "gelu"
    q = c.quant = ml_collections.ConfigDict()
    q.word_embedding = dict(method="none", channel_axis=0)
    q.linear_weight = dict(method="none")
    q.linear_input = dict(method="none")
    q.ffn_out_input = dict(method="none")
    q.qkv = dict(method="none")
    q.attention = "softmax"
    q.probs = dict(method="none")
    q.pooler = "dense_tanh"
    q.pooler_quant = dict(weight=dict(method="none"), input=dict(method="none"))
    q.estimators = dict(enabled=False, rank=1, per_head=False)
    q.mlm_transform_act = "gelu"
    return c
