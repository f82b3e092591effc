"""`bipft pretrain --dry-run`: the AOT-compiled step's report on 8 CPU devices (tiny config)."""

import json
import os

import jax
import numpy as np
import pytest

from bipft_jax.train import pretrain
from bipft_jax.train.dry_run import hlo_collectives
from bipft_jax.train.metrics import bert_flops_per_token
from tests.train.cli_runs import REPO

TINY = ["--config", str(REPO / "configs/pretrain/tiny.py"), "--dry-run",
        "--config.data.global_batch_size=16", "--config.data.seq_len=64"]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):  # simulate_devices sets XLA_FLAGS / JAX_PLATFORMS
    for key in ("XLA_FLAGS", "JAX_PLATFORMS"):
        monkeypatch.setenv(key, os.environ.get(key, ""))


def _report(capsys, *extra) -> dict:
    assert pretrain.main([*TINY, "--dry-run-devices=8", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dry_run_reports_memory_flops_and_collectives(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dp = _report(capsys, "--config.mesh.data=8", "--config.sharding=dp")
    fsdp = _report(capsys, "--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.sharding=fsdp")
    assert list(tmp_path.iterdir()) == []  # nothing written
    # Independent counts: the student's params from its init, their bytes (fp32).
    cfg = pretrain.student_config(pretrain.default_config(), 30522)
    n = dp["params"]
    assert n == fsdp["params"] == 4_437_467  # tiny: 2 x 128, vocab 30522
    assert cfg.hidden_size == 128
    assert dp["per_device_bytes"]["params"] == 4 * n  # replicated
    assert dp["per_device_bytes"]["opt_state"] >= 2 * 4 * n  # Adam's two moments
    # fsdp: every param with an `embed` axis is split 8 ways (vocab 30522 x 128 among them)
    assert fsdp["per_device_bytes"]["params"] < 4 * n / 7
    assert fsdp["per_device_bytes"]["temp"] > 0 and dp["per_device_bytes"]["temp"] > 0
    # FLOPs: XLA's count vs the MFU formula (matmuls only; student + teacher forward, not the
    # teacher's MLM head): measured ratio 1.10.
    analytic = 16 * 64 * bert_flops_per_token(128, 512, 2, 30522, 64, 10, teacher_forward=True)
    assert 0.9 < dp["flops_per_step"] / analytic < 1.4, (dp["flops_per_step"], analytic)
    np.testing.assert_allclose(fsdp["flops_per_step"], dp["flops_per_step"], rtol=0.2)
    # dp: the gradient all-reduce and no gathers; fsdp: params gathered before use.
    assert dp["collectives"].get("all-reduce", 0) > 0 and "all-gather" not in dp["collectives"]
    assert fsdp["collectives"].get("all-gather", 0) > 0


def test_hlo_collectives_counts_async_pairs_once():
    hlo = "\n".join([
        "%a = f32[8] all-reduce(f32[8] %x)", "%s = (f32[8]) all-gather-start(f32[2] %y)",
        "%d = f32[8] all-gather-done((f32[8]) %s)", "%c = f32[8] collective-permute(%x)",
    ])  # fmt: skip
    assert hlo_collectives(hlo) == {"all-gather": 1, "all-reduce": 1, "collective-permute": 1}


def test_dry_run_devices_after_jax_started_is_a_clear_error(shared_data):
    assert jax.device_count() == 8  # conftest
    with pytest.raises(ValueError, match="--dry-run-devices 4: JAX had already started"):
        pretrain.main([*TINY, "--dry-run-devices=4"])
