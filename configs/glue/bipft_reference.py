"""BiPFT (Xingrun-Xing/BiPFT @63ec0a0) GLUE recipe with exact parity (docs/deviations.md):
labels only (no KD), AdamW lr 2e-5 constant, batch 32, length 128, seed 42, one evaluation
per epoch, best epoch by the first metric (Pearson on STS-B), MNLI-mm once on the final model,
pretrained α kept (`binary_finetune/run.sh`, `run_glue_no_trainer_bnn_dist_direct.py`):

    bipft convert --from bipft /path/to/BiPFT-B --out /tmp/bipft_b
    bipft finetune --config configs/glue/bipft_reference.py:stsb --workdir /tmp/bipft_stsb \\
        --config.init.path=/tmp/bipft_b
"""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bipft", arg, chain="bipft", kd="none", optimizer="adamw")
    c.init.kind = "checkpoint"  # init.path = BiPFT-B (`bipft convert`) or `bipft pretrain`
    c.init.keep_alpha = True  # lazy α init skipped for loaded α (utils_quant.py:51,116)
    c.optimizer.schedule = "constant"  # run.sh --lr_scheduler_type constant
    c.optimizer.warmup_ratio = 0.0
    c.optimizer.weight_decay = 0.0  # --weight_decay default 0.0
    c.optimizer.alpha_lr = 0.0  # α at the main lr
    c.train.eval_every = 0  # once per epoch
    c.eval.selection = "bipft"  # first metric key (run_glue_no_trainer_bnn_dist_direct.py:591-603)
    c.eval.mnli_mm = "final"  # mm once on the final model (:649-667)
    c.seed = 42  # run.sh --seed 42
    c.train.pad_multiple = 1  # pad to the longest row (run_glue_no_trainer_bnn_dist_direct.py:412)
    return c
