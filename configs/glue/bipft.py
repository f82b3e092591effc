"""BiPFT fine-tuning (no distillation): AdamW, constant lr 2e-5, len 128, bs 32; arg = task."""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bipft", arg, chain="bipft", kd="none", optimizer="adamw")
    c.init.kind = "checkpoint"  # point init.path at a `bipft pretrain` workdir
    return c
