"""Export: Hugging Face (`hf`), binary-latent + PyTorch module (`binary`, `torch_bert`) and
jax.export artifacts (`stablehlo`, `hlo_artifact`); `bipft export` is `cli.main`.

Nothing is imported here, so `torch_bert` and `hlo_artifact` stay free of JAX/model imports.
"""
