"""BiBERT: FP teacher (stage 0) then BiBERT student with DMD + prediction KD (+0.5 CE)."""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bibert", arg, chain="fp,bibert", kd="bibert", optimizer="bertadam")
    c.init.kind = "hf"
    return c
