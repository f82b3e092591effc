"""The small-scale reproduction of the three papers on GLUE, from the real MiniLM-L6-H384.

    bipft study --config configs/study/minilm.py --workdir workdir/study [--commit]

Runs, one seed of every row before the next seed, each resumable and skipped once finished:
  1. FP MiniLM fine-tuned on every task and seed (also the KD teachers and the BiBERT/BiT
     students' initialisation);
  2. the binary rows (BiBERT, BiT, BiPFT-A, BiPFT-B) on every task and seed: one fine-tuning
     budget and lr for all of them (configs/glue/study_minilm.py);
  3. before a BiPFT row's first fine-tuning, its binary pretraining (BiPFT-A without estimators,
     BiPFT-B with), `pretrain_steps` of 32 x 128 tokens on the shared corpus from MiniLM (the
     main job's recipe, longer);
  4. the pretraining curve of BiPFT-B: fine-tuned from MiniLM without binary pretraining and from
     the checkpoints at 1/4 and 1/2 of the budget, `curve_seeds` seeds.
Results: `benchmarks/results/glue_study.{md,json,png}` and one file per finished run in
`benchmarks/results/glue_study/`. `:tiny` is the CI-sized version (two rows, one task).

`:paper` is the paper-budget study (`configs/glue/study_paper.py`): every binary row with its
own paper's recipe, BiPFT at the paper's lr 2e-5 and at the study's 2e-4; CoLA, STS-B, RTE with
3 seeds, SST-2 with one. Run it in the same workdir as the study: its FP runs and pretrainings
are the study's (the same jobs), its binary runs are named `paper-<row>__<task>__s<seed>`.
Results: `benchmarks/results/glue_study_paper.{md,json,png}`, the study-budget numbers beside.
`:paper_tiny` is its CI-sized version.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.finetune_config = "configs/glue/study_minilm.py"
    c.pretrain_config = "configs/pretrain/minilm.py"
    c.tasks = ("cola", "sst2", "stsb", "rte")
    c.seeds = (1, 2, 3)
    c.rows = ("fp", "bibert", "bit", "bipft_a", "bipft_b")
    c.pretrain_steps = 960  # 960 x 32 x 128 = 3.9 M tokens (~3 passes over the corpus)
    c.pretrain = dict(bipft_b="bipft", bipft_a="bipft_a")  # row -> configs/pretrain/minilm.py arg
    c.curve_fractions = (0.0, 0.25, 0.5)  # 1.0 is the bipft_b row itself
    c.curve_seeds = (1,)
    c.finetune_overrides = ()  # extra --config.* of every fine-tuning run
    c.pretrain_overrides = ()
    c.results = "benchmarks/results/glue_study"  # .md/.json/.png and a folder of run files
    if arg in ("paper", "paper_tiny"):
        c.finetune_config = "configs/glue/study_paper.py"
        c.tasks = ("stsb", "rte", "cola", "sst2")  # cheapest informative tasks first
        c.task_seeds = dict(sst2=(1,))
        c.rows = ("fp", "bibert", "bit", "bipft_a", "bipft_b", "bipft_a_hi", "bipft_b_hi")
        c.pretrain_of = dict(bipft_a_hi="bipft_a", bipft_b_hi="bipft_b")
        c.curve_fractions = ()
        c.run_prefix = "paper-"
        c.results = "benchmarks/results/glue_study_paper"
        c.compare_with = "benchmarks/results/glue_study.json"  # the study-budget numbers
    if arg == "paper_tiny":
        c.tasks = ("rte",)
        c.seeds = (1,)
        c.task_seeds = {}
        c.rows = ("fp", "bit", "bipft_b", "bipft_b_hi")
        c.pretrain = dict(bipft_b="bipft")
        c.pretrain_of = dict(bipft_b_hi="bipft_b")
        c.compare_with = ""
        arg = "tiny_sizes"
    if arg in ("tiny", "tiny_sizes"):
        if arg == "tiny":
            c.tasks = ("rte",)
            c.seeds = (1, 2)
            c.rows = ("fp", "bipft_b")
            c.pretrain = dict(bipft_b="bipft")
            c.curve_fractions = (0.0, 0.5)
        c.pretrain_steps = 4
        c.finetune_overrides = (
            "max_train_rows=64", "max_eval_rows=32", "train.max_steps=2", "train.max_length=32",
            "train.batch_size=8", "train.eval_batch_size=16", "model.num_layers=1",
        )  # fmt: skip
        c.pretrain_overrides = (
            "model.size=tiny", "teacher.source=random", "data.seq_len=32",
            "data.global_batch_size=8", "data.max_docs=60",
            "data.eval_batches=1", "train.eval_every=4", "train.log_every=1",
            "optim.warmup_steps=1",
        )  # fmt: skip
        if c.rows != ("fp", "bipft_b"):  # KD rows: the student keeps the FP teacher's depth
            c.finetune_overrides = tuple(o for o in c.finetune_overrides if "num_layers" not in o)
    elif arg and arg != "paper":
        raise ValueError(
            f"configs/study/minilm.py: unknown argument {arg!r} (':tiny', ':paper', ':paper_tiny')"
        )
    return c
