"""Faults while a checkpoint is written: a failed write (as on a full disk) is one clear error and
a SIGKILL part way leaves the previous step usable; the next run restores it and saves again."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bipft_jax.checkpoint import integrity
from bipft_jax.checkpoint import manager as checkpoint
from tests.checkpoint.save_fault_child import state

ROOT = Path(__file__).resolve().parents[2]


def _child(workdir: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint.save_fault_child", str(workdir), mode],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _rerun_restores_step_1_and_saves_step_2(workdir: Path) -> None:
    """What the next run does: the newest intact step is 1; saving step 2 again works."""
    with checkpoint.CheckpointManager(workdir, save_every=1) as m:
        assert m.latest_step() == 1
        restored, extra = m.restore()
        assert extra == {"loader": 1}
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state(1)["w"]))
        assert m.save(2, state(2), {"loader": 2})
    with checkpoint.CheckpointManager(workdir, read_only=True) as m:
        assert m.all_steps() == [1, 2] and m.verify(2) is None


@pytest.mark.parametrize("mode", ["efbig-async", "efbig-sync"])
def test_refused_write_is_one_clear_error_and_keeps_step_1(tmp_path, mode):
    p = _child(tmp_path, mode)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    result = out.strip().splitlines()[-1]
    assert result.startswith("result ")
    message = result.removeprefix("result ")
    assert "saving a checkpoint in" in message and "File too large" in message
    assert "the complete steps are untouched: [1]" in message
    _rerun_restores_step_1_and_saves_step_2(tmp_path)


def test_no_space_at_commit_is_one_clear_error(tmp_path, monkeypatch):
    """ENOSPC from the last write before the commit (simulated): no step 2, step 1 intact."""

    def full(step_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(step_dir))

    with checkpoint.CheckpointManager(tmp_path, save_every=1) as m:
        m.save(1, state(1), {"loader": 1})
        m.wait_until_finished()
        monkeypatch.setattr(integrity, "write_manifest", full)
        m.save(2, state(2), {"loader": 2})
        with pytest.raises(
            checkpoint.CheckpointWriteError, match=r"No space left on device.*\[1\]"
        ):
            m.wait_until_finished()
    monkeypatch.undo()
    _rerun_restores_step_1_and_saves_step_2(tmp_path)


@pytest.mark.parametrize(
    ("mode", "marker"), [("writing", "writing"), ("hang-commit", "committing")]
)
def test_sigkill_during_async_save_keeps_step_1(tmp_path, mode, marker):
    p = _child(tmp_path, mode)
    assert p.stdout is not None
    for line in p.stdout:
        if line.strip() == marker:
            break
    p.kill()
    p.wait(timeout=60)
    leftovers = [d.name for d in (tmp_path / "checkpoints").iterdir() if "tmp" in d.name]
    assert leftovers == ["2.orbax-checkpoint-tmp"], leftovers  # killed mid-save, not after
    _rerun_restores_step_1_and_saves_step_2(tmp_path)
