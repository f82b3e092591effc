"""`bipft finetune --distributed`: two local processes (one CPU device each, gloo collectives)
train like one process holding both devices: same losses, same dev metrics, one result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.multiprocess import run_processes

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "chain=fp", "model.size=tiny", "model.num_layers=1", "init.kind=scratch",
    "max_train_rows=64", "max_eval_rows=32", "train.max_steps=4", "train.eval_every=2",
    "train.max_length=32", "train.batch_size=8", "train.eval_batch_size=16", "train.log_every=1",
    "train.async_checkpoint=false",
]  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_data")]


def _cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bipft_jax.cli", "finetune", "--config",
            f"{REPO}/configs/glue/bipft.py:sst2", "--workdir", str(workdir),
            *[f"--config.{o}" for o in TINY], *extra]  # fmt: skip


def _env(devices: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")  # fmt: skip


def _losses(stage: Path) -> list[float]:
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_two_processes_train_like_one(tmp_path):
    one = subprocess.run(_cmd(tmp_path / "one"), env=_env(2), cwd=REPO, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    run_processes(lambda *flags: _cmd(tmp_path / "two", *flags), lambda i: _env(1), timeout=300)
    a, b = tmp_path / "one" / "0_fp", tmp_path / "two" / "0_fp"
    assert len(_losses(a)) == 4
    np.testing.assert_allclose(_losses(b), _losses(a), rtol=1e-5)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["final"]["metrics"]["dev"] == pytest.approx(rb["final"]["metrics"]["dev"])
    assert [h["step"] for h in rb["history"]] == [2, 4]
