"""Packed binary matmuls equal the float matmul of the {-1,0,1} / {0,1} values exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.infer.kernels import binary_linear
from bipft_jax.infer.packing import pack_matrix
from bipft_jax.infer.xnor import and_matmul, pairwise_popcount, xnor_matmul

SHAPES = [(5, 70, 3), (4, 32, 7), (3, 100, 6), (2, 1, 4), (6, 300, 5)]


def _values(rng, shape, zeros: bool):
    v = rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)
    if zeros:
        v[rng.random(shape) < 0.25] = 0.0
    return v


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize(
    "a_zeros,b_zeros", [(False, False), (True, False), (False, True), (True, True)]
)
def test_xnor_matmul_exact(m, k, n, a_zeros, b_zeros):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = _values(rng, (m, k), a_zeros)
    b = _values(rng, (k, n), b_zeros)
    pa, pb = pack_matrix(a), pack_matrix(b, axis=0)
    want = (a.astype(np.float64) @ b).astype(np.int32)
    for chunk, wide in [(2, True), (8, True), (3, False)]:
        got = jax.jit(lambda x, y, c=chunk, wd=wide: xnor_matmul(x, y, c, wd))(pa, pb)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("b_zeros", [False, True])
def test_and_matmul_exact(m, k, n, b_zeros):
    rng = np.random.default_rng(k + 7)
    u = (rng.random((m, k)) < 0.4).astype(np.float32)
    b = _values(rng, (k, n), b_zeros)
    pu, pb = pack_matrix(u, with_mask=False), pack_matrix(b, axis=0)
    for wide in (True, False):
        got = jax.jit(lambda x, y, wd=wide: and_matmul(x, y, 2, wd))(pu, pb)
        np.testing.assert_array_equal(np.asarray(got), (u @ b).astype(np.int32))


def test_all_ones_and_all_minus_ones():
    k = 65
    ones = np.ones((3, k), np.float32)
    pa, pb = pack_matrix(ones), pack_matrix(-ones)
    np.testing.assert_array_equal(np.asarray(xnor_matmul(pa, pa)), np.full((3, 3), k))
    np.testing.assert_array_equal(np.asarray(xnor_matmul(pa, pb)), np.full((3, 3), -k))


def test_batched_operands_broadcast():
    """Attention-style [B, H, S, K] x [B, H, D, K] and weights shared across a batch."""
    rng = np.random.default_rng(9)
    q = _values(rng, (2, 3, 5, 40), True)
    v = _values(rng, (2, 3, 4, 40), False)
    got = xnor_matmul(pack_matrix(q), pack_matrix(v))
    np.testing.assert_array_equal(np.asarray(got), np.einsum("bhsk,bhdk->bhsd", q, v))
    w = _values(rng, (40, 6), False)
    got = xnor_matmul(pack_matrix(q), pack_matrix(w, axis=0))
    np.testing.assert_array_equal(np.asarray(got), q @ w)


def test_binary_linear_scaled_float_output():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 7, 90)).astype(np.float32)
    x[0, 1, :5] = 0.0
    w = rng.standard_normal((90, 12)).astype(np.float32)
    w_scale = rng.random(12).astype(np.float32) + 0.5
    alpha = rng.random((2, 7, 1)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    pw = pack_matrix(w, axis=0)
    fn = jax.jit(lambda x, pw, s, a, b: binary_linear(x, pw, s, a, b))
    got = np.asarray(fn(x, pw, w_scale, alpha, bias))
    want = alpha * w_scale * (np.sign(x) @ np.sign(w)) + bias
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)

    # One-plane fast path: correct when there are no zeros, and differs where zeros are.
    fast = jax.jit(lambda x, pw, s: binary_linear(x, pw, s, exact_zeros=False))
    xp = np.where(x == 0, 1.0, x).astype(np.float32)
    want_fast = w_scale * (np.where(x > 0, 1.0, -1.0) @ np.sign(w))
    np.testing.assert_allclose(
        np.asarray(fast(xp, pw, w_scale)), w_scale * (np.sign(xp) @ np.sign(w))
    )
    np.testing.assert_allclose(np.asarray(fast(x, pw, w_scale)), want_fast, rtol=1e-6)

    unsigned = jax.jit(lambda x, pw, s: binary_linear(x, pw, s, unsigned=True))
    want_u = w_scale * ((x > 0).astype(np.float32) @ np.sign(w))
    np.testing.assert_allclose(np.asarray(unsigned(x, pw, w_scale)), want_u, rtol=1e-6)


def test_wide_path_leaves_global_x64_off():
    a = pack_matrix(np.ones((2, 70), np.float32))
    assert np.asarray(xnor_matmul(a, a)).dtype == np.int32
    assert jnp.asarray(np.ones(2, np.int64)).dtype == jnp.int32  # x64 still disabled outside


def test_errors_name_the_mismatch():
    a = pack_matrix(np.ones((2, 40), np.float32))
    b = pack_matrix(np.ones((3, 41), np.float32))
    with pytest.raises(ValueError, match="a.k=40, b.k=41"):
        xnor_matmul(a, b)
    with pytest.raises(ValueError, match="K=41 but the packed weight has k=40"):
        binary_linear(jnp.ones((2, 41)), a, 1.0)
    with pytest.raises(ValueError, match="kernel must be 'xla' or 'native'"):
        binary_linear(jnp.ones((2, 40)), a, 1.0, kernel="cuda")
    with pytest.raises(ValueError, match="no mask plane"):
        and_matmul(pack_matrix(np.zeros((2, 40), np.float32), with_mask=True), a)
    with pytest.raises(ValueError, match="chunk"):
        pairwise_popcount(jnp.bitwise_xor, (a.signs,), (a.signs,), chunk=0)
