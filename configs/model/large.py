"""Size preset `large`: 24 layers, hidden 1024, 16 heads, FFN 4096 (BERT vocabulary and positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=1024,
            num_layers=24,
            num_heads=16,
            intermediate_size=4096,
            max_position=512,
            type_vocab_size=2,
        )
    )
