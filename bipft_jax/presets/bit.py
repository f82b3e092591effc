"""BiT (facebookresearch/bit @4f2feb1), reference-parity preset (methods.md §1.1, §2.1, §3.2).

Every choice is spelled out; `file:line` refer to the reference repo.
"""

import ml_collections

# BWN, one scalar scale and centre per matrix, identity STE (BwnQuantizer,
# transformer/utils_quant.py:169-203, weight_layerwise=True).
_WEIGHT = dict(method="bwn", scale="tensor", center="tensor", channel_axis=-1)
# alpha*sign(x + b): scalar learned alpha, per-input-channel beta = LearnableBias
# (ElasticQuantBinarizerSigned utils_quant.py:22-83; `move` at l.251, 281).
_SIGNED_INPUT = dict(method="elastic_signed", bits=1, learnable_bias=True)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.hidden_act = "relu"  # --ACT2FN relu (methods.md §1.1)
    q = c.quant = ml_collections.ConfigDict()
    # Word embedding BWN with per-row scale, *global* mean centre (embed_layerwise=False).
    q.word_embedding = dict(method="bwn", scale="channel", center="tensor", channel_axis=0)
    q.linear_weight = _WEIGHT
    q.linear_input = _SIGNED_INPUT
    # FFN-out input unsigned alpha*{0,1} after ReLU (sym_quant_ffn_attn=False,
    # modeling_bert_quant.py:326), with the same LearnableBias.
    q.ffn_out_input = dict(method="elastic_unsigned", bits=1, learnable_bias=True)
    # alpha_q sign(Q) etc.; the move_q/k/v betas are dead code (modeling_bert_quant.py:225-231).
    q.qkv = dict(method="elastic_signed", bits=1, learnable_bias=False)
    q.attention = "softmax"  # FP softmax kept (modeling_bert_quant.py:218-261)
    # Probabilities: unsigned elastic {0, alpha_p} after dropout, no beta (l.252-254).
    q.probs = dict(method="elastic_unsigned", bits=1, learnable_bias=False)
    q.pooler = "dense_tanh"  # W1A1 pooler dense + tanh
    q.pooler_quant = dict(weight=_WEIGHT, input=_SIGNED_INPUT)
    q.estimators = dict(enabled=False, rank=1, per_head=False)
    q.mlm_transform_act = "relu"  # BiT has no pretraining heads; follows hidden_act
    return c
