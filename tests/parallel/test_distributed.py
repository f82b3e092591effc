"""Two real local processes joined with ``maybe_initialize_distributed`` (gloo CPU collectives)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bipft_jax.parallel.distributed import EXIT_CODE_TIMEOUT, maybe_initialize_distributed
from tests.multiprocess import free_port
from tests.parallel import dist_worker

REPO = Path(__file__).resolve().parents[2]


def _spawn(addr: str, nproc: int, pid: int, timeout_s: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tests.parallel.dist_worker", "pretrain", "--distributed"]
    cmd += ["--coordinator_address", addr, "--num_processes", str(nproc), "--process_id", str(pid)]
    return subprocess.Popen(
        [*cmd, "--distributed_timeout_s", str(timeout_s), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_agree_with_single_process_sum_and_share_a_checkpoint(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    procs = [_spawn(addr, 2, pid, 60, "--ckpt_dir", str(tmp_path)) for pid in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    expected = dist_worker.full_data().sum(axis=0)
    for o in outs:
        assert o["process_count"] == 2 and o["device_count"] == 4
        assert o["global_shape"] == [dist_worker.ROWS, dist_worker.COLS]
        np.testing.assert_allclose(o["sum"], expected, rtol=1e-5)
        np.testing.assert_allclose(o["psum"], expected, rtol=1e-5)
        assert o["ckpt_max_abs_err"] == 0.0  # restored bit-exact onto the new sharding
        assert o["sigterm_handler_installed"] is False  # multi-process: JAX's service decides


def test_coordinator_alone_exits_with_clear_error_in_time():
    start = time.monotonic()
    p = _spawn(f"127.0.0.1:{free_port()}", 2, 0, 3)
    _, err = p.communicate(timeout=90)
    assert p.returncode == EXIT_CODE_TIMEOUT, err[-3000:]
    assert "not all 2 processes joined" in err
    assert "waited 3 s" in err
    assert time.monotonic() - start < 60


def test_worker_without_coordinator_raises_clear_error():
    p = _spawn(f"127.0.0.1:{free_port()}", 2, 1, 2)
    _, err = p.communicate(timeout=90)
    assert p.returncode == 1
    assert "DistributedInitError: process 1 of 2: the coordinator 127.0.0.1:" in err
    assert "did not accept connections within 2 s" in err


def test_argument_errors_and_disabled_flag():
    assert maybe_initialize_distributed(enabled=False) is False
    with pytest.raises(ValueError, match="must be given together"):
        maybe_initialize_distributed("127.0.0.1:1234", None, 0)
    with pytest.raises(ValueError, match=r"--process_id 2 is not in \[0, 2\)"):
        maybe_initialize_distributed("127.0.0.1:1234", 2, 2)
