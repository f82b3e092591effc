"""Size preset `mini`: 4 layers, hidden 256, 4 heads, FFN 1024 (BERT vocabulary and positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            intermediate_size=1024,
            max_position=512,
            type_vocab_size=2,
        )
    )
