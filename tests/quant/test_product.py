"""Binary products as integer codes first, scales after (`quant/product.py`).

References: NumPy int64 products of the codes with the scales applied in float32 in the
documented order (bit-exact); gradients against the plain product of the quantized values
(what the layer computed before) and a closed form; a model's rows in two batch shapes.
"""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.quant import ActQuant, BinaryDense, DenseQuant, WeightQuant
from bipft_jax.quant.elastic import elastic_quantize
from bipft_jax.quant.product import Quantized, quantized_einsum
from bipft_jax.quant.weights import quantize_weight
from tests.export.helpers import init_params, tiny_config

_CPUINFO = Path("/proc/cpuinfo")
_AVX512 = "avx512f" in _CPUINFO.read_text() if _CPUINFO.exists() else True

BINARY = {
    "bibert": DenseQuant(WeightQuant("bibert"), ActQuant("sign", clip_inclusive=True)),
    "bit": DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed", learnable_bias=True)),
    "bit_unsigned": DenseQuant(
        WeightQuant("bwn", scale="channel"), ActQuant("elastic_unsigned", learnable_bias=True)
    ),
    "w1a32": DenseQuant(WeightQuant("bwn")),
}


def _layer(name: str, in_features: int = 384, features: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    quant = BINARY[name]
    x = jnp.asarray(rng.normal(size=(4, 16, in_features)), jnp.float32)
    layer = BinaryDense(features, quant)
    params = nn.meta.unbox(layer.init(jax.random.key(seed), x))["params"]
    params["bias"] = jnp.asarray(rng.normal(size=features), jnp.float32)
    if quant.input.learnable_bias:
        params["input_quant"]["shift"]["bias"] = jnp.asarray(
            rng.normal(size=in_features) * 0.1, jnp.float32
        )
    return layer, params, x


def _numpy_exact(name: str, params: dict, x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 code product, then · (m·α) + b in float32 (the packed path's order): the result
    with a separate last add, and with the last multiply-add fused (XLA:CPU emits FMAs)."""
    quant = BINARY[name]
    xs = np.asarray(x, np.float32)
    if quant.input.learnable_bias:
        xs = xs + np.asarray(params["input_quant"]["shift"]["bias"], np.float32)
    # m and sign(W - μ) from the binarized kernel (its statistics are tested elsewhere).
    wb = np.asarray(quantize_weight(params["kernel"], quant.weight))
    per_channel = quant.weight.method == "bibert" or quant.weight.scale == "channel"
    m = np.max(np.abs(wb), axis=0) if per_channel else np.max(np.abs(wb))
    w_codes = np.sign(wb)
    alpha = None
    if quant.input.method == "sign":
        x_codes = np.sign(xs)
    elif quant.input.method == "elastic_signed":
        alpha = np.float32(params["input_quant"]["alpha"])
        x_codes = np.sign(xs)
    elif quant.input.method == "elastic_unsigned":
        alpha = np.float32(params["input_quant"]["alpha"])
        x_codes = np.clip(np.round(xs / alpha), 0, 1)
    else:
        return None  # float input: no exact integer product
    dot = (x_codes.astype(np.int64) @ w_codes.astype(np.int64)).astype(np.float32)
    bias = np.asarray(params["bias"], np.float32)
    scale = np.asarray(m, np.float32) * (np.float32(1) if alpha is None else alpha)  # m·α first
    fused = dot.astype(np.float64) * scale + bias  # exact product, one rounding: an FMA
    return dot * scale + bias, fused.astype(np.float32)


@pytest.mark.parametrize("name", ["bibert", "bit", "bit_unsigned"])
def test_binary_dense_is_the_exact_integer_product_then_scales(name):
    layer, params, x = _layer(name)
    got = np.asarray(jax.jit(lambda p, x: layer.apply({"params": p}, x))(params, x))
    separate, fused = _numpy_exact(name, params, x)
    # Every element is a rounding of the exact integer result times m·α: one of the two above,
    # or a few ulps off where the model's own m (a fused mean) rounds unlike NumPy's. A
    # wrong code (centre, threshold) or scales inside the sum (±m terms) are further off.
    exact = (got == separate) | (got == fused)
    magnitude = np.maximum(np.abs(separate), np.abs(separate - np.asarray(params["bias"])))
    near = np.abs(got - separate) <= 4 * np.spacing(magnitude.astype(np.float32))
    assert np.all(exact | near), np.max(np.abs(got - separate))
    assert np.mean(exact) > 0.85, np.mean(exact)


@pytest.mark.parametrize("method", ["bibert", "bit", "bipft"])
def test_model_rows_do_not_depend_on_the_batch_shape(method):
    """Five rows alone (padded to 12) and inside a batch of 128 (padded to 16): identical logits.

    With the scales inside the sum (`x̂ · (m·sign W)`) about half of these logits differed in
    their last bits, enough to flip a BiBERT attention sign on real models."""
    config = tiny_config(method)
    model, params = init_params(config, "classification", seed=1)
    apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask)["logits"])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, config.vocab_size, size=(128, 16))
    lengths = np.concatenate([rng.integers(4, 12, size=5), rng.integers(4, 16, size=123)])
    mask = (np.arange(16) < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    big = np.asarray(apply(params, jnp.asarray(ids), jnp.asarray(mask)))
    small = np.asarray(apply(params, jnp.asarray(ids[:5, :12]), jnp.asarray(mask[:5, :12])))
    if method == "bipft":  # its float estimators round with the shape; the binary parts do not
        np.testing.assert_allclose(big[:5], small, rtol=0, atol=1e-5)
    elif _AVX512:
        np.testing.assert_array_equal(big[:5], small)
    else:  # AVX2 (Zen 2, 2026-12-07): the embedding LayerNorm's row reductions and the FP
        # classifier GEMM vectorize by batch shape (last bits differ; attention bits stay equal)
        np.testing.assert_allclose(big[:5], small, rtol=0, atol=1e-6)  # seen: 6e-8


def _plain_layer(name: str):
    """The layer as it was written before: `x̂ · Ŵ` on the quantized values."""
    quant = BINARY[name]

    def apply(params, x):
        if quant.input.learnable_bias:
            x = x + params["input_quant"]["shift"]["bias"]
        if quant.input.method == "sign":
            from bipft_jax.quant.ste import sign_ste

            x = sign_ste(x, "clipped", 1.0, True)
        elif quant.input.is_elastic:
            signed = quant.input.method == "elastic_signed"
            x = elastic_quantize(x, params["input_quant"]["alpha"], 1, signed)
        return x @ quantize_weight(params["kernel"], quant.weight) + params["bias"]

    return apply


@pytest.mark.parametrize("name", list(BINARY))
def test_gradients_are_those_of_the_plain_product(name):
    layer, params, x = _layer(name, in_features=96, features=24, seed=2)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(4, 16, 24)), jnp.float32)

    def loss(apply):
        return lambda p, x: jnp.sum((apply(p, x) - target) ** 2)

    new = jax.grad(loss(lambda p, x: layer.apply({"params": p}, x)), argnums=(0, 1))(params, x)
    old = jax.grad(loss(_plain_layer(name)), argnums=(0, 1))(params, x)
    flat_new, flat_old = jax.tree.leaves(new), jax.tree.leaves(old)
    assert len(flat_new) == len(flat_old)
    for a, b in zip(flat_new, flat_old, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)
        assert np.any(np.asarray(a) != 0)


def test_einsum_gradient_closed_form_and_zero_cotangents_for_codes():
    """`d/da Σ g·(a·b)` = `g·bᵀ` with the *values*, whatever the codes and scales are."""
    rng = np.random.default_rng(4)
    a_codes = jnp.asarray(rng.choice([-1.0, 1.0], size=(5, 7)), jnp.float32)
    b_codes = jnp.asarray(rng.choice([0.0, 1.0], size=(7, 3)), jnp.float32)
    sa, sb = jnp.float32(0.37), jnp.float32(1.9)
    g = rng.normal(size=(5, 3)).astype(np.float32)

    def f(a_val, b_val, sa, sb):
        out = quantized_einsum(
            "ik,kj->ij", Quantized(a_val, a_codes, sa), Quantized(b_val, b_codes, sb)
        )
        return jnp.sum(out * g)

    a_val, b_val = a_codes * sa, b_codes * sb
    da, db, dsa, dsb = jax.grad(f, argnums=(0, 1, 2, 3))(a_val, b_val, sa, sb)
    np.testing.assert_allclose(np.asarray(da), g @ np.asarray(b_val).T, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(db), np.asarray(a_val).T @ g, rtol=1e-6)
    assert float(dsa) == 0.0 and float(dsb) == 0.0  # scales train through the quantizers' VJPs
    want = (np.asarray(a_codes, np.int64) @ np.asarray(b_codes, np.int64)).astype(np.float32)
    got = quantized_einsum(
        "ik,kj->ij", Quantized(a_val, a_codes, sa), Quantized(b_val, b_codes, sb)
    )
    np.testing.assert_array_equal(np.asarray(got), want * sa * sb)


def test_without_scales_it_is_the_plain_product():
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    got = quantized_einsum("ik,kj->ij", Quantized.plain(a), Quantized.plain(b))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.einsum("ik,kj->ij", a, b)))
