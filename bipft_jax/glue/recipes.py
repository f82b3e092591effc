"""Per-paper GLUE fine-tuning recipes (docs methods.md §5.2): epochs / max length / batch / lr.

`task_recipe(paper, task)` returns the table row; configs in `configs/glue/` start from it and
every value stays overridable (`--config.train.lr=...`).
"""

from __future__ import annotations

import ml_collections

PAPERS = ("bit", "bibert", "bipft")
# One row per task, one (epochs, max_length, batch_size, lr, eval_every) per paper;
# eval_every=0 means once per epoch (BiPFT's evaluation).
_TABLE = {
    #       BiT                          BiBERT                        BiPFT
    "cola": ((50, 64, 16, 5e-4, 100), (50, 64, 16, 1e-4, 500), (50, 128, 32, 2e-5, 0)),
    "mnli": ((6, 128, 16, 2e-4, 100), (5, 128, 16, 5e-5, 1000), (6, 128, 32, 2e-5, 0)),
    "mrpc": ((20, 128, 8, 5e-4, 100), (20, 128, 16, 2e-4, 200), (20, 128, 32, 2e-5, 0)),
    "sst2": ((10, 64, 8, 1e-4, 100), (10, 64, 16, 1e-4, 200), (10, 128, 32, 2e-5, 0)),
    "stsb": ((20, 128, 8, 5e-4, 100), (20, 128, 16, 1e-4, 200), (20, 128, 32, 2e-5, 0)),
    "qqp": ((6, 128, 32, 2e-4, 100), (5, 128, 16, 1e-4, 1000), (6, 128, 32, 2e-5, 0)),
    "qnli": ((10, 128, 8, 2e-4, 100), (10, 128, 16, 1e-4, 1000), (10, 128, 32, 2e-5, 0)),
    "rte": ((20, 128, 8, 5e-4, 100), (20, 128, 16, 1e-5, 200), (20, 128, 32, 2e-5, 0)),
}  # fmt: skip
RECIPES = {p: {task: rows[i] for task, rows in _TABLE.items()} for i, p in enumerate(PAPERS)}
FIELDS = ("epochs", "max_length", "batch_size", "lr", "eval_every")


def task_recipe(paper: str, task: str) -> dict:
    """The paper's row for a task as a dict of `FIELDS`; unknown paper or task raise KeyError."""
    if paper not in RECIPES:
        raise KeyError(f"unknown GLUE recipe {paper!r}; known: {sorted(RECIPES)}")
    key = task.lower().replace("-", "")
    if key not in RECIPES[paper]:
        raise KeyError(f"recipe {paper!r} has no task {task!r}; known: {sorted(RECIPES[paper])}")
    return dict(zip(FIELDS, RECIPES[paper][key], strict=True))


def finetune_config(
    paper: str, task: str | None, chain: str, kd: str, optimizer: str
) -> ml_collections.ConfigDict:
    """The full `bipft finetune` config of one experiment, starting from a paper's task row.

    `task=None` gives SST-2 (override `task` and the train fields together, or pass the task as
    the config argument: `configs/glue/bit.py:rte`).
    """
    task = task or "sst2"
    row = task_recipe(paper, task)
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 42
    c.data_dir = ""  # "" = bipft_jax.paths.default_glue_dir()
    c.vocab_file = ""  # "" = bipft_jax.paths.default_vocab_file()
    c.max_train_rows = 0  # 0 = all rows
    c.max_eval_rows = 0
    c.predict_test = False  # write GLUE submission files from the best checkpoint
    c.chain = chain  # stages, e.g. "bipft", "fp,bit", "fp,bit:a2,bit"
    # size "hf": the sizes of init.path (an HF directory, "minilm", or one of our checkpoints);
    # num_layers 0 = the size's; dtype "bfloat16" = bf16 activations and matmuls (fp32 params);
    # overrides: "KEY=VALUE" BertConfig / QuantSpec fields, e.g. ("quant.probs.bits=2",).
    c.model = ml_collections.ConfigDict(
        dict(
            size="base",
            num_layers=0,
            dtype="float32",
            overrides=(),
            # A stage's `:a<bits>` also sets the pooler input bits (BiT's W1A2 reference).
            pooler_follows_stage_bits=True,
            padding_idx=0,  # [PAD] row gets no gradient (all references); -1 = none
        )
    )
    c.init = ml_collections.ConfigDict(
        dict(
            kind="scratch",  # scratch | hf | checkpoint
            path="",
            # A binary checkpoint's α are kept, as the references' lazy α init does; False
            # re-derives them from the first batch (init.init_alphas).
            keep_alpha=True,
            load_classifier=True,  # the source's classifier when its shape fits (BiT, BiBERT)
            step=0,  # init.kind=checkpoint: the checkpoint step to start from; 0 = the newest
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            epochs=float(row["epochs"]),
            max_length=row["max_length"],
            batch_size=row["batch_size"],
            lr=row["lr"],
            teacher_lr=2e-5,  # stage 0 of a multi-stage chain (the FP teacher)
            max_steps=0,  # > 0 overrides epochs
            eval_every=row["eval_every"],  # 0 = once per epoch
            eval_batch_size=64,
            grad_accum_steps=1,
            log_every=50,
            # Batches are cut to the longest row rounded up to this multiple (0: pad every batch
            # to max_length, as the references do); at most max_length/pad_multiple shapes.
            pad_multiple=32,
            # > 0: batches of similar length, drawn from sorted groups of this many batches (HF
            # `group_by_length`); 0 = random batches, as the references (docs/deviations.md).
            group_by_length=0,
            save_every=0,  # checkpoint cadence in steps; 0 = at every evaluation
            keep_checkpoints=2,
            async_checkpoint=True,
            keep_state=False,  # keep the train-state checkpoints of a finished stage
            on_corrupt_checkpoint="fallback",  # or "error": stop instead of using an older step
            max_nonfinite_steps=10,  # stop after this many NaN/Inf steps in a row (0: never)
            # "always" | "bibert_quirk" (rules.student_dropout_on: reference BiBERT turns
            # the student's dropout off from an epoch's first evaluation to its end)
            student_dropout="always",
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = "dp"
    bert = optimizer == "bertadam"
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name=optimizer,
            schedule="linear" if bert else "constant",
            warmup_ratio=0.1 if bert else 0.0,
            weight_decay=-1.0,  # < 0: the optimizer's default (0.01 bertadam, 0 adamw)
            alpha_lr=1e-4 if paper == "bit" else 0.0,  # 0 = same as lr
            clip_norm=0.0,
        )
    )
    c.kd = ml_collections.ConfigDict(
        dict(
            kind=kd,
            temperature=1.0,
            gt_beta=0.5,
            # "" = distil from the previous stage of the chain; else a ready fine-tuned teacher
            # used as is (teacher.load_teacher), and every stage of the chain is a student.
            teacher_path="",
            # The teacher's dropout during KD: on in BiT (train mode), off in BiBERT (eval).
            teacher_dropout=paper == "bit",
            # STS-B under kd.kind=bit: MSE on the logit (ours); False = the reference's
            # soft-CE over one logit, which is identically 0 (methods.md §4.2).
            regression_logit_mse=True,
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            selection="main",  # main | bit | bibert | bipft (rules.eval_rules)
            mnli_mm="every",  # every | when_best | final
        )
    )
    c.sweep = ml_collections.ConfigDict(
        dict(tasks=task, presets=chain, lrs="", seeds="42", output="sweep")
    )
    return c
