"""Fine-tuning loss terms (`glue.kd.finetune_loss`) against NumPy hand computations."""

import numpy as np
import pytest

from bipft_jax.glue.kd import finetune_loss

B, L, D, H, C, LAYERS = 3, 5, 4, 2, 3, 2


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _outputs(rng, n_labels):
    return {
        "logits": rng.normal(size=(B, n_labels)).astype(np.float32),
        "hidden_states": tuple(
            rng.normal(size=(B, L, D * H)).astype(np.float32) for _ in range(LAYERS + 1)
        ),  # fmt: skip
        **{
            k: tuple(rng.normal(size=(B, H, L, D)).astype(np.float32) for _ in range(LAYERS))
            for k in "qkv"
        },  # fmt: skip
    }


def _soft_ce(s, t, temp):
    p = np.exp(_log_softmax(t / temp))
    return float(np.mean(-p * _log_softmax(s / temp)))


def _ce(s, y):
    return float(np.mean(-_log_softmax(s)[np.arange(len(y)), y]))


def _dmd_dist(a, b):
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.linalg.norm(a - b))


def _sim(x):
    return np.einsum("bhld,bhmd->bhlm", x, x) / np.sqrt(x.shape[-1])


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_none_is_label_ce_and_mse(rng):
    s = _outputs(rng, C)
    y = rng.integers(0, C, B).astype(np.int32)
    loss, _ = finetune_loss("none", s, None, y, is_regression=False)
    assert float(loss) == pytest.approx(_ce(s["logits"], y), rel=1e-5)
    r = _outputs(rng, 1)
    target = rng.normal(size=B).astype(np.float32)
    loss, _ = finetune_loss("none", r, None, target, is_regression=True)
    assert float(loss) == pytest.approx(np.mean((r["logits"][:, 0] - target) ** 2), rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_bit_soft_ce_plus_summed_hidden_mse(rng, temp):
    s, t = _outputs(rng, C), _outputs(rng, C)
    y = rng.integers(0, C, B).astype(np.int32)
    loss, parts = finetune_loss("bit", s, t, y, is_regression=False, temperature=temp)
    want_kd = _soft_ce(s["logits"], t["logits"], temp)
    want_h = sum(np.mean((a - b) ** 2) for a, b in zip(s["hidden_states"], t["hidden_states"]))
    assert float(parts["logit_kd"]) == pytest.approx(want_kd, rel=1e-5)
    assert float(parts["hidden_mse"]) == pytest.approx(want_h, rel=1e-5)
    assert float(loss) == pytest.approx(want_kd + want_h, rel=1e-5)  # no label term


def test_bit_regression_uses_logit_mse(rng):
    s, t = _outputs(rng, 1), _outputs(rng, 1)
    y = rng.normal(size=B).astype(np.float32)
    _, parts = finetune_loss("bit", s, t, y, is_regression=True)
    assert float(parts["logit_kd"]) == pytest.approx(np.mean((s["logits"] - t["logits"]) ** 2))
    assert float(parts["logit_kd"]) > 0  # the reference's soft-CE would be exactly 0 here


def test_bibert_pred_plus_dmd(rng):
    s, t = _outputs(rng, C), _outputs(rng, C)
    y = rng.integers(0, C, B).astype(np.int32)
    loss, parts = finetune_loss("bibert", s, t, y, is_regression=False, gt_beta=0.5)
    want_pred = _soft_ce(s["logits"], t["logits"], 1.0) + 0.5 * _ce(s["logits"], y)
    want_dmd = sum(_dmd_dist(_sim(s[k][i]), _sim(t[k][i])) for i in range(LAYERS) for k in "qkv")
    want_dmd += sum(_dmd_dist(a, b) for a, b in zip(s["hidden_states"], t["hidden_states"]))
    assert float(parts["pred"]) == pytest.approx(want_pred, rel=1e-5)
    assert float(parts["dmd"]) == pytest.approx(want_dmd, rel=1e-5)
    assert float(loss) == pytest.approx(want_pred + want_dmd, rel=1e-5)


def test_bibert_regression_is_mse_to_teacher(rng):
    s, t = _outputs(rng, 1), _outputs(rng, 1)
    _, parts = finetune_loss("bibert", s, t, np.zeros(B, np.float32), is_regression=True)
    assert float(parts["pred"]) == pytest.approx(np.mean((s["logits"] - t["logits"]) ** 2))


def test_unknown_kind_and_missing_teacher(rng):
    s = _outputs(rng, C)
    y = np.zeros(B, np.int32)
    with pytest.raises(ValueError, match="kd.kind"):
        finetune_loss("tinybert", s, None, y, is_regression=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        finetune_loss("bit", s, None, y, is_regression=False)


@pytest.mark.parametrize("mse", [True, False])
def test_stsb_logit_kd_switch_from_the_config(rng, mse):
    from bipft_jax.glue.kd import loss_options
    from bipft_jax.glue.recipes import finetune_config

    cfg = finetune_config("bit", "stsb", chain="fp,bit", kd="bit", optimizer="bertadam")
    assert cfg.kd.regression_logit_mse  # ours by default
    cfg.kd.regression_logit_mse = mse
    s, t = _outputs(rng, 1), _outputs(rng, 1)
    y = rng.normal(size=B).astype(np.float32)
    loss, parts = finetune_loss("bit", s, t, y, is_regression=True, **loss_options(cfg.kd))
    want_h = sum(np.mean((a - b) ** 2) for a, b in zip(s["hidden_states"], t["hidden_states"]))
    want_logit = np.mean((s["logits"] - t["logits"]) ** 2) if mse else 0.0  # reference: 0
    assert float(parts["logit_kd"]) == pytest.approx(want_logit, abs=1e-7)
    assert float(loss) == pytest.approx(want_h + want_logit, rel=1e-5)
