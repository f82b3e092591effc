"""Hypothesis property tests: idempotence, scale invariance, gradient masks."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bipft_jax.quant import bwn, elastic_quantize, sign_ste

# Tiny magnitudes are snapped to 0: XLA on CPU flushes denormals, which is not what is tested here.
finite = st.floats(-8, 8, allow_nan=False, width=32).map(lambda v: 0.0 if abs(v) < 1e-6 else v)
matrices = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=finite)
pow2 = st.sampled_from([0.25, 0.5, 2.0, 4.0])
SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(matrices)
def test_sign_idempotent(x):
    s = sign_ste(jnp.asarray(x))
    np.testing.assert_array_equal(sign_ste(s), s)
    assert set(np.unique(np.asarray(s))) <= {-1.0, 0.0, 1.0}


@SETTINGS
@given(matrices, pow2)
def test_bwn_scale_equivariant(w, c):
    """bwn(c·W) = c·bwn(W) for c > 0 (powers of two keep it exact)."""
    a = np.asarray(bwn(jnp.asarray(w * c), True, False, -1))
    b = c * np.asarray(bwn(jnp.asarray(w), True, False, -1))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-30)


@SETTINGS
@given(matrices, pow2, st.sampled_from([(1, True), (1, False), (2, True), (4, False)]))
def test_elastic_scale_equivariant(x, c, case):
    bits, signed = case
    a = elastic_quantize(jnp.asarray(x * c), jnp.asarray(0.75 * c), bits, signed)
    b = c * elastic_quantize(jnp.asarray(x), jnp.asarray(0.75), bits, signed)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@SETTINGS
@given(matrices, st.sampled_from([(1, True), (1, False), (4, True), (8, False)]))
def test_elastic_grad_mask_is_indicator(x, case):
    bits, signed = case
    alpha = 1.25
    g = jax.grad(lambda v: elastic_quantize(v, jnp.asarray(alpha), bits, signed).sum())(
        jnp.asarray(x)
    )
    g = np.asarray(g)
    assert set(np.unique(g)) <= {0.0, 1.0}
    q = (x - (x.min() if not signed and bits > 1 else 0)) / alpha
    lo, hi = (
        (-1, 1)
        if (signed and bits == 1)
        else ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
    )
    np.testing.assert_array_equal(g, ((q >= lo) & (q <= hi)).astype(np.float32))


@SETTINGS
@given(matrices)
def test_unsigned_one_bit_takes_two_values(x):
    y = np.asarray(elastic_quantize(jnp.asarray(x), jnp.asarray(0.5), 1, False))
    assert set(np.unique(y)) <= {0.0, 0.5}
