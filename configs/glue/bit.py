"""BiT: FP teacher (stage 0) then W1A1 BiT student with soft-CE + hidden-MSE KD, BertAdam."""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bit", arg, chain="fp,bit", kd="bit", optimizer="bertadam")
    c.init.kind = "hf"  # init.path = a Hugging Face BERT directory (teacher and student start)
    return c
