"""bipft_jax: fully binarized BERT pretraining, fine-tuning and 1-bit export in JAX/Flax."""

__version__ = "0.1.0"
