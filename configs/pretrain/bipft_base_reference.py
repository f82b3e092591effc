"""BiPFT pretraining with exact parity to the reference (`binary_pretraining/bert_base.sh` on
8 GPUs with `run_pretrain_binary.py`, Xingrun-Xing/BiPFT @63ec0a0; docs/deviations.md):
FP32, teacher dropout on, AdamW weight decay 0, no gradient clipping, checkpoints every 50k,
and the learning-rate schedule as it actually ran (`optim.schedule_steps_per_update=8`).

    bipft pretrain --config configs/pretrain/bipft_base_reference.py --workdir ... \\
        --config.teacher.path=/path/to/bert-base-uncased

`:nominal` keeps everything but uses the schedule the script asks for (5k warm-up, linear
decay over 500k updates) instead of the one accelerate ran.
"""

from pathlib import Path

import ml_collections

from bipft_jax.train.config_io import load_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "nominal"):
        raise ValueError(
            f"bipft_base_reference.py: argument must be empty or 'nominal', not {arg!r}"
        )
    c = load_config(str(Path(__file__).with_name("bipft_base.py")))
    c.model.dtype = "float32"
    c.teacher.dropout = True  # learner.py:12 teacher_model.train()
    c.optim.name = "adamw"  # torch AdamW: betas (0.9, 0.999), eps 1e-8, bias correction
    c.optim.weight_decay = 0.0  # run_pretrain_binary.py:124 (bert_base.sh sets none)
    c.optim.clip_norm = 0.0  # no clip_grad_norm_ in the loop (run_pretrain_binary.py:523-526)
    c.optim.alpha_lr = 0.0  # α train at the main lr (0 = same as lr)
    c.optim.schedule_steps_per_update = 1 if arg == "nominal" else 8  # :404-414, 8 processes
    c.train.save_every = 50_000  # bert_base.sh --checkpointing_steps 50000
    c.train.grad_accum_steps = 1
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    c.init.from_teacher = True  # BinaryBertForPreTraining.from_pretrained(bert-base-uncased)
    c.init.calibrate = True  # the lazy α init on the first batch
    for key, weight in dict(nsp_kd=1.0, hidden=1.0, mlm=1.0, nsp=1.0, mlm_kd=0.0).items():
        c.loss[key] = weight  # learner.py: NSP soft-CE + mean hidden MSE + MLM CE + NSP CE
    c.loss.temperature = 1.0
    return c
