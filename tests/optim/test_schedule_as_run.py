"""`schedule_steps_per_update`: BiPFT's pretraining schedule as accelerate ran it (methods.md §11).

The reference steps a transformers `linear` scheduler once per process after every update
(`run_pretrain_binary.py:404-414`, accelerate's `AcceleratedScheduler`); the test does exactly
that with the real transformers scheduler and compares the lr of every update.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bipft_jax.train.optim import lr_schedule, make_optimizer, make_schedule


def _stepped_lrs(peak, warmup, total, processes, updates):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=peak)
    sched = transformers.get_scheduler(
        "linear", optimizer=opt, num_warmup_steps=warmup, num_training_steps=total
    )
    lrs = []
    for _ in range(updates):
        lrs.append(opt.param_groups[0]["lr"])  # the lr this update uses
        opt.step()  # no gradients: a no-op, keeps torch's call order
        for _ in range(processes):  # AcceleratedScheduler.step: once per process
            sched.step()
    return np.array(lrs)


@pytest.mark.parametrize("processes", [1, 8, 3])
def test_matches_transformers_scheduler_stepped_per_process(processes):
    peak, warmup, total = 2e-4, 50, 4000
    want = _stepped_lrs(peak, warmup, total, processes, total // processes + 20)
    cfg = dict(lr=peak, warmup_steps=warmup, total_steps=total, schedule_steps_per_update=processes)
    got = np.array(lr_schedule(cfg)(jnp.arange(len(want))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=peak * 1e-6)  # float32 steps


def test_bipft_as_run_landmarks():
    """bert_base.sh on 8 GPUs: warm-up ends at update 625, lr is 0 from update 62,500."""
    s = make_schedule("linear", 2e-4, 5000, 500_000, steps_per_update=8)
    assert float(s(312)) == pytest.approx(2e-4 * 312 * 8 / 5000, rel=1e-6)
    assert float(s(625)) == pytest.approx(2e-4, rel=1e-6)
    assert float(s(62_499)) > 0 and float(s(62_500)) == 0.0 and float(s(400_000)) == 0.0
    nominal = make_schedule("linear", 2e-4, 5000, 500_000)
    assert float(nominal(625)) == pytest.approx(2e-4 * 625 / 5000, rel=1e-6)


def test_optimizer_applies_the_factor():
    """Adam on a constant gradient moves a parameter by ≈ lr per update: read the lr back."""
    k, lr, warmup, total = 4, 0.1, 8, 40
    tx = make_optimizer(
        dict(lr=lr, warmup_steps=warmup, total_steps=total, schedule_steps_per_update=k)
    )
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    moves = []
    for _ in range(14):
        upd, state = tx.update({"w": jnp.ones(())}, state, params)
        params = optax.apply_updates(params, upd)
        moves.append(-float(upd["w"]))
    want = [float(make_schedule("linear", lr, warmup, total)(k * n)) for n in range(14)]
    np.testing.assert_allclose(moves, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_factor_names_the_key(bad):
    with pytest.raises(ValueError, match="schedule_steps_per_update"):
        make_optimizer(dict(lr=1e-3, total_steps=10, schedule_steps_per_update=bad))
