"""The fast forms of exact GELU and dropout against their definitions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from bipft_jax.model.layers import Dropout, gelu_erf


def test_gelu_erf_matches_closed_form_and_flax_exact():
    x = np.random.default_rng(0).normal(scale=3.0, size=10_000).astype(np.float32)
    ref = 0.5 * x.astype(np.float64) * (1.0 + erf(x.astype(np.float64) / np.sqrt(2.0)))
    np.testing.assert_allclose(np.asarray(gelu_erf(jnp.asarray(x))), ref, atol=2e-6, rtol=1e-6)
    flax_exact = np.asarray(nn.gelu(jnp.asarray(x), approximate=False))
    np.testing.assert_allclose(np.asarray(gelu_erf(jnp.asarray(x))), flax_exact, atol=2e-6)
    # derivative Φ(x) + x φ(x)
    g = np.asarray(jax.vmap(jax.grad(gelu_erf))(jnp.asarray(x)))
    xd = x.astype(np.float64)
    dref = 0.5 * (1 + erf(xd / np.sqrt(2))) + xd * np.exp(-0.5 * xd**2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(g, dref, atol=1e-5)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_scale_and_determinism(rate):
    x = jnp.ones((64, 33, 130), jnp.float32)  # odd last dim: the 16-bit halves are sliced
    layer = Dropout(rate)
    rngs = {"dropout": jax.random.key(3)}
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs=rngs))
    kept = y != 0
    threshold = round(rate * 65536)
    keep_prob = 1 - threshold / 65536
    n = kept.size
    assert abs(kept.mean() - keep_prob) < 4 * np.sqrt(keep_prob * (1 - keep_prob) / n)
    np.testing.assert_allclose(y[kept], 1.0 / keep_prob, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01  # unbiased
    # Same key, same mask; another key, another mask; deterministic is the identity.
    y2 = np.asarray(layer.apply({}, x, deterministic=False, rngs=rngs))
    np.testing.assert_array_equal(y, y2)
    y3 = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(4)}))
    assert (y3 != y).any()
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, deterministic=True)), x)
    # Rows are not copies of each other (the bit halves are spread over the tensor).
    assert len({kept[i].tobytes() for i in range(kept.shape[0])}) == kept.shape[0]


def test_dropout_gradient_is_the_mask():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    layer = Dropout(0.3)
    rngs = {"dropout": jax.random.key(1)}
    y = layer.apply({}, x, deterministic=False, rngs=rngs)
    g = jax.grad(lambda v: layer.apply({}, v, deterministic=False, rngs=rngs).sum())(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(y / x), rtol=1e-6)
