"""Data: tokenizer, GLUE tasks and metrics, pretraining corpus, `bipft prepare`, MLM+NSP loader.

Modules are imported directly (`bipft_jax.data.glue`, `.loader`, ...); nothing heavy loads here.
"""
