"""bf16 compute (fp32 params, bf16 activations and matmuls) tracks the fp32 loss curve."""

import json

import numpy as np
import pytest

from tests.train.cli_runs import run

pytestmark = pytest.mark.usefixtures("shared_data")


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


@pytest.mark.parametrize("method", ["bipft", "bibert"])
def test_bf16_pretraining_loss_curve_stays_close_to_fp32(tmp_path, method):
    steps = ["--config.train.total_steps=12", f"--config.model.method={method}"]
    curves = {}
    for dtype in ("float32", "bfloat16"):
        out = run(tmp_path / dtype, tmp_path / "cache", *steps, f"--config.model.dtype={dtype}")
        assert out.returncode == 0, out.stderr[-3000:]
        curves[dtype] = _losses(tmp_path / dtype)
    f32, b16 = curves["float32"], curves["bfloat16"]
    assert len(f32) == len(b16) == 12
    assert np.isfinite(b16).all()
    rel = np.abs(b16 - f32) / f32
    assert rel.max() < 0.05, rel  # bf16 rounding, not a different model
    assert b16[-3:].mean() < b16[:3].mean()  # and it trains
