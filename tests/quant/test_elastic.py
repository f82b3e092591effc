"""Elastic (BiT) binarizers and k-bit LSQ quantizers against the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.quant import elastic_quantize, init_alpha
from tests.quant import reference as ref

CASES = [(bits, signed) for bits in (1, 2, 4, 8) for signed in (True, False)]


def _inputs(rng, shape, alpha, dtype):
    """Random inputs with exact zeros, ties at ±α (clip edges) and at α/2 (rounding tie)."""
    x = rng.normal(size=shape).astype(np.float32) * alpha * 1.3
    x.reshape(-1)[:7] = [0.0, 0.0, alpha, -alpha, alpha / 2, -alpha / 2, 1.5 * alpha]
    return jnp.asarray(x, dtype)


@pytest.mark.parametrize("bits,signed", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("multiplier", [1, 4])
def test_forward_and_vjp(bits, signed, dtype, multiplier):
    rng = np.random.default_rng(bits * 10 + signed)
    alpha = 0.5 if bits == 1 else 0.25  # powers of two: ties are exact in bf16 too
    x = _inputs(rng, (6, 4, 16), alpha, dtype)
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    a = jnp.asarray(alpha, jnp.float32)
    y, pull = jax.vjp(lambda v, s: elastic_quantize(v, s, bits, signed, multiplier), x, a)
    gx, ga = pull(g)
    xn, gn = np.asarray(x, np.float64), np.asarray(g, np.float64)
    assert y.dtype == dtype and gx.dtype == dtype and ga.dtype == jnp.float32
    want_y = ref.elastic(xn, alpha, bits, signed)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y, np.float64), want_y, rtol=tol, atol=tol * alpha)
    want_gx, want_ga = ref.elastic_grads(xn, alpha, gn, bits, signed, multiplier)
    np.testing.assert_allclose(np.asarray(gx, np.float64), want_gx, rtol=tol, atol=tol)
    np.testing.assert_allclose(float(ga), want_ga, rtol=1e-4, atol=1e-6)


def test_one_bit_ties():
    a = jnp.asarray(2.0)
    x = jnp.asarray([0.0, 1.0, 1.0001, 2.0, 2.5, -0.3])
    # unsigned: 1 iff x > α/2 (exactly α/2 rounds half-to-even to 0)
    np.testing.assert_array_equal(elastic_quantize(x, a, 1, False), [0, 0, 2, 2, 2, 0])
    np.testing.assert_array_equal(elastic_quantize(x, a, 1, True), [0, 2, 2, 2, 2, -2])
    # clip-edge masks are inclusive: q = ±1 (signed) and q in {0, 1} (unsigned) pass the gradient
    g = jax.grad(lambda v: elastic_quantize(v, a, 1, True).sum())(jnp.asarray([-2.0, 2.0, 2.01]))
    np.testing.assert_array_equal(g, [1, 1, 0])
    g = jax.grad(lambda v: elastic_quantize(v, a, 1, False).sum())(jnp.asarray([0.0, 2.0, -0.01]))
    np.testing.assert_array_equal(g, [1, 1, 0])


def test_alpha_clamped_but_gradient_flows():
    x = jnp.asarray([0.3, -0.2, 1e-6])
    y = elastic_quantize(x, jnp.asarray(-1.0), 1, True)
    np.testing.assert_allclose(y, [1e-5, -1e-5, 1e-5], rtol=1e-6)
    ga = jax.grad(lambda s: elastic_quantize(x, s, 1, True).sum())(jnp.asarray(-1.0))
    assert ga != 0


@pytest.mark.parametrize("bits,signed", CASES)
def test_alpha_init(bits, signed):
    x = np.random.default_rng(7).normal(size=(4, 33)).astype(np.float32)
    np.testing.assert_allclose(
        float(init_alpha(jnp.asarray(x), bits, signed)),
        ref.alpha_init(x.astype(np.float64), bits, signed),
        rtol=1e-6,
    )


def test_unsigned_kbit_without_min_shift():
    x = np.random.default_rng(8).normal(size=(50,)).astype(np.float32)
    y = elastic_quantize(jnp.asarray(x), jnp.asarray(0.2), 2, False, 1, False)
    np.testing.assert_allclose(
        np.asarray(y), ref.elastic(x.astype(np.float64), 0.2, 2, False, False), rtol=1e-6
    )
