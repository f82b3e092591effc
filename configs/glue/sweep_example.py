"""Sweep example: BiPFT vs BiT (FP teacher -> W1A1) on SST-2 and RTE, 2 lrs × 3 seeds."""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bit", arg, chain="fp,bit", kd="bit", optimizer="bertadam")
    c.init.kind = "hf"  # set init.path to a Hugging Face BERT directory
    c.sweep.tasks = "sst2,rte"
    c.sweep.presets = "fp;fp,bit"
    c.sweep.lrs = "1e-4,5e-4"
    c.sweep.seeds = "1,2,3"
    return c
