"""Small pieces of `bipft pretrain`: student-from-teacher copy, numel multiplier, configs."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from bipft_jax.model.presets import get_model_config
from bipft_jax.quant import ActQuant, with_numel_multiplier
from bipft_jax.train import config_io
from bipft_jax.train.pretrain import init_from_teacher
from tests.train.cli_runs import REPO


def test_init_from_teacher_follows_the_transfer_policy():
    """Shared leaves copied (boxes kept), student-only and skipped leaves kept, a shape mismatch
    raised (the policy itself: tests/checkpoint/test_transfer.py)."""
    student = {
        "a": {"kernel": nn.Partitioned(np.zeros((3, 4), np.float32), ("embed", "mlp"))},
        "b": {"alpha": np.zeros((), np.float32)},
        "h": {"kernel": np.zeros((2, 2), np.float32)},
    }
    teacher = {"a": {"kernel": np.ones((3, 4), np.float32)}, "h": {"kernel": np.ones((2, 2))}}
    out = init_from_teacher(student, teacher, skip=("h",))
    assert out["a"]["kernel"].names == ("embed", "mlp")
    np.testing.assert_array_equal(out["a"]["kernel"].value, 1.0)
    np.testing.assert_array_equal(out["h"]["kernel"], 0.0)
    np.testing.assert_array_equal(out["b"]["alpha"], 0.0)
    with pytest.raises(ValueError, match=r"a/kernel: teacher \(3, 3\) vs student \(3, 4\)"):
        init_from_teacher(student, {"a": {"kernel": np.ones((3, 3))}})


def test_with_numel_multiplier_reaches_every_act_quantizer():
    cfg = with_numel_multiplier(get_model_config("bipft", "tiny"), 4)
    found = []

    def walk(x):
        if isinstance(x, ActQuant):
            found.append(x.numel_multiplier)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                walk(getattr(x, name))

    walk(cfg)
    assert len(found) >= 5 and set(found) == {4}
    assert cfg.hidden_size == 128  # nothing else changed


@pytest.mark.parametrize("name", ["tiny.py", "bipft_base.py", "tiny.py:fp", "bipft_base.py:bit"])
def test_pretrain_configs_load(name):
    cfg = config_io.load_config(str(REPO / "configs" / "pretrain" / name))
    assert cfg.optim.lr > 0 and cfg.train.total_steps > cfg.optim.warmup_steps
    if name.startswith("bipft_base"):
        assert (cfg.data.seq_len, cfg.data.global_batch_size) == (128, 512)
        assert (cfg.train.total_steps, cfg.optim.lr, cfg.optim.warmup_steps) == (
            500_000,
            2e-4,
            5000,
        )
        assert cfg.optim.schedule == "linear" and cfg.model.size == "base"
    get_model_config(cfg.model.method, cfg.model.size)  # the preset exists
    assert jax.tree.leaves(cfg.to_dict())
