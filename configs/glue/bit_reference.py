"""BiT (facebookresearch/bit @4f2feb1) GLUE recipe with exact parity (docs/deviations.md).

The student (W1A1, `bit` preset) starts from the task's fine-tuned FP teacher directory, its
classifier included, and distils from that teacher as is (no stage-0 re-training; BiT used
textattack/bert-base-uncased-<TASK>, `scripts/run_glue.sh:10-11`), run in train mode:

    bipft finetune --config configs/glue/bit_reference.py:rte --workdir /tmp/bit_rte \\
        --config.init.path=/models/bert-base-uncased-RTE --config.kd.teacher_path=/models/bert-base-uncased-RTE
"""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bit", arg, chain="bit", kd="bit", optimizer="bertadam")
    c.model.size = "hf"  # the sizes of the teacher directory (BERT-base)
    c.init.kind = "hf"  # init.path = the fine-tuned teacher directory (run_glue.sh:11)
    c.init.load_classifier = True
    c.kd.teacher_path = ""  # REQUIRED: the same fine-tuned teacher directory (run_glue.sh:10)
    c.kd.teacher_dropout = True  # teacher_model.train() (kd_learner_glue.py:157)
    c.kd.temperature = 1.0
    c.kd.regression_logit_mse = False  # STS-B: soft-CE over one logit, ≡ 0 (methods.md §4.2)
    c.optimizer.weight_decay = 0.01  # run_glue.sh --weight_decay 0.01
    c.optimizer.alpha_lr = 1e-4  # --clip_lr 1e-4, clip_wd 0 (kd_learner_glue.py:61-72)
    c.optimizer.warmup_ratio = 0.1  # --warmup_proportion 0.1
    c.train.student_dropout = "always"  # student.train() every step (kd_learner_glue.py:181)
    c.eval.selection = "bit"  # kd_learner_glue.py:293-303, utils_glue.py:36-38, 606-613
    c.eval.mnli_mm = "when_best"  # mm only when matched improves (kd_learner_glue.py:305-316)
    c.seed = 42
    c.train.pad_multiple = 0  # every row padded to max_seq_length (utils_glue.py features)
    return c
