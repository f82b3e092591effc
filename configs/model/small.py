"""Size preset `small`: 4 layers, hidden 512, 8 heads, FFN 2048 (BERT vocabulary and positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=512,
            num_layers=4,
            num_heads=8,
            intermediate_size=2048,
            max_position=512,
            type_vocab_size=2,
        )
    )
