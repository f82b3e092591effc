"""Fine-tuning of one row of the MiniLM GLUE study (`bipft study`); the argument is `row:task`.

    bipft finetune --config configs/glue/study_minilm.py:bit:rte --workdir DIR \\
        --config.seed=1 --config.init.path=FP_RUN/0_fp/final --config.kd.teacher_path=FP_RUN/0_fp/final

One recipe for every row (the PyTorch reference measurement's, `environment.md`): AdamW, batch 32,
gradient clipping 1.0,
10% linear warm-up then linear decay to 0, weight decay 0.01 except biases and LayerNorm, 3 epochs,
max length 128 (64 for CoLA and SST-2), SST-2 on the first 20,000 training rows for 1 epoch, dev
evaluated every epoch. FP: lr 5e-5 from MiniLM. Every binary row: the same budget and lr 2e-4
(one value for all binary rows, so no method gets a tuned advantage).

Rows:
  fp        FP MiniLM fine-tuned on the labels (init.path = "minilm").
  bibert    BiBERT student from the FP run's final model, DMD + prediction KD from it.
  bit       BiT student from the FP run's final model, BiT KD (logits + hidden MSE) from it.
  bipft_a   BiPFT without estimators, binary-pretrained (init.path = its `bipft pretrain` workdir),
            fine-tuned on the labels.
  bipft_b   BiPFT with estimators, likewise.
  bipft_b0  BiPFT-B from MiniLM without binary pretraining (the curve's 0-token point).
"""

import ml_collections

from bipft_jax.glue.recipes import finetune_config

ROWS = ("fp", "bibert", "bit", "bipft_a", "bipft_b", "bipft_b0")
_CHAIN = {"fp": ("fp", "none"), "bibert": ("bibert", "bibert"), "bit": ("bit", "bit"),
          "bipft_a": ("bipft", "none"), "bipft_b": ("bipft", "none"),
          "bipft_b0": ("bipft", "none")}  # fmt: skip
_TASK = {  # max_length, epochs, training rows (0 = all)
    "cola": (64, 3.0, 0),
    "sst2": (64, 1.0, 20_000),
    "stsb": (128, 3.0, 0),
    "rte": (128, 3.0, 0),
}
FP_LR, BINARY_LR = 5e-5, 2e-4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    row, _, task = (arg or "fp:rte").partition(":")
    if row not in ROWS:
        raise ValueError(f"study row {row!r}: choose one of {ROWS}")
    if task not in _TASK:
        raise ValueError(f"study task {task!r}: choose one of {tuple(_TASK)}")
    chain, kd = _CHAIN[row]
    c = finetune_config("bipft", task, chain=chain, kd=kd, optimizer="adamw")
    max_length, epochs, rows = _TASK[task]
    c.model.size = "hf"  # MiniLM-L6-H384's sizes (from init.path)
    if row == "bipft_a":
        c.model.overrides = ("quant.estimators.enabled=False",)
    c.init.kind = "hf" if row in ("fp", "bipft_b0") else "checkpoint"
    c.init.path = "minilm" if c.init.kind == "hf" else ""  # the driver fills in checkpoints
    c.max_train_rows = rows
    c.train.update(
        epochs=epochs, max_length=max_length, batch_size=32, eval_every=0, eval_batch_size=128,
        lr=FP_LR if row == "fp" else BINARY_LR, log_every=50,
    )  # fmt: skip
    c.optimizer.update(schedule="linear", warmup_ratio=0.1, weight_decay=0.01, alpha_lr=0.0,
                       clip_norm=1.0)  # fmt: skip
    c.kd.teacher_dropout = False  # the FP teacher runs deterministically for every KD row
    c.eval.selection = "main"
    return c
