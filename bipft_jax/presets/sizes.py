"""Size presets: layers, hidden size, heads and FFN size (BERT vocabulary and positions)."""

import ml_collections

# name: (num_layers, hidden_size, num_heads, intermediate_size)
SIZES = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(size: str) -> ml_collections.ConfigDict:
    layers, hidden, heads, ffn = SIZES[size]
    return ml_collections.ConfigDict(
        dict(
            vocab_size=30522,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            intermediate_size=ffn,
            max_position=512,
            type_vocab_size=2,
        )
    )
