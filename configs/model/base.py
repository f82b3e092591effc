"""Size preset `base`: 12 layers, hidden 768, 12 heads, FFN 3072 (BERT vocabulary and positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            intermediate_size=3072,
            max_position=512,
            type_vocab_size=2,
        )
    )
