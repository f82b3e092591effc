"""BiBERT DMD: reference parity against NumPy, hand values, masking and batch independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax import losses
from tests.losses import np_reference as ref

MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def test_similarity_matrix(rng):
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.similarity_matrix(x), ref.sim(x), rtol=1e-5, atol=1e-6)


def test_dmd_distance_hand_values():
    a = jnp.array([[3.0, 0.0]])
    np.testing.assert_allclose(losses.dmd_distance(a, jnp.array([[0.0, 5.0]])), np.sqrt(2.0))
    # Scale invariant, and NOT squared (squared would give 2 above).
    assert float(losses.dmd_distance(a, 7.0 * a)) == pytest.approx(0.0, abs=1e-7)


def test_dmd_distance_reference_matches_numpy(rng):
    gs = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    gt = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    gt[0, 0, 0, 0] = -500.0  # the ≤ -1e2 guard
    np.testing.assert_allclose(losses.dmd_distance(gs, gt), ref.dmd_ref(gs, gt), rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 2, 6, 6), (3, 6, 4)])
def test_dmd_distance_per_example_masked_matches_numpy(rng, shape):
    gs = rng.normal(size=shape).astype(np.float32)
    gt = rng.normal(size=shape).astype(np.float32)
    got = losses.dmd_distance(gs, gt, mask=MASK, per_example=True)
    np.testing.assert_allclose(got, ref.dmd_per_example(gs, gt, MASK), rtol=1e-5)


def test_masked_variant_ignores_padding_and_batch_mates_reference_does_not(rng):
    x_s = rng.normal(size=(3, 2, 6, 4)).astype(np.float32)
    x_t = rng.normal(size=(3, 2, 6, 4)).astype(np.float32)
    gs, gt = ref.sim(x_s), ref.sim(x_t)
    gs_pad = gs.copy()
    gs_pad[1, :, 4:, :] += 50.0  # change only padding of example 1

    def per(a, b):
        return float(losses.dmd_distance(a, b, mask=MASK, per_example=True))

    assert per(gs_pad, gt) == pytest.approx(per(gs, gt), rel=1e-6)
    assert float(losses.dmd_distance(gs_pad, gt)) != pytest.approx(
        float(losses.dmd_distance(gs, gt)), rel=1e-3
    )
    # Per-example: the batch value is the mean of the single-example values.
    singles = [
        float(losses.dmd_distance(gs[i : i + 1], gt[i : i + 1], MASK[i : i + 1], True))
        for i in range(3)
    ]
    assert per(gs, gt) == pytest.approx(np.mean(singles), rel=1e-6)


def test_dmd_loss_sums_qkv_and_hidden_terms(rng):
    n_layers = 2
    mk = lambda *s: rng.normal(size=s).astype(np.float32)
    s_qkv = [tuple(mk(2, 2, 5, 4) for _ in range(3)) for _ in range(n_layers)]
    t_qkv = [tuple(mk(2, 2, 5, 4) for _ in range(3)) for _ in range(n_layers)]
    s_h = [mk(2, 5, 8) for _ in range(n_layers + 1)]
    t_h = [mk(2, 5, 8) for _ in range(n_layers + 1)]
    want = sum(
        ref.dmd_ref(ref.sim(a), ref.sim(b))
        for sl, tl in zip(s_qkv, t_qkv, strict=True)
        for a, b in zip(sl, tl, strict=True)
    )
    want += sum(ref.dmd_ref(a, b) for a, b in zip(s_h, t_h, strict=True))
    np.testing.assert_allclose(losses.dmd_loss(s_qkv, t_qkv, s_h, t_h), want, rtol=1e-5)
    with pytest.raises(ValueError, match="q/k/v layers"):
        losses.dmd_loss(s_qkv, t_qkv[:1], s_h, t_h)
    with pytest.raises(ValueError, match="student"):
        losses.dmd_distance(s_h[0], s_h[0][:, :3])


@pytest.mark.parametrize("per_example", [False, True])
def test_dmd_gradient_finite_even_at_zero_distance(rng, per_example):
    x = jnp.asarray(rng.normal(size=(2, 2, 6, 4)))
    mask = jnp.asarray(MASK[:2]) if per_example else None
    f = lambda a, b: losses.dmd_distance(
        losses.similarity_matrix(a), losses.similarity_matrix(b), mask, per_example
    )
    g_same = jax.grad(f)(x, x)
    g_diff = jax.grad(f)(x, x[::-1])
    assert np.all(np.isfinite(g_same)) and np.all(np.isfinite(g_diff))
    assert float(jnp.abs(g_diff).max()) > 0
