"""A real `bipft finetune` process: a successful run prints only the project's own lines (library
warnings go to the workdir's bipft.log); a first Ctrl-C saves a checkpoint and exits 0 like SIGTERM,
a second exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.glue.helpers import ROOT, TINY

pytestmark = pytest.mark.slow


def _cmd(workdir: Path, *extra: str) -> list[str]:
    flags = [f"--config.{o}" for o in [*TINY, *extra]]
    return [sys.executable, "-m", "bipft_jax.cli", "finetune", "--config",
            f"{ROOT}/configs/glue/bipft.py:rte", "--workdir", str(workdir), *flags]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BIPFT_DEBUG"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return env


def test_successful_run_prints_only_its_own_lines(tmp_path, shared_data):
    done = subprocess.run(_cmd(tmp_path / "w"), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines and all(line.startswith(("[rte bipft]", "rte bipft:")) for line in lines), lines
    # Orbax's warnings were not lost: they are in the log file.
    assert "absl" in (tmp_path / "w" / "bipft.log").read_text()


def _start_and_wait_for_step(workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(workdir, "train.max_steps=100000", "train.eval_every=0"),
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:
        if "| loss" in line:  # the first logged step: the loop is running
            return proc
    proc.wait()
    pytest.fail(f"no step was logged: {proc.stderr.read()[-3000:]}")


def _steps_saved(workdir: Path) -> list[int]:
    ckpts = workdir / "0_bipft" / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_first_ctrl_c_saves_and_exits_0(tmp_path, shared_data):
    proc = _start_and_wait_for_step(tmp_path / "w")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "rerun the same command to continue" in out
    assert err.strip().splitlines() == [
        "interrupt: saving a checkpoint at the current step (Ctrl-C again to quit now)"
    ]
    assert _steps_saved(tmp_path / "w"), "Ctrl-C saved no checkpoint"


def test_second_ctrl_c_exits_at_once(tmp_path, shared_data):
    proc = _start_and_wait_for_step(tmp_path / "w")
    proc.send_signal(signal.SIGINT)
    assert proc.stderr.readline().startswith("interrupt: saving")  # the first one was handled
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 30
