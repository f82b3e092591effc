import os
import signal
import time

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from bipft_jax.checkpoint import manager as ckpt
from bipft_jax.parallel import get_rules, make_mesh, replicated, state_shardings
from bipft_jax.train.loop import abstract_state
from tests.parallel import toy


def _state(mesh, rules, seed=0):
    """A toy train state {params, opt_state, step}, born sharded on ``mesh``."""

    def init(rng, tokens):
        params = toy.init_params(rng, tokens)
        return {"params": params, "opt_state": optax.adam(1e-3).init(params), "step": 0}

    tokens = np.zeros((2, 8), np.int32)
    state = toy.born_sharded(init, mesh, rules, jax.random.key(seed), tokens)
    return nn.meta.unbox(state), jax.eval_shape(init, jax.random.key(seed), tokens)


def _target(abstract, mesh, rules):
    """The restore target: shapes of ``abstract`` in the shardings ``rules`` give on ``mesh``."""
    return abstract_state(nn.meta.unbox(state_shardings(abstract, mesh, rules)),
                          nn.meta.unbox(abstract))  # fmt: skip


def _perturb(state, seed):
    """Random (non-init) values so equality checks are meaningful."""
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    new = [
        jax.device_put(rng.normal(size=x.shape).astype(x.dtype), x.sharding)
        if x.dtype == np.float32
        else x
        for x in leaves
    ]
    return jax.tree.unflatten(tree, new)


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_async_save_restore_bit_exact_keep_last_n_and_cadence(tmp_path):
    mesh, rules = make_mesh({"fsdp": -1}), get_rules("fsdp")
    state, abstract = _state(mesh, rules)
    target = _target(abstract, mesh, rules)
    saved = {}
    with ckpt.CheckpointManager(tmp_path, max_to_keep=2, save_every=10, async_save=True) as m:
        assert m.latest_step() is None
        for step in range(1, 35):
            s = _perturb(state, step)
            if m.save(step, s, extra={"loader": {"epoch": 1, "pos": step}, "hash": "ab12"}):
                saved[step] = jax.device_get(s)
        assert not m.save(31, state)  # off cadence
        assert m.save(33, _perturb(state, 33), extra={"pos": 33}, force=True)
        saved[33] = jax.device_get(_perturb(state, 33))
        m.wait_until_finished()
        assert sorted(saved) == [10, 20, 30, 33]  # the first step (1) is not saved
        assert m.all_steps() == [30, 33]  # keep-last-2
        assert m.latest_step() == 33
        restored, extra = m.restore(target)
        assert extra == {"pos": 33}
        _assert_same(restored, saved[33])
        restored, extra = m.restore(target, step=30)
        assert extra == {"loader": {"epoch": 1, "pos": 30}, "hash": "ab12"}
        _assert_same(restored, saved[30])
        leaf = restored["params"]["Dense_0"]["kernel"]
        assert leaf.sharding == target["params"]["Dense_0"]["kernel"].sharding
        with pytest.raises(FileNotFoundError, match=r"step 10 .* available steps: \[30, 33\]"):
            m.restore(target, step=10)
    # A fresh manager (a resumed run) sees the same checkpoints.
    with ckpt.CheckpointManager(tmp_path, max_to_keep=2, save_every=10) as m:
        assert m.latest_step() == 33


def test_restore_onto_a_different_mesh(tmp_path):
    fsdp_mesh, fsdp_rules = make_mesh({"fsdp": -1}), get_rules("fsdp")
    state, abstract = _state(fsdp_mesh, fsdp_rules)
    state = _perturb(state, 7)
    kernel = state["params"]["Dense_0"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (toy.EMBED // 8, toy.MLP)
    with ckpt.CheckpointManager(tmp_path, save_every=1) as m:
        m.save(5, state)
    tp_mesh, tp_rules = make_mesh({"data": 2, "tensor": 4}), get_rules("tp")
    target = _target(abstract, tp_mesh, tp_rules)
    with ckpt.CheckpointManager(tmp_path, save_every=1) as m:
        restored, extra = m.restore(target)
    assert extra == {}
    _assert_same(restored, jax.device_get(state))
    new_kernel = restored["params"]["Dense_0"]["kernel"]
    assert new_kernel.sharding.mesh.shape == tp_mesh.shape
    assert new_kernel.addressable_shards[0].data.shape == (toy.EMBED, toy.MLP // 4)


def test_restore_without_checkpoint_names_directory(tmp_path):
    with (
        ckpt.CheckpointManager(tmp_path / "run") as m,
        pytest.raises(FileNotFoundError, match="no checkpoint to restore in .*run/checkpoints"),
    ):
        m.restore()
    with pytest.raises(ValueError, match="save_every must be >= 1"):
        ckpt.CheckpointManager(tmp_path, save_every=0)


def test_sigterm_sets_flag_and_loop_saves_then_exits(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt.clear_preemption()
    try:
        assert ckpt.install_sigterm_handler()
        assert not ckpt.preemption_requested()
        mesh = make_mesh({"data": -1})
        state = {"w": jax.device_put(np.arange(8.0, dtype=np.float32))}
        last = None
        with ckpt.CheckpointManager(tmp_path, save_every=100) as m:
            for step in range(1, 1000):
                state = {"w": state["w"] + 1.0}
                if step == 7:
                    os.kill(os.getpid(), signal.SIGTERM)  # a real signal to ourselves
                    time.sleep(0.01)  # Python runs handlers between bytecodes
                m.save(step, state)
                if m.reached_preemption(step):
                    m.save(step, state, extra={"preempted": True}, force=True)
                    last = step
                    break
            assert last == 7
            restored, extra = m.restore(
                {"w": jax.ShapeDtypeStruct((8,), np.float32, sharding=replicated(mesh))}
            )
        assert extra == {"preempted": True}
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(8.0) + 7)
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.clear_preemption()
