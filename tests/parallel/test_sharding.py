import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bipft_jax.parallel import (
    batch_sharding,
    check_logical_names,
    get_rules,
    make_mesh,
    resolve_mesh_shape,
    shard_host_batch,
    state_shardings,
)
from tests.parallel import toy

CASES = {  # preset, mesh shape
    "dp8": ("dp", {"data": -1}),
    "fsdp8": ("fsdp", {"fsdp": -1}),
    "tp2x4": ("tp", {"data": 2, "tensor": 4}),
    "fsdp2_tp4": ("tp", {"fsdp": 2, "tensor": -1}),
}


@pytest.fixture(scope="module")
def reference():
    """Loss and grads of the toy model on one device, no mesh."""
    batch = toy.make_batch(1)
    params = nn.meta.unbox(toy.init_params(jax.random.key(0), batch["tokens"]))
    loss, grads = jax.jit(jax.value_and_grad(toy.loss_fn))(params, batch)
    return batch, jax.device_get(params), float(loss), jax.device_get(grads)


_CACHE: dict = {}


def _sharded_step(preset, shape, batch):
    key = (preset, tuple(sorted(shape.items())))
    if key not in _CACHE:
        _CACHE[key] = _compute_sharded_step(preset, shape, batch)
    return _CACHE[key]


def _compute_sharded_step(preset, shape, batch):
    mesh = make_mesh(shape)
    rules = get_rules(preset)
    params = toy.born_sharded(toy.init_params, mesh, rules, jax.random.key(0), batch["tokens"])
    shardings = nn.meta.unbox(state_shardings(params, mesh, rules))
    params = nn.meta.unbox(params)
    gbatch = shard_host_batch(jax.device_get(batch), mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(
            jax.value_and_grad(toy.loss_fn),
            in_shardings=(shardings, batch_sharding(mesh)),
            out_shardings=(None, shardings),
        )
        loss, grads = step(params, gbatch)
    return mesh, params, loss, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_grads_match_single_device(case, reference):
    batch, ref_params, ref_loss, ref_grads = reference
    mesh, params, loss, grads = _sharded_step(*CASES[case], batch)
    assert len(mesh.devices.flat) == 8
    # Born-sharded init gives the same values as unsharded init (same rng, up to an ulp).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6), params, ref_params
    )
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    jax.tree.map(
        lambda g, r: np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-6),
        grads,
        ref_grads,
    )


def _spec(x):
    return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))


def test_params_sharded_as_rules_say(reference):
    batch = reference[0]
    _, p, _, g = _sharded_step("fsdp", {"fsdp": -1}, batch)
    assert _spec(p["Dense_0"]["kernel"]) == ("fsdp", None)  # (embed, mlp)
    assert p["Dense_0"]["kernel"].addressable_shards[0].data.shape == (2, toy.MLP)
    assert _spec(p["Dense_0"]["bias"]) == (None,)  # mlp is not sharded under fsdp
    assert _spec(g["Dense_1"]["kernel"]) == (None, "fsdp")  # grads follow params
    _, p, _, _ = _sharded_step("tp", {"data": 2, "tensor": 4}, batch)
    kernel = p["Dense_0"]["kernel"]
    assert _spec(kernel) == ("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (toy.EMBED, toy.MLP // 4)  # fsdp has size 1
    assert _spec(p["q"]) == ("fsdp", "tensor", None)  # (embed, heads, kv)
    assert _spec(p["embedding"]) == ("tensor", "fsdp")  # (vocab, embed)
    _, p, _, _ = _sharded_step("dp", {"data": -1}, batch)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(p))


def test_batch_sharding_splits_rows():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    arr = shard_host_batch({"x": x}, mesh)["x"]
    assert arr.sharding.spec == P(("fsdp", "data"))  # order: see test_batch_axis_order.py
    assert {s.data.shape for s in arr.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(arr), x)
    with pytest.raises(ValueError, match="not divisible by the 4 batch shards"):
        shard_host_batch({"x": x[:6]}, mesh)


def test_mesh_shape_resolution_and_errors():
    assert resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert resolve_mesh_shape({"data": 2, "tensor": -1}, 8) == (2, 1, 4)
    assert resolve_mesh_shape([1, 2, 4], 8) == (1, 2, 4)
    assert resolve_mesh_shape(ml_collections.ConfigDict({"fsdp": -1, "tensor": 2}), 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="multiply to 3, which does not divide the 8"):
        resolve_mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
        resolve_mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
        resolve_mesh_shape({"model": 8}, 8)
    mesh = make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}


def test_rules_errors_and_unknown_logical_names():
    with pytest.raises(ValueError, match="unknown sharding preset 'zero'"):
        get_rules("zero")
    custom = get_rules([["batch", ["data", "fsdp"]], ["embed", None]])
    assert custom == (("batch", ("data", "fsdp")), ("embed", None))
    with pytest.raises(ValueError, match="rule #0"):
        get_rules([("batch",)])

    class Typo(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.ones, ("emebd", "mlp"))
            return x @ self.param("w", init, (4, 4))

    abstract = jax.eval_shape(Typo().init, jax.random.key(0), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"'emebd'.*did you mean \['embed'\]"):
        check_logical_names(abstract, get_rules("fsdp"))
    good = jax.eval_shape(toy.init_params, jax.random.key(0), np.ones((2, 8), np.int32))
    check_logical_names(good, get_rules("tp"))
