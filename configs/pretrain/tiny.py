"""`tiny` BiPFT pretraining: runs end to end on a 2-core CPU in a few minutes.

    bipft pretrain --config configs/pretrain/tiny.py --workdir /tmp/bipft_tiny

Student: BiPFT preset at size `tiny` (2 x 128), initialised from a randomly initialised FP
teacher of the same size (fixed seed) and alpha-calibrated on a real batch. Data: the shared
corpus (WikiText-2 test + Austen), seq 64, batch 16. `:fp` trains the FP preset instead.
"""

import ml_collections

from bipft_jax.train.pretrain import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default_config()
    c.model.method = arg or "bipft"
    c.model.size = "tiny"
    c.teacher.source = "random"
    c.data.seq_len = 64
    c.data.global_batch_size = 16
    c.data.eval_batches = 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.train.total_steps = 200
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.save_every = 100
    return c
