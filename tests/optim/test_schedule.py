"""LR schedules against BertAdam's `warmup_linear` formula and hand values."""

import math

import numpy as np
import pytest

from bipft_jax.train.optim import make_schedule


def bertadam_warmup_linear(step, warmup_frac, t_total):
    """BertAdam's WarmupLinearSchedule.get_lr_ (a multiplier), from its definition."""
    progress = step / t_total
    if progress < warmup_frac:
        return progress / warmup_frac
    return max((progress - 1.0) / (warmup_frac - 1.0), 0.0)


def test_linear_matches_bertadam_warmup_linear():
    total, frac, peak = 137, 0.1, 3e-4  # fractional warmup (13.7 steps), as BertAdam allows
    sched = make_schedule("linear", peak, frac * total, total)
    for step in range(0, 160):
        want = peak * bertadam_warmup_linear(step, frac, total)
        np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-12)


def test_linear_hand_values_and_end_lr():
    s = make_schedule("linear", 1.0, 10, 110, end_lr=0.2)
    for step, want in [(0, 0.0), (5, 0.5), (10, 1.0), (60, 0.6), (110, 0.2), (500, 0.2)]:
        assert float(s(step)) == pytest.approx(want, abs=1e-6), step
    assert float(make_schedule("linear", 2.0, 0, 10)(0)) == pytest.approx(2.0)


def test_cosine_and_constant():
    peak, end, w, t = 1.0, 0.1, 4, 24
    s = make_schedule("cosine", peak, w, t, end)
    for step in range(0, 30):
        if step < w:
            want = peak * step / w
        else:
            p = min((step - w) / (t - w), 1.0)
            want = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p))
        assert float(s(step)) == pytest.approx(want, abs=1e-6), step
    assert float(s(14)) == pytest.approx((peak + end) / 2, abs=1e-6)
    c = make_schedule("constant", 0.5, 2, None)
    assert [float(c(i)) for i in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
    assert float(make_schedule("constant", 0.5, 0, None)(0)) == 0.5


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("step", 1.0, 0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("linear", 1.0, 10, 10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", 1.0, 0, None)
    with pytest.raises(ValueError, match=">= 0"):
        make_schedule("constant", -1.0, 0, None)
