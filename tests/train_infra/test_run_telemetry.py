"""Run telemetry: tokens/s and MFU kept for the metric sinks, data-wait time per step, and the
persistent compilation cache turned on by default."""

import time

import jax
import jax.numpy as jnp
import pytest

from bipft_jax.parallel.distributed import enable_compilation_cache
from bipft_jax.train.loop import LoopHooks, TrainState, run_loop
from bipft_jax.train.metrics import ProgressLogger


def test_progress_keeps_tokens_per_s_and_mfu():
    clock = iter([0.0, 10.0]).__next__
    p = ProgressLogger(100, tokens_per_step=1000, flops_per_token=2e9, device_kind="TPU v4",
                       num_devices=4, clock=clock)  # fmt: skip
    p.start(1)
    line = p.update(11, {"loss": 1.0})  # 10 steps in 10 s: 1000 tok/s
    assert p.speed["tokens_per_s"] == pytest.approx(1000.0)
    peak = p.peak_flops
    assert peak and p.speed["mfu"] == pytest.approx(1000.0 * 2e9 / peak)
    assert f"MFU {100 * p.speed['mfu']:.1f}%" in line


def test_run_loop_logs_data_wait_per_step():
    def batches():
        while True:
            time.sleep(0.05)
            yield {"x": jnp.ones(2)}

    def step(state, batch):
        return state._replace(step=state.step + 1), {"loss": jnp.sum(batch["x"])}

    logged = {}
    hooks = LoopHooks(on_log=lambda s, m, dt: logged.__setitem__(s, m))
    state = TrainState(jnp.zeros((), jnp.int32), {}, {})
    run_loop(state, step, batches(), 0, 4, log_every=2, hooks=hooks, max_nonfinite=None)
    assert sorted(logged) == [1, 2, 4]
    for m in logged.values():
        assert 0.045 <= m["data_wait_s"] < 0.5, m


@pytest.fixture
def no_cache_dir(monkeypatch):
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


def test_compilation_cache_defaults_to_user_cache(tmp_path, monkeypatch, no_cache_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert enable_compilation_cache() == str(tmp_path / "bipft_jax" / "jax")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "bipft_jax" / "jax")
    jax.config.update("jax_compilation_cache_dir", "/elsewhere")  # a user's choice wins
    assert enable_compilation_cache() == "/elsewhere"


def test_compilation_cache_opt_out(monkeypatch, no_cache_dir):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    assert enable_compilation_cache() == ""
    assert not jax.config.jax_compilation_cache_dir
