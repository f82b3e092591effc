"""BiPFT paper recipe (methods.md §5.1): BERT-base student, seq 128, global batch 512, 500k steps,
AdamW lr 2e-4 with 5k warm-up steps and linear decay, teacher = bert-base-uncased.

    bipft pretrain --config configs/pretrain/bipft_base.py --workdir gs://.../bipft_base \\
        --config.teacher.path=/path/to/bert-base-uncased   # a Hugging Face model directory

`:<method>` picks another binary preset (fp, bibert, bit). On a pod, set the mesh, e.g.
`--config.mesh.fsdp=-1 --config.mesh.data=1 --config.sharding=fsdp`, and `--distributed`.
"""

import ml_collections

from bipft_jax.train.pretrain import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default_config()
    c.model.method = arg or "bipft"
    c.model.size = "base"
    c.model.dtype = "bfloat16"
    c.teacher.source = "hf"
    c.teacher.path = "bert-base-uncased"  # a local HF directory; override with the real path
    c.data.seq_len = 128
    c.data.global_batch_size = 512
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.schedule = "linear"
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.train.total_steps = 500_000
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.save_every = 5000
    return c
