"""`bipft pretrain` on 2 local processes (gloo) against 1 process with all their CPU devices,
same global mesh and batch: every logged loss and the final params agree to float rounding, with
dropout and alpha calibration on. Meshes over 2 x 2 devices: data, fsdp (HF teacher), fsdp x
tensor; over 2 x 1: tensor across the processes (both load every row; the 30522-word vocabulary
splits 2 ways, not 4)."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from bipft_jax.checkpoint import restore_params
from tests.multiprocess import run_processes
from tests.train.cli_runs import REPO, command, env, final_params

MESHES = {
    "dp": ["--config.mesh.data=4", "--config.sharding=dp"],
    "fsdp_hf_teacher": ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.sharding=fsdp",
                        "--config.teacher.source=hf"],
    "tp_across_processes": ["--config.mesh.data=1", "--config.mesh.tensor=2",
                            "--config.sharding=tp"],
    "fsdp_x_tp": ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                  "--config.sharding=tp"],
}  # fmt: skip


def _rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mesh", list(MESHES))
def test_two_processes_match_one(tmp_path, shared_data, mesh):
    import subprocess

    opts = ["--config.train.total_steps=2", "--config.optim.warmup_steps=1",
            "--config.train.save_every=100", *MESHES[mesh]]  # fmt: skip
    if "hf" in mesh:
        from tests.train.test_teacher_sources import _hf_tiny_bert

        _hf_tiny_bert(tmp_path / "hf")
        opts.append(f"--config.teacher.path={tmp_path / 'hf'}")
    per_process = 1 if "tp_across" in mesh else 2
    one = subprocess.run(command(tmp_path / "one", *opts), cwd=REPO, capture_output=True,
                         text=True, env=env(tmp_path / "c1", devices=2 * per_process),
                         timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    run_processes(lambda *flags: command(tmp_path / "two", *opts, *flags),
                  lambda i: env(tmp_path / f"c2{i}", devices=per_process),
                  extra=("--distributed_timeout_s", "120"), timeout=900)  # fmt: skip
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "loss_mlm", "loss_hidden", "grad_norm"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, err_msg=key)
    pa = final_params(tmp_path / "one")["params"]
    # The 2-process checkpoint names devices this process lacks: read it onto device 0.
    one_device = SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), pa)
    pb = restore_params(tmp_path / "two", like=like)
    flat = jax.tree_util.tree_flatten_with_path(pa)[0]
    worst = 0.0
    for (path, x), y in zip(flat, jax.tree.leaves(pb), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        worst = max(worst, float(np.max(np.abs(x - y))))
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    print(f"{mesh}: max |param difference| {worst:.2e}")
