"""Basic losses against NumPy references, hand computations and edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax import losses
from tests.losses import np_reference as ref


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _labels_with_ignore(rng, shape, n_cls, p_ignore=0.6):
    labels = rng.integers(0, n_cls, shape)
    labels[rng.random(shape) < p_ignore] = -100
    labels.flat[0] = 1  # at least one real label
    return labels


def test_mlm_loss_matches_numpy_with_and_without_weights(rng):
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    labels = _labels_with_ignore(rng, (3, 7), 11)
    weights = rng.random((3, 7)).astype(np.float32)
    for w in (None, weights):
        loss, acc = losses.mlm_loss(jnp.asarray(logits), jnp.asarray(labels), w)
        want_loss, want_acc = ref.ce_ignore(logits, labels, w)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        np.testing.assert_allclose(acc, want_acc, rtol=1e-6)


def test_mlm_loss_hand_computed():
    # One real token: logits [0, ln 3] → p = [1/4, 3/4]; label 1 → CE = ln(4/3), argmax right.
    logits = jnp.array([[[0.0, np.log(3.0)], [5.0, -5.0]]])
    labels = jnp.array([[1, -100]])
    loss, acc = losses.mlm_loss(logits, labels)
    np.testing.assert_allclose(loss, np.log(4 / 3), rtol=1e-6)
    assert float(acc) == 1.0


def test_all_ignored_gives_zero_not_nan():
    loss, acc = losses.mlm_loss(jnp.ones((2, 3, 5)), jnp.full((2, 3), -100))
    assert float(loss) == 0.0 and float(acc) == 0.0
    g = jax.grad(lambda x: losses.mlm_loss(x, jnp.full((2, 3), -100))[0])(jnp.ones((2, 3, 5)))
    assert np.all(np.isfinite(g))


def test_nsp_and_classification_loss(rng):
    logits = rng.normal(size=(6, 2)).astype(np.float32)
    labels = rng.integers(0, 2, 6)
    loss, acc = losses.nsp_loss(jnp.asarray(logits), jnp.asarray(labels))
    want_loss, want_acc = ref.ce_ignore(logits, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, want_acc)
    logits3 = rng.normal(size=(5, 3)).astype(np.float32)
    labels3 = rng.integers(0, 3, 5)
    loss3, _ = losses.classification_loss(jnp.asarray(logits3), jnp.asarray(labels3))
    np.testing.assert_allclose(loss3, ref.ce_ignore(logits3, labels3)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        losses.classification_loss(jnp.asarray(logits3), jnp.asarray(labels3[:4]))


def test_regression_loss_squeezes_trailing_axis(rng):
    preds = rng.normal(size=(5, 1)).astype(np.float32)
    targets = rng.normal(size=(5,)).astype(np.float32)
    np.testing.assert_allclose(
        losses.regression_loss(preds, targets), ref.mse(preds[:, 0], targets), rtol=1e-5
    )
    with pytest.raises(ValueError, match="disagree"):
        losses.regression_loss(preds, targets[:4])


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_soft_cross_entropy_matches_numpy(rng, temp):
    s = rng.normal(size=(4, 3)).astype(np.float32) * 2
    t = rng.normal(size=(4, 3)).astype(np.float32) * 2
    got = losses.soft_cross_entropy(s, t, temperature=temp)
    np.testing.assert_allclose(got, ref.soft_ce(s, t, temp), rtol=1e-5)
    got_t2 = losses.soft_cross_entropy(s, t, temperature=temp, scale_by_t2=True)
    np.testing.assert_allclose(got_t2, temp**2 * ref.soft_ce(s, t, temp), rtol=1e-5)


def test_soft_cross_entropy_hand_and_reduction_is_mean_over_classes():
    # Uniform 2-class teacher and student: each element is -0.5·ln 0.5; mean over B×C = 0.5·ln 2
    # (a per-example sum would give ln 2).
    got = losses.soft_cross_entropy(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    np.testing.assert_allclose(got, 0.5 * np.log(2.0), rtol=1e-6)


def test_soft_cross_entropy_is_identically_zero_for_one_logit(rng):
    """The reference's STS-B logit KD: one regression logit → log_softmax ≡ 0 → loss and grad 0."""
    s = jnp.asarray(rng.normal(size=(8, 1)) * 3)
    t = jnp.asarray(rng.normal(size=(8, 1)) * 3)
    assert float(losses.soft_cross_entropy(s, t)) == 0.0
    g = jax.grad(losses.soft_cross_entropy)(s, t)
    assert float(jnp.abs(g).max()) == 0.0
    assert float(losses.regression_loss(s, t)) > 0.1  # what bit_kd_loss uses instead


