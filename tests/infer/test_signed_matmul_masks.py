"""`signed_matmul` picks the right plane combination: zero-free activations against a packed
weight that has exact zeros (a mask plane), and zeros on either side, on both kernels."""

import jax
import numpy as np
import pytest

from bipft_jax.infer.kernels import signed_matmul
from bipft_jax.infer.packing import pack_matrix


@pytest.mark.parametrize("kernel", ["xla", "native"])
@pytest.mark.parametrize("a_zeros", [False, True])
@pytest.mark.parametrize("w_zeros", [False, True])
def test_signed_matmul_against_numpy(kernel, a_zeros, w_zeros):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 6, 70)).astype(np.float32)  # 70 bits: a padded last word
    w = rng.standard_normal((9, 70)).astype(np.float32)
    if a_zeros:
        a[rng.random(a.shape) < 0.1] = 0.0
    if w_zeros:
        w[rng.random(w.shape) < 0.1] = 0.0
    packed_w = pack_matrix(w, with_mask=None)  # a mask plane iff w has zeros
    assert (packed_w.mask is not None) == w_zeros
    got = jax.jit(signed_matmul, static_argnums=(2,))(a, packed_w, kernel)
    want = np.sign(a).astype(np.float64) @ np.sign(w).astype(np.float64).T
    np.testing.assert_array_equal(np.asarray(got), want)
