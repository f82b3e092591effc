"""Size preset `tiny`: 2 layers, hidden 128, 2 heads, FFN 512 (BERT vocabulary and positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=128,
            num_layers=2,
            num_heads=2,
            intermediate_size=512,
            max_position=512,
            type_vocab_size=2,
        )
    )
