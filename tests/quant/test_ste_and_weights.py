"""sign/bool STEs and the weight binarizers against the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.quant import WeightQuant, bibert_weight, bool_ste, bwn, quantize_weight, sign_ste
from tests.quant import reference as ref

DTYPES = [jnp.float32, jnp.bfloat16]


def _inputs(rng, shape, dtype, clip=1.0):
    """Random normals plus exact zeros and exact ties at ±clip."""
    x = rng.normal(size=shape).astype(np.float32) * 1.5
    flat = x.reshape(-1)
    flat[:6] = [0.0, 0.0, clip, -clip, clip, -clip]
    return jnp.asarray(x, dtype)


def _vjp(f, x, g):
    y, pull = jax.vjp(f, x)
    return y, pull(g)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "ste,clip,inclusive",
    [
        ("identity", 1.0, True),
        ("clipped", 1.0, True),
        ("clipped", 1.0, False),
        ("clipped", 0.5, True),
        ("approx", 1.0, True),
        ("approx", 2.0, True),
    ],
)
def test_sign_forward_and_vjp(dtype, ste, clip, inclusive):
    rng = np.random.default_rng(0)
    x = _inputs(rng, (7, 33), dtype, clip)
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    y, gx = _vjp(lambda v: sign_ste(v, ste, clip, inclusive), x, g)
    xn, gn = np.asarray(x, np.float64), np.asarray(g, np.float64)
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float64), ref.sign(xn))
    assert np.asarray(y == 0).sum() >= 2  # sign(0) = 0 kept
    want = ref.ste_grad(xn, gn, ste, clip, inclusive)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(gx, np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bool_forward_and_vjp(dtype):
    rng = np.random.default_rng(1)
    x = _inputs(rng, (5, 40), dtype)
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    y, gx = _vjp(lambda v: bool_ste(v, "clipped", 1.0, False), x, g)
    xn = np.asarray(x, np.float64)
    np.testing.assert_array_equal(np.asarray(y, np.float64), (xn > 0).astype(np.float64))
    want = ref.ste_grad(xn, np.asarray(g, np.float64), "clipped", 1.0, False)
    np.testing.assert_allclose(np.asarray(gx, np.float64), want, atol=1e-6)
    assert np.all(np.asarray(gx)[np.abs(xn) == 1.0] == 0)  # BiBERT's |x| < 1 is exclusive


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "scale,center",
    [("tensor", "tensor"), ("channel", "tensor"), ("channel", "channel"), ("tensor", "channel")],
)
@pytest.mark.parametrize("channel_axis", [0, -1])
def test_bwn_forward_identity_vjp(dtype, scale, center, channel_axis):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(24, 10)) * 0.05 + 0.01, dtype)
    g = jnp.asarray(rng.normal(size=w.shape), dtype)
    cfg = WeightQuant("bwn", scale, center, channel_axis)
    y, gw = _vjp(lambda v: quantize_weight(v, cfg), w, g)
    want = ref.bwn(np.asarray(w, np.float64), scale == "channel", center == "channel", channel_axis)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(gw), np.asarray(g))  # identity STE
    # Exactly two magnitudes-with-sign per scale group: |y| is constant along reduced axes.
    mags = np.abs(np.asarray(y, np.float64))
    if scale == "tensor":
        assert len(np.unique(mags[mags > 0])) == 1


def test_bwn_embedding_row_scale_global_centre():
    """BiT's word embedding: per-row (token) scale, global mean."""
    rng = np.random.default_rng(3)
    e = rng.normal(size=(50, 16)).astype(np.float32)
    y = bwn(jnp.asarray(e), True, False, 0)
    m = np.abs(e).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y), m * np.sign(e - e.mean()), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", [0, -1])
def test_bibert_weight_forward_and_vjp(dtype, channel_axis):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(12, 9)) * 0.8
    # A channel with centred values exactly at the ±1 clipping edges (kept: clamp is inclusive).
    if channel_axis == 0:
        w[0] = [1.0, -1.0, 0.0, 0.0, 3.0, -3.0, 0.5, -0.5, 0.0]
    else:
        w[:, 0] = [1.0, -1.0, 0.0, 0.0, 3.0, -3.0, 0.5, -0.5, 0.0, 2.0, -2.0, 0.0]
    w = jnp.asarray(w, dtype)
    g = jnp.asarray(rng.normal(size=w.shape), dtype)
    y, gw = _vjp(lambda v: bibert_weight(v, channel_axis), w, g)
    wn, gn = np.asarray(w, np.float64), np.asarray(g, np.float64)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref.bwn(wn, True, True, channel_axis), rtol=tol, atol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(gw, np.float64), ref.bibert_weight_grad(wn, gn, channel_axis), rtol=tol, atol=tol
    )


def test_binarizers_jit_vmap_grad():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, 8, 16)), jnp.float32)
    f = jax.jit(jax.vmap(lambda v: bwn(v, True, True, -1)))
    np.testing.assert_allclose(
        np.asarray(f(x)), np.stack([ref.bwn(np.asarray(v), True, True, -1) for v in x]), rtol=1e-6
    )
    gs = jax.jit(jax.grad(lambda v: jnp.sum(sign_ste(v) * v)))(x)
    assert np.isfinite(np.asarray(gs)).all()
