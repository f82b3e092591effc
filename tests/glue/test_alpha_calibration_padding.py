"""α starts where the references start (issue #25): the first batch is calibrated padded to
max_length, so the length bucket (`train.pad_multiple`) does not move α; the attention
probabilities' α is then the reference's 4·mean(P) = 4/max_length."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.checkpoint import restore_params
from bipft_jax.glue import data as glue_data
from bipft_jax.glue import finetune

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("shared_data")
MAX_LENGTH = 256  # longer than RTE's rows: the first batch's bucket of 32 is shorter


def _config(pad_multiple):
    return tiny_config("bit", "rte", "chain=bit", "kd.kind=none", "train.lr=0.0",
                      f"train.pad_multiple={pad_multiple}",
                      "optimizer.alpha_lr=0.0", "train.max_steps=1", "train.eval_every=1",
                      f"train.max_length={MAX_LENGTH}")  # fmt: skip


def _alphas(tmp_path, pad_multiple):
    cfg = _config(pad_multiple)
    finetune.run(cfg, tmp_path / f"pad{pad_multiple}")
    flat = traverse_util.flatten_dict(
        jax.device_get(restore_params(tmp_path / f"pad{pad_multiple}" / "0_bit" / "final"))
    )
    return {"/".join(k): np.asarray(v) for k, v in flat.items() if k[-1] == "alpha"}


def test_alpha_is_the_same_under_any_length_bucket(tmp_path):
    cfg = _config(32)
    rows = finetune.load_task_data(cfg).train
    first = glue_data.train_batch(rows, cfg.train.batch_size, cfg.seed, 0, pad_multiple=32)
    assert first["input_ids"].shape[1] < MAX_LENGTH  # the bucket would move α without the fix
    fixed, bucketed = _alphas(tmp_path, 0), _alphas(tmp_path, 32)
    assert fixed.keys() == bucketed.keys() and len(fixed) > 4
    for k in fixed:
        np.testing.assert_array_equal(fixed[k], bucketed[k], err_msg=k)
    probs = [k for k in fixed if "probs_quant" in k]
    assert probs
    for k in probs:  # each softmax row sums to 1 over max_length keys (padded rows included)
        assert fixed[k] == pytest.approx(4 / MAX_LENGTH, rel=1e-5), k
