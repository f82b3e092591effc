"""BinaryDense / ActQuantizer / LearnableBias / calibration against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from bipft_jax.quant import (
    ActQuant,
    ActQuantizer,
    BinaryDense,
    DenseQuant,
    WeightQuant,
    calibrate_alphas,
)
from tests.quant import reference as ref

PRESETS = {
    "fp": DenseQuant(),
    "bibert": DenseQuant(WeightQuant("bibert"), ActQuant("sign", clip_inclusive=True)),
    "bit": DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed", learnable_bias=True)),
    "bit_unsigned": DenseQuant(
        WeightQuant("bwn"), ActQuant("elastic_unsigned", learnable_bias=True)
    ),
    "w1a2": DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed", bits=2, learnable_bias=True)),
}


def _unbox(tree):
    return nn.meta.unbox(tree)


@pytest.mark.parametrize("name", list(PRESETS))
def test_binary_dense_matches_numpy(name):
    quant = PRESETS[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)
    layer = BinaryDense(8, quant)
    params = _unbox(layer.init(jax.random.key(0), x))["params"]
    if quant.input.learnable_bias:  # non-zero β so it is exercised
        params["input_quant"]["shift"]["bias"] = jnp.asarray(rng.normal(size=16) * 0.1, jnp.float32)
    y = layer.apply({"params": params}, x)

    xn = np.asarray(x, np.float64)
    w = np.asarray(params["kernel"], np.float64)
    if quant.input.learnable_bias:
        xn = xn + np.asarray(params["input_quant"]["shift"]["bias"], np.float64)
    if quant.input.method == "sign":
        xq = np.sign(xn)
    elif quant.input.is_elastic:
        alpha = float(params["input_quant"]["alpha"])
        # α was initialised from the batch at init (β was 0 then).
        want_alpha = ref.alpha_init(
            np.asarray(x, np.float64), quant.input.bits, quant.input.method == "elastic_signed"
        )
        np.testing.assert_allclose(alpha, want_alpha, rtol=1e-6)
        xq = ref.elastic(xn, alpha, quant.input.bits, quant.input.method == "elastic_signed")
    else:
        xq = xn
    if quant.weight.method == "bibert":
        wq = ref.bwn(w, True, True, -1)
    elif quant.weight.method == "bwn":
        wq = ref.bwn(w, False, False, -1)
    else:
        wq = w
    want = xq @ wq + np.asarray(params["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-5)


def test_fp_binary_dense_equals_flax_dense():
    x = jax.random.normal(jax.random.key(1), (4, 12))
    ours = BinaryDense(6)
    params = _unbox(ours.init(jax.random.key(2), x))
    theirs = nn.Dense(6).apply(params, x)
    np.testing.assert_allclose(ours.apply(params, x), theirs, rtol=1e-6)


def test_kernel_carries_logical_axes_and_bf16_compute():
    layer = BinaryDense(8, PRESETS["bit"], dtype=jnp.bfloat16, kernel_axes=("embed", "mlp"))
    x = jnp.ones((2, 16), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    spec = nn.get_partition_spec(variables)["params"]
    assert spec["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    assert spec["input_quant"]["shift"]["bias"] == jax.sharding.PartitionSpec("embed")
    assert layer.apply(variables, x).dtype == jnp.bfloat16
    assert _unbox(variables)["params"]["kernel"].dtype == jnp.float32


def test_alpha_survives_serialization():
    x = jax.random.normal(jax.random.key(3), (8, 16)) * 3.0
    q = ActQuantizer(ActQuant("elastic_unsigned"))
    variables = _unbox(q.init(jax.random.key(0), x))
    restored = serialization.from_bytes(
        jax.tree.map(jnp.zeros_like, variables), serialization.to_bytes(variables)
    )
    np.testing.assert_allclose(
        restored["params"]["alpha"], 4 * np.abs(np.asarray(x)).mean(), rtol=1e-6
    )


class _Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        quant = DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed"))
        h = BinaryDense(16, quant, name="first")(x)
        return BinaryDense(4, quant, name="second")(jnp.tanh(h) * 5.0)


def test_calibration_runs_in_forward_order():
    x = jax.random.normal(jax.random.key(4), (6, 8))
    model = _Stack()
    variables = _unbox(model.init(jax.random.key(0), jnp.ones_like(x) * 0.01))
    new = calibrate_alphas(model, variables, x)
    p = new["params"]
    a1 = float(p["first"]["input_quant"]["alpha"])
    np.testing.assert_allclose(a1, 2 * np.abs(np.asarray(x)).mean(), rtol=1e-6)
    # The second α must be computed from the first layer's output *with the calibrated α1*.
    first = BinaryDense(16, DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed")))
    h = first.apply({"params": p["first"]}, x)
    np.testing.assert_allclose(
        float(p["second"]["input_quant"]["alpha"]),
        2 * np.abs(np.tanh(np.asarray(h)) * 5.0).mean(),
        rtol=1e-5,
    )
    assert float(variables["params"]["first"]["input_quant"]["alpha"]) != a1  # input untouched
