"""One traced quantizer gives value, codes and scale (`binarize_weight`, `elastic_quantized`).

References: NumPy formulas (methods.md §2) for the codes and scales; the value
and its gradients against the value-only quantizers (`quantize_weight`, `elastic_quantize`),
whose gradients are checked against closed forms in test_ste_and_weights / test_elastic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.quant import (
    WeightQuant,
    binarize_weight,
    elastic_quantize,
    elastic_quantized,
    quantize_weight,
)

WEIGHT_CONFIGS = [
    WeightQuant("bwn"),
    WeightQuant("bwn", "channel", "tensor", -1),
    WeightQuant("bwn", "channel", "channel", 0),
    WeightQuant("bibert", channel_axis=-1),
    WeightQuant("bibert", channel_axis=0),
]


@pytest.mark.parametrize(
    "cfg", WEIGHT_CONFIGS, ids=lambda c: f"{c.method}-{c.scale}-{c.channel_axis}"
)
def test_binarize_weight_parts_match_numpy_and_value_only_quantizer(cfg):
    rng = np.random.default_rng(7)
    w = jnp.asarray(rng.normal(size=(24, 10)) * 0.05 + 0.01, jnp.float32)
    g = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    q, pull = jax.vjp(lambda v: binarize_weight(v, cfg).value, w)
    parts = binarize_weight(w, cfg)
    wn = np.asarray(w, np.float64)
    per_channel = cfg.method == "bibert" or cfg.scale == "channel"
    centre_channel = cfg.method == "bibert" or cfg.center == "channel"
    axes = tuple(a for a in range(2) if not (per_channel and a == cfg.channel_axis % 2))
    caxes = tuple(a for a in range(2) if not (centre_channel and a == cfg.channel_axis % 2))
    want_codes = np.sign(wn - wn.mean(axis=caxes, keepdims=True))
    want_m = np.abs(wn).mean(axis=axes, keepdims=True)
    np.testing.assert_array_equal(np.asarray(parts.codes), want_codes)
    np.testing.assert_allclose(np.asarray(parts.scale), want_m, rtol=1e-6)
    # value == codes · m exactly, and equal to the value-only binarizer with its gradient.
    np.testing.assert_array_equal(np.asarray(q), np.asarray(parts.codes) * np.asarray(parts.scale))
    want_q, want_pull = jax.vjp(lambda v: quantize_weight(v, cfg), w)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(want_q))
    np.testing.assert_array_equal(np.asarray(pull(g)[0]), np.asarray(want_pull(g)[0]))
    np.testing.assert_allclose(np.asarray(q, np.float64), want_codes * want_m, rtol=1e-6)


def test_binarize_weight_drops_split_where_scale_varies_along_contracted_axis():
    w = jnp.asarray(np.random.default_rng(8).normal(size=(12, 6)), jnp.float32)
    per_output = WeightQuant(
        "bwn", "channel", "tensor", -1
    )  # m over the input axis: one per column
    per_input = WeightQuant("bwn", "channel", "tensor", 0)  # m varies along the input axis
    assert binarize_weight(w, per_output, contract_axis=0).codes is not None
    dropped = binarize_weight(w, per_input, contract_axis=0)
    assert dropped.codes is None and dropped.scale is None
    np.testing.assert_array_equal(
        np.asarray(dropped.value), np.asarray(quantize_weight(w, per_input))
    )
    plain = binarize_weight(w, WeightQuant("none"))
    assert plain.value is w and plain.codes is None


def test_codes_and_scale_carry_no_gradient():
    w = jnp.asarray(np.random.default_rng(9).normal(size=(8, 4)), jnp.float32)
    grad = jax.grad(lambda v: jnp.sum(binarize_weight(v, WeightQuant("bwn")).scale ** 2))(w)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    x = jnp.asarray(np.random.default_rng(10).normal(size=(5, 7)), jnp.float32)
    ga = jax.grad(lambda a: jnp.sum(elastic_quantized(x, a, 1, True, 1, False).codes * 3.0))(
        jnp.float32(0.7)
    )
    assert float(ga) == 0.0


@pytest.mark.parametrize("bits,signed", [(1, True), (1, False), (2, True), (2, False)])
def test_elastic_quantized_matches_value_only_quantizer(bits, signed):
    rng = np.random.default_rng(11 + bits)
    x = jnp.asarray(rng.normal(size=(6, 9)), jnp.float32)
    alpha = jnp.asarray(0.6, jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    split = elastic_quantized(x, alpha, bits, signed, 3, shift_min=False)
    y, pull = jax.vjp(lambda v, a: elastic_quantized(v, a, bits, signed, 3, False).value, x, alpha)
    want_y, want_pull = jax.vjp(
        lambda v, a: elastic_quantize(v, a, bits, signed, 3, False), x, alpha
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y))
    for got, want in zip(pull(g), want_pull(g), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    xn = np.asarray(x, np.float64)
    if signed and bits == 1:
        want_codes = np.sign(xn)
    else:
        qn, qp = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        want_codes = np.clip(np.round(xn / 0.6), qn, qp)
    np.testing.assert_array_equal(np.asarray(split.codes), want_codes)
    np.testing.assert_array_equal(np.asarray(split.codes) * np.float32(split.scale), np.asarray(y))


def test_elastic_quantized_has_no_split_with_a_min_offset():
    x = jnp.asarray(np.random.default_rng(12).normal(size=(4, 5)), jnp.float32)
    q = elastic_quantized(x, jnp.float32(0.3), 2, False, 1, shift_min=True)
    assert q.codes is None and q.scale is None
    np.testing.assert_array_equal(
        np.asarray(q.value), np.asarray(elastic_quantize(x, jnp.float32(0.3), 2, False, 1, True))
    )