def test_teacher_gets_no_gradient(rng):
    s = jnp.asarray(rng.normal(size=(4, 3)))
    t = jnp.asarray(rng.normal(size=(4, 3)))
    assert float(jnp.abs(jax.grad(losses.soft_cross_entropy, argnums=1)(s, t)).max()) == 0.0


def test_masked_soft_cross_entropy(rng):
    s = rng.normal(size=(2, 5, 7)).astype(np.float32)
    t = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = _labels_with_ignore(rng, (2, 5), 7)
    got = losses.masked_soft_cross_entropy(s, t, jnp.asarray(labels), temperature=2.0)
    np.testing.assert_allclose(got, ref.masked_soft_ce_sum_vocab(s, t, labels, 2.0), rtol=1e-5)


def _hiddens(rng, n=3, shape=(2, 5, 4)):
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def test_hidden_mse_reductions_and_mask(rng):
    hs, ht = _hiddens(rng), _hiddens(rng)
    per = [ref.mse(a, b) for a, b in zip(hs, ht, strict=True)]
    np.testing.assert_allclose(losses.hidden_mse(hs, ht), np.mean(per), rtol=1e-5)
    np.testing.assert_allclose(
        losses.hidden_mse(hs, ht, reduction="sum_over_layers"), np.sum(per), rtol=1e-5
    )
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.float32)
    per_m = [ref.mse(a, b, mask[..., None]) for a, b in zip(hs, ht, strict=True)]
    np.testing.assert_allclose(losses.hidden_mse(hs, ht, mask=mask), np.mean(per_m), rtol=1e-5)
    # Padding positions do not matter once masked.
    hs2 = [h.copy() for h in hs]
    hs2[0][0, 4] += 100.0
    np.testing.assert_allclose(
        losses.hidden_mse(hs2, ht, mask=mask), losses.hidden_mse(hs, ht, mask=mask), rtol=1e-6
    )


def test_hidden_mse_errors(rng):
    hs, ht = _hiddens(rng), _hiddens(rng)
    with pytest.raises(ValueError, match="3 layers, teacher 2"):
        losses.hidden_mse(hs, ht[:2])
    with pytest.raises(ValueError, match="reduction"):
        losses.hidden_mse(hs, ht, reduction="max")
    with pytest.raises(ValueError, match=r"hidden_mse\[1\]"):
        losses.hidden_mse(hs, [ht[0], ht[1][:, :3], ht[2]])


def test_attention_kd_guard_and_mask(rng):
    b, h, seq = 2, 3, 5
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
    add = (1.0 - mask)[:, None, None, :] * -1e4
    ss = [rng.normal(size=(b, h, seq, seq)).astype(np.float32) + add for _ in range(2)]
    ts = [rng.normal(size=(b, h, seq, seq)).astype(np.float32) + add for _ in range(2)]
    want = sum(
        ref.mse(np.where(s <= -1e2, 0, s), np.where(t <= -1e2, 0, t))
        for s, t in zip(ss, ts, strict=True)
    )
    np.testing.assert_allclose(losses.attention_kd(ss, ts), want, rtol=1e-5)
    pair = mask[:, None, :, None] * mask[:, None, None, :]
    want_m = np.mean([ref.mse(s, t, pair) for s, t in zip(ss, ts, strict=True)])
    got_m = losses.attention_kd(ss, ts, mask=mask, reduction="mean_over_layers")
    np.testing.assert_allclose(got_m, want_m, rtol=1e-5)
    # A single array is one layer.
    np.testing.assert_allclose(
        losses.attention_kd(ss[0], ts[0], mask=mask), ref.mse(ss[0], ts[0], pair), rtol=1e-5
    )


def test_closed_form_gradients(rng):
    """dCE/dx = (softmax − onehot)·w/Σw; dsoftCE/ds = (softmax(s/T) − softmax(t/T))/(T·B·C)."""
    logits = rng.normal(size=(2, 4, 6))
    labels = _labels_with_ignore(rng, (2, 4), 6)
    g = jax.grad(lambda x: losses.mlm_loss(x, jnp.asarray(labels))[0])(jnp.asarray(logits))
    valid = (labels != -100).astype(np.float64)
    onehot = np.eye(6)[np.where(labels == -100, 0, labels)]
    want = (np.exp(ref.log_softmax(logits)) - onehot) * valid[..., None] / valid.sum()
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)
    s, t, temp = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), 2.0
    g_kd = jax.grad(losses.soft_cross_entropy)(jnp.asarray(s), jnp.asarray(t), temp)
    q, p = np.exp(ref.log_softmax(s / temp)), np.exp(ref.log_softmax(t / temp))
    np.testing.assert_allclose(g_kd, (q - p) / (temp * s.size), rtol=1e-4, atol=1e-7)
