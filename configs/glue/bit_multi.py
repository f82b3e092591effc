"""BiT multi-distillation FP -> W1A2 -> W1A1 (each stage distilled from the previous one)."""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bit", arg, chain="fp,bit:a2,bit", kd="bit", optimizer="bertadam")
    c.init.kind = "hf"
    return c
