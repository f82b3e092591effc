"""Fine-tuning of one row of the paper-budget GLUE study (`configs/study/minilm.py:paper`); the
argument is `row:task`.

Every binary row runs its own paper's fine-tuning recipe, taken from the `*_reference.py` config
of that paper (epochs, batch, lr, optimizer, KD, dropout, selection; `bipft_jax.glue.recipes`),
on the MiniLM-L6-H384 sizes, from the same FP teachers and BiPFT pretraining checkpoints as the
study-budget rows (`configs/glue/study_minilm.py`). Two settings differ from the papers' scripts,
for cost, and are the same for every row: one dev evaluation per epoch (BiT evaluates every 100
steps, BiBERT every 200; BiPFT once per epoch already) and batches cut to their length bucket
(`train.pad_multiple=32`, docs/deviations.md G18; α is still calibrated at max_length).

Rows:
  fp          the study's FP row, unchanged (the same runs serve both studies).
  bibert      BiBERT (`bibert_reference.py`): BertAdam, DMD + soft-CE + 0.5·CE, teacher in eval.
  bit         BiT* (`bit_multi_reference.py`): the multi-distillation chain W1A2 -> W1A1, each
              stage with BiT's recipe (BertAdam, KD on logits + hidden states, α lr 1e-4).
  bipft_a/b   BiPFT-A/B (`bipft_reference.py`): labels only, AdamW constant lr 2e-5 (the paper's
              lr, tuned for a 32.8 B-token pretraining), from the binary-pretrained checkpoint.
  bipft_a_hi/bipft_b_hi  the same with the study's lr 2e-4.
"""

from pathlib import Path

import ml_collections

from bipft_jax.train.config_io import load_config

HERE = Path(__file__).parent
ROWS = ("fp", "bibert", "bit", "bipft_a", "bipft_b", "bipft_a_hi", "bipft_b_hi")
_REFERENCE = {"bibert": "bibert_reference.py", "bit": "bit_multi_reference.py",
              "bipft": "bipft_reference.py"}  # fmt: skip
STUDY_LR = 2e-4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    row, _, task = (arg or "bit:rte").partition(":")
    if row not in ROWS:
        raise ValueError(f"paper-study row {row!r}: choose one of {ROWS}")
    if row == "fp":
        return load_config(f"{HERE / 'study_minilm.py'}:fp:{task}")
    paper = "bipft" if row.startswith("bipft") else row
    c = load_config(f"{HERE / _REFERENCE[paper]}:{task}")
    c.model.size = "hf"  # MiniLM-L6-H384's sizes (from init.path)
    c.init.kind = "checkpoint"  # the driver fills init.path (FP run or pretraining checkpoint)
    c.init.path = ""
    if row.startswith("bipft_a"):
        c.model.overrides = ("quant.estimators.enabled=False",)
    if row.endswith("_hi"):
        c.train.lr = STUDY_LR
    c.train.update(eval_every=0, pad_multiple=32, eval_batch_size=128, log_every=100)
    return c
