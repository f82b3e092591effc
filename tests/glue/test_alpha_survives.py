"""Binary pretraining's learned quantizer parameters survive into fine-tuning (issue #12):
`bipft pretrain` -> `bipft finetune --config.init.kind=checkpoint`, α/β/estimators at step 0
equal the pretraining checkpoint's; only parameters new to the model are calibrated."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.checkpoint import restore_params
from bipft_jax.glue import finetune
from tests.train.cli_runs import run

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("shared_data")
QUANT = ("alpha", "shift", "q_p", "k_p", "q_m", "k_m", "v_p")


def _quant_leaves(params):
    flat = traverse_util.flatten_dict(jax.device_get(params))
    return {k: np.asarray(v) for k, v in flat.items()
            if k[0] == "bert" and any(q in k for q in QUANT)}  # fmt: skip


def test_pretrained_alpha_beta_and_estimators_reach_finetuning_unchanged(tmp_path):
    out = run(tmp_path / "pre", tmp_path / "cache", "--config.train.total_steps=3",
              "--config.model.method=bipft")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pre = _quant_leaves(restore_params(tmp_path / "pre"))
    assert any(k[-1] == "alpha" for k in pre) and any("q_p" in k for k in pre)
    start = ("chain=bipft", "model.size=tiny", "model.num_layers=0", "init.kind=checkpoint",
             f"init.path={tmp_path / 'pre'}", "train.lr=0.0", "train.max_steps=1",
             "train.eval_every=1")  # fmt: skip
    cfg = tiny_config("bipft", "rte", *start)
    result = finetune.run(cfg, tmp_path / "ft")["result"]
    assert result["init"].startswith("checkpoint:")
    after = _quant_leaves(restore_params(tmp_path / "ft" / "0_bipft" / "final"))
    assert after.keys() == pre.keys()
    for k, v in pre.items():
        np.testing.assert_array_equal(after[k], v, err_msg="/".join(k))
    # With keep_alpha=False the same start re-derives alpha from data: a different number.
    cfg2 = tiny_config("bipft", "rte", *start, "init.keep_alpha=false")
    finetune.run(cfg2, tmp_path / "ft2")
    recal = _quant_leaves(restore_params(tmp_path / "ft2" / "0_bipft" / "final"))
    alphas = [k for k in pre if k[-1] == "alpha"]
    assert any(not np.array_equal(recal[k], pre[k]) for k in alphas)
