"""The LSQ α gradient is the same whether the batch is on 1 device or split over 8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bipft_jax.quant import elastic_quantize
from tests.quant import reference as ref


@pytest.mark.parametrize("bits,signed", [(1, True), (1, False), (2, True), (4, False)])
def test_alpha_grad_invariant_to_data_parallel_split(bits, signed):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(16, 12, 32)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    alpha = jnp.asarray(0.6, jnp.float32)

    def alpha_grad(xb, gb, a):
        _, pull = jax.vjp(lambda s: elastic_quantize(xb, s, bits, signed), a)
        return pull(gb)[0]

    one = jax.jit(alpha_grad)(jax.device_put(x, jax.devices()[0]), g, alpha)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = NamedSharding(mesh, P("data"))
    xs, gs = jax.device_put(x, shard), jax.device_put(g, shard)
    assert len(xs.addressable_shards) == 8
    eight = jax.jit(alpha_grad, in_shardings=(shard, shard, None))(xs, gs, alpha)
    _, want = ref.elastic_grads(x.astype(np.float64), 0.6, g.astype(np.float64), bits, signed)
    np.testing.assert_allclose(float(one), want, rtol=1e-4)
    np.testing.assert_allclose(float(eight), float(one), rtol=1e-5)
    # The references' per-device numel would have scaled it by sqrt(8): make sure we do not.
    assert abs(float(eight) / float(one) - 1) < 1e-3


def test_numel_multiplier_makes_accumulation_exact():
    """k micro-batches with multiplier k sum to the full-batch α gradient of a mean loss."""
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    alpha = jnp.asarray(0.7)

    def loss(a, xb, tb, k):
        return jnp.mean((elastic_quantize(xb, a, 1, True, k) - tb) ** 2)

    full = jax.grad(loss)(alpha, x, t, 1)
    k = 4
    micro = sum(
        jax.grad(loss)(alpha, xb, tb, k) for xb, tb in zip(jnp.split(x, k), jnp.split(t, k))
    )
    np.testing.assert_allclose(float(micro) / k, float(full), rtol=1e-5)
