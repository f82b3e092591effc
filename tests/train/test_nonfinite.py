"""The non-finite guard: a NaN/Inf step is not applied, is counted and logged, N in a row stop the
run, and no non-finite state reaches a checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bipft_jax.checkpoint import CheckpointManager, NonFiniteStateError
from bipft_jax.train.loop import (
    LoopHooks,
    NonFiniteLossError,
    TrainState,
    make_train_step,
    run_loop,
)

TX = optax.adam(1e-2)


def _loss(params, batch, rng):
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return jnp.mean(err**2), {}


def _batches(n: int, bad: tuple[int, ...] = (), bad_value: float = np.nan) -> list[dict]:
    """Batch i (1-based step i) is random; the steps in ``bad`` get one ``bad_value`` input."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(1, n + 1):
        b = {"x": rng.normal(size=(8, 4)).astype(np.float32),
             "y": rng.normal(size=(8, 3)).astype(np.float32)}  # fmt: skip
        if i in bad:
            b["x"][3, 1] = bad_value
        out.append(b)
    return out


def _state() -> TrainState:
    params = {"w": jnp.full((4, 3), 0.1, jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    return TrainState(jnp.zeros((), jnp.int32), params, TX.init(params))


def _step(k: int = 1):
    return jax.jit(make_train_step(_loss, TX, k), donate_argnums=(0,))


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize(("k", "bad_value"), [(1, np.nan), (2, np.inf), (2, np.nan)])
def test_bad_step_keeps_params_and_opt_state(k, bad_value):
    step = _step(k)
    state, m = step(_state(), _batches(1)[0])
    assert float(m["nonfinite"]) == 0.0
    before = _host(state)
    state, m = step(state, _batches(1, bad=(1,), bad_value=bad_value)[0])
    assert float(m["nonfinite"]) == 1.0 and not np.isfinite(float(m["loss"]))
    after = _host(state)
    assert int(after.step) == 2  # the batch is consumed: a resumed run repeats exactly
    jax.tree.map(np.testing.assert_array_equal, (after.params, after.opt_state),
                 (before.params, before.opt_state))  # fmt: skip


def test_skipped_steps_equal_a_run_without_those_batches():
    """Independent reference: skipping steps 3 and 4 == never seeing batches 3 and 4 (Adam's
    count does not advance on a skipped step; the toy loss ignores the RNG)."""
    data = _batches(8, bad=(3, 4))
    logged = {}
    hooks = LoopHooks(on_log=lambda s, m, dt: logged.__setitem__(s, m))
    guarded, status = run_loop(_state(), _step(), iter(data), 0, 8, log_every=1, hooks=hooks)
    ref = _state()
    step = _step()
    for i, b in enumerate(data, start=1):
        if i not in (3, 4):
            ref, _ = step(ref, b)
    assert status == "done" and int(guarded.step) == 8
    np.testing.assert_allclose(_host(guarded.params)["w"], _host(ref.params)["w"], rtol=1e-6)
    assert [logged[s]["nonfinite"] for s in range(1, 9)] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert [logged[s]["skipped_nonfinite"] for s in (2, 3, 4, 8)] == [0, 1, 2, 2]


def test_n_in_a_row_stop_and_checkpoints_stay_good(tmp_path, capsys):
    """Steps 4.. are all NaN; max 3 in a row. Every checkpoint (saved every step, keep 2)
    holds the last good params, so rotation never drops the newest good state."""
    data = _batches(20, bad=tuple(range(4, 21)))
    with CheckpointManager(tmp_path, max_to_keep=2, save_every=1) as ckpt:
        good = {}
        with pytest.raises(NonFiniteLossError, match="steps 4-6: 3 steps in a row"):
            run_loop(_state(), _step(), iter(data), 0, 20, checkpoint=ckpt, max_nonfinite=3,
                     hooks=LoopHooks(extra=lambda: {}), log_every=100)  # fmt: skip
        ckpt.wait_until_finished()
        # Step 6 is saved before its flag is read (when step 7 is dispatched); 7 never is.
        assert ckpt.all_steps() == [5, 6]
        for s in ckpt.all_steps():
            state, _ = ckpt.restore(step=s)
            good[s] = state["params"]
    ref = _state()
    for b in data[:3]:
        ref, _ = _step()(ref, b)
    for s, params in good.items():
        np.testing.assert_array_equal(params["w"], _host(ref.params)["w"], err_msg=str(s))
    err = capsys.readouterr().err
    assert "warning: step 4: non-finite loss or gradient norm, update skipped (1 in a row" in err


def test_checkpoint_refuses_a_nonfinite_state(tmp_path):
    state = {"params": {"w": np.ones(3, np.float32), "b": np.array([1.0, np.inf], np.float32)},
             "step": np.int32(5)}  # fmt: skip
    with CheckpointManager(tmp_path, save_every=5) as ckpt:
        assert not ckpt.save(4, state)  # off the cadence: nothing is saved, nothing checked
        with pytest.raises(NonFiniteStateError, match=r"step 5: .*\['params'\]\['b'\]"):
            ckpt.save(5, state)
        with pytest.raises(NonFiniteStateError):
            ckpt.save(6, state, force=True)
        assert ckpt.all_steps() == []


def test_nan_update_with_finite_loss_and_grads_is_skipped():
    """A NaN learning rate makes a NaN update from finite loss and gradients; the guard checks the
    update too, so the params stay as they were."""
    tx = optax.adam(learning_rate=lambda count: jnp.float32(np.nan))
    params = {"w": jnp.full((4, 3), 0.1, jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    before = _host(state)
    state, m = jax.jit(make_train_step(_loss, tx, 1))(state, _batches(1)[0])
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert float(m["nonfinite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, _host(state.params), before.params)


@pytest.mark.parametrize("key", ["lr", "alpha_lr", "end_lr", "weight_decay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_optimizer_numbers_are_refused(key, value):
    from bipft_jax.train.optim import resolve_optimizer_config

    with pytest.raises(ValueError, match=rf"optimizer config '{key}': expected a finite number"):
        resolve_optimizer_config({"lr": 1e-3, key: value})
