"""Bit packing against NumPy's packbits and a plain round trip, host and in-graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.infer.packing import (
    PackedSigns,
    num_words,
    pack_bits,
    pack_matrix,
    pack_signs,
    unpack_bits,
    unpack_signs,
)


def _ternary(rng, shape, p_zero=0.2):
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < p_zero] = 0.0
    return x


def _packbits_reference(bits: np.ndarray) -> np.ndarray:
    """uint32 words from np.packbits (little bit order, little-endian words), last axis."""
    by = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-by.shape[-1]) % 4
    by = np.concatenate([by, np.zeros(by.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(by).view("<u4")


@pytest.mark.parametrize("k", [1, 31, 32, 33, 70, 96])
def test_pack_bits_matches_numpy_packbits(k):
    rng = np.random.default_rng(k)
    bits = rng.random((3, 4, k)) < 0.5
    want = _packbits_reference(bits)
    got = pack_bits(bits)
    assert got.dtype == np.uint32 and got.shape == (3, 4, num_words(k))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(jax.jit(pack_bits)(jnp.asarray(bits))), want)
    np.testing.assert_array_equal(unpack_bits(got, k), bits)


def test_pack_along_middle_axis_keeps_position():
    rng = np.random.default_rng(1)
    x = _ternary(rng, (5, 45, 3))
    words = pack_signs(x, axis=1)
    assert words.shape == (5, 2, 3)
    np.testing.assert_array_equal(words, np.moveaxis(pack_signs(np.moveaxis(x, 1, -1)), -1, 1))
    np.testing.assert_array_equal(unpack_bits(words, 45, axis=1), x > 0)


def test_unpack_signs_with_and_without_mask():
    rng = np.random.default_rng(2)
    x = _ternary(rng, (4, 50))
    p = pack_matrix(x)
    assert p.mask is not None and p.shape == (4, 50)
    np.testing.assert_array_equal(p.unpack(), np.sign(x).astype(np.int8))
    # Without a mask plane zeros come back as -1 (they were packed as sign bit 0).
    no_mask = unpack_signs(p.signs, 50, dtype=np.float32)
    np.testing.assert_array_equal(no_mask, np.where(x > 0, 1.0, -1.0))


def test_pack_matrix_mask_only_when_needed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    assert pack_matrix(x).mask is None
    x[2, 7] = 0.0
    assert pack_matrix(x).mask is not None
    w = rng.standard_normal((40, 9)).astype(np.float32)
    pw = pack_matrix(w, axis=0)
    assert pw.signs.shape == (9, 2) and pw.k == 40
    np.testing.assert_array_equal(pw.unpack(np.float32), np.sign(w).T)


def test_in_graph_packing_matches_host_and_is_a_pytree():
    rng = np.random.default_rng(4)
    x = _ternary(rng, (3, 77))
    host = pack_matrix(x, with_mask=True)
    dev = jax.jit(lambda v: pack_matrix(v, with_mask=True))(jnp.asarray(x))
    assert isinstance(dev, PackedSigns) and dev.k == 77
    np.testing.assert_array_equal(np.asarray(dev.signs), host.signs)
    np.testing.assert_array_equal(np.asarray(dev.mask), host.mask)
    back = jax.jit(lambda p: p.unpack(jnp.float32))(dev)
    np.testing.assert_array_equal(np.asarray(back), np.sign(x))


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="with_mask=None"):
        jax.jit(lambda v: pack_matrix(v).signs)(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot hold k=70"):
        unpack_bits(np.zeros((2, 2), np.uint32), 70)
    with pytest.raises(TypeError, match="uint32"):
        unpack_bits(np.zeros((2, 3), np.int32), 70)
