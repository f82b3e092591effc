"""BiBERT (htqin/BiBERT @91fd347) GLUE recipe with exact parity (docs/deviations.md).

The student (`bibert` preset) starts from the task's fine-tuned FP model (DynaBERT), its
classifier included, and distils from that model as is, in eval mode (`quant_task_glue.py:405`),
with DMD + soft-CE + 0.5·CE; dropout follows the reference's train/eval quirk:

    bipft finetune --config configs/glue/bibert_reference.py:qnli --workdir /tmp/bibert_qnli \\
        --config.init.path=/models/dynabert/QNLI --config.kd.teacher_path=/models/dynabert/QNLI
"""

from bipft_jax.glue.recipes import finetune_config


def get_config(arg=None):
    c = finetune_config("bibert", arg, chain="bibert", kd="bibert", optimizer="bertadam")
    c.model.size = "hf"
    c.init.kind = "hf"  # init.path = the DynaBERT task directory (--student_model)
    c.init.load_classifier = True
    c.kd.teacher_path = ""  # REQUIRED: the same DynaBERT task directory (--teacher_model)
    c.kd.teacher_dropout = False  # teacher_model.eval() (quant_task_glue.py:405)
    c.kd.gt_beta = 0.5  # hard-coded gt_beta (quant_task_glue.py:525)
    c.kd.temperature = 1.0
    c.optimizer.weight_decay = 0.01  # quant_task_glue.py:461-473 (bias, LayerNorm: 0)
    c.optimizer.warmup_ratio = 0.1  # BertAdam(warmup=0.1) (quant_task_glue.py:479)
    # student.train() only at each epoch's start, eval() at each evaluation (l.500, 612).
    c.train.student_dropout = "bibert_quirk"
    c.eval.selection = "bibert"  # quant_task_glue.py:305-307, 666-683; utils_glue.py:578-584
    c.eval.mnli_mm = "when_best"  # mm only when matched improves (quant_task_glue.py:685-691)
    c.seed = 101 if c.task == "qnli" else 42  # scripts/train_qnli.sh --seed 101
    c.train.pad_multiple = 0  # every row padded to max_seq_length (quant_task_glue.py features)
    return c
