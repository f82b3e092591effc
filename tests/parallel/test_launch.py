"""The launch scripts, run for real with stand-ins for gcloud / scontrol / srun / bipft."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.multiprocess import REPO, free_port
from tests.parallel import dist_worker

FAKE_SRUN = r"""#!/usr/bin/env python3
# Emulates `srun --export=ALL,K=V,... CMD...` for SLURM_NTASKS tasks on this machine.
import os, subprocess, sys
args, env = sys.argv[1:], dict(os.environ)
while args[0].startswith("--"):
    opt = args.pop(0)
    if opt.startswith("--export="):
        for kv in opt.split("=", 1)[1].split(",")[1:]:
            k, v = kv.split("=", 1)
            env[k] = v
n = int(env["SLURM_NTASKS"])
procs = [subprocess.Popen(args, env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
         for i in range(n)]
sys.exit(max(p.wait() for p in procs))
"""


def _fake_bin(tmp_path: Path, echo: bool) -> Path:
    """A PATH directory with fake scontrol, srun, gcloud and `bipft` (runs the worker, or
    with ``echo`` prints its argv as JSON)."""
    bin_dir = tmp_path / ("bin_echo" if echo else "bin")
    bin_dir.mkdir(exist_ok=True)
    worker = "import json, sys; print(json.dumps(sys.argv[1:]))" if echo else None
    files = {
        # the pause makes a reader that stops after one line (`head -n 1`) close the pipe
        # first, so the second write gets SIGPIPE (exit 141 under pipefail) every time
        "scontrol": "#!/bin/sh\necho 127.0.0.1\nsleep 0.3\necho 127.0.0.2\n",
        "srun": FAKE_SRUN,
        # gcloud ... --command CMD: run CMD with bash here (as one worker would).
        "gcloud": '#!/usr/bin/env bash\nwhile [[ "$1" != --command ]]; do shift; done\n'
        'exec bash -c "$2"\n',
        "bipft": f"#!/usr/bin/env python3\n{worker}\n"
        if echo
        else f'#!/bin/sh\nexec {sys.executable} -m tests.parallel.dist_worker "$@"\n',
    }
    for name, text in files.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run(script, args, tmp_path, echo=False, **env):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    full_env["PATH"] = f"{_fake_bin(tmp_path, echo)}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", script, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _check_worker_json(text: str):
    out = json.loads(text.strip().splitlines()[-1])
    assert out["process_count"] == 2
    np.testing.assert_allclose(out["psum"], dist_worker.full_data().sum(axis=0), rtol=1e-5)


def test_local_multiprocess_runs_two_processes(tmp_path):
    p = _run(
        "launch/local_multiprocess.sh",
        ["2", "--", "--distributed_timeout_s", "60"],
        tmp_path,
        PORT=str(free_port()),
        LOG_DIR=str(tmp_path / "logs"),
        BIPFT_CMD=f"{sys.executable} -m tests.parallel.dist_worker",
    )
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    for i in range(2):
        _check_worker_json((tmp_path / "logs" / f"process_{i}.log").read_text())
    _check_worker_json(p.stdout)  # process 0 also prints to the console


def test_local_multiprocess_reports_a_failed_process(tmp_path):
    p = _run(
        "launch/local_multiprocess.sh",
        ["2"],
        tmp_path,
        BIPFT_CMD="false",
        LOG_DIR=str(tmp_path / "logs"),
    )
    assert p.returncode == 1
    assert "process 0 failed" in p.stderr and "process 1 failed" in p.stderr
    p = _run("launch/local_multiprocess.sh", ["zero"], tmp_path)
    assert p.returncode == 2 and "usage:" in p.stderr


def test_slurm_script_starts_one_process_per_task(tmp_path):
    port = free_port()
    p = _run(
        "launch/slurm_gpu.sbatch",
        ["--distributed_timeout_s", "60"],
        tmp_path,
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_NTASKS="2",
        PORT=str(port),
        VENV=str(tmp_path / "novenv"),  # keep the fake `bipft` first on PATH
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"2 processes, coordinator 127.0.0.1:{port}" in p.stderr
    # Two processes share one stdout pipe, so their JSON lines may be interleaved on one line.
    outs = [obj.group(0) for obj in re.finditer(r"\{[^{}]*\}", p.stdout)]
    outs = [o for o in outs if '"process_count"' in o]
    assert len(outs) == 2, p.stdout
    for line in outs:
        _check_worker_json(line)
    p = _run("launch/slurm_gpu.sbatch", [], tmp_path, SLURM_JOB_NODELIST="")
    assert p.returncode != 0 and "run this through sbatch" in p.stderr


def test_tpu_script_passes_arguments_through_the_remote_shell(tmp_path):
    # Fake worker: the repo dir is REPO and `bipft` prints its argv as JSON.
    args = ["--config", "configs/a b.py:tiny", "--workdir", "gs://b/run $1", "--config.x='q'"]
    p = _run(
        "launch/tpu_pod.sh",
        ["--", *args],
        tmp_path,
        echo=True,
        TPU_NAME="t",
        ZONE="z",
        REPO_DIR=str(REPO),
        VENV=str(tmp_path / "novenv"),
        EXTRA_ENV="FOO=1",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == ["pretrain", "--distributed", *args]
    p = _run("launch/tpu_pod.sh", [], tmp_path, TPU_NAME="t", ZONE="")
    assert p.returncode != 0 and "set ZONE" in p.stderr
