"""Sweep: 2 tasks × 2 presets × 2 seeds on 1-layer tiny models; table, CSV, plot, resume."""

import csv
import json
import statistics

import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.checkpoint import manager as ckpt_mod
from bipft_jax.checkpoint import restore_params
from bipft_jax.glue import sweep

from .helpers import ROOT, TINY

pytestmark = pytest.mark.usefixtures("shared_data")

SWEEP = [
    "sweep.tasks=sst2,rte",
    "sweep.presets=fp;bipft",
    "sweep.seeds=1,2",
    "train.max_steps=1",
    "train.eval_every=1",
]


def _argv(workdir, *extra):
    overrides = [f"--config.{o}" for o in [*TINY, *SWEEP]]
    return [
        "--config",
        f"{ROOT}/configs/glue/bipft.py",
        *overrides,
        "--workdir",
        str(workdir),
        *extra,
    ]


def test_sweep_table_csv_plot_and_resume(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert sweep.main(_argv(tmp_path)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["runs"], summary["ran"], summary["skipped"]) == (8, 8, 0)
    results = sorted((tmp_path / "runs").glob("*/*/*/*/results.json"))
    assert len(results) == 8
    # The table's median / best equal those of the runs' best-checkpoint scores.
    scores = [json.loads(p.read_text())["result"] for p in results]
    sst2_fp = [100 * r["best"]["metrics"]["dev"]["main"] for r in scores
               if r["task"] == "sst2" and r["stage"] == "fp"]  # fmt: skip
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    row = next(
        r for r in rows if (r["preset"], r["column"], r["checkpoint"]) == ("fp", "sst2", "best")
    )
    assert float(row["median"]) == pytest.approx(statistics.median(sst2_fp))
    assert float(row["best"]) == pytest.approx(max(sst2_fp)) and row["seeds"] == "2"
    avg = [r for r in rows if r["column"].startswith("avg_")]
    assert {r["column"] for r in avg} == {"avg_8task", "avg_9numbers"}
    assert all("[2/8 present]" in r["label"] or "[2/9 present]" in r["label"] for r in avg)
    md = (tmp_path / "sweep.md").read_text()
    assert "| preset | rte | sst2 | avg_8task | avg_9numbers |" in md and "mean of 8 tasks" in md
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rerun: every run is finished and skipped.
    assert sweep.main(_argv(tmp_path)) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["ran"], again["skipped"]) == (0, 8)


def test_emit_commands_lists_unfinished_runs(tmp_path, capsys):
    assert sweep.main(_argv(tmp_path, "--emit-commands")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    assert all(ln.startswith("bipft finetune --config ") for ln in lines)
    assert sum("bipft.py:rte" in ln for ln in lines) == 4
    assert any("--config.chain=bipft" in ln and "--config.seed=2" in ln for ln in lines)
    assert all("--config.model.num_layers=1" in ln for ln in lines)


def test_bad_sweep_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        sweep.main(_argv(tmp_path, "--config.sweep.tasks=sst3", "--emit-commands"))
    with pytest.raises(ValueError, match="sweep.presets"):
        sweep.main(_argv(tmp_path, "--config.sweep.presets=fp;xnor", "--emit-commands"))


def test_overrides_in_both_forms_reach_every_run(tmp_path, monkeypatch, capsys):
    """`--config.k=v` and `--config.k v` change the grid AND the config of every run."""
    from bipft_jax.glue import finetune

    seen = []
    monkeypatch.setattr(
        finetune, "run", lambda cfg, workdir: seen.append(cfg) or {"status": "done"}
    )
    monkeypatch.setattr(sweep, "aggregate", lambda *a: {})
    argv = [
        "--config", f"{ROOT}/configs/glue/bipft.py",
        "--config.sweep.tasks", "rte", "--config.sweep.presets=fp", "--config.sweep.seeds", "3",
        "--config.train.lr", "0.000123", "--config.model.num_layers=1",
        "--workdir", str(tmp_path),
    ]  # fmt: skip
    assert sweep.main(argv) == 0
    assert len(seen) == 1
    cfg = seen[0]
    assert (cfg.task, cfg.chain, cfg.seed) == ("rte", "fp", 3)
    assert cfg.train.lr == 0.000123 and cfg.model.num_layers == 1
    assert sweep.main([*argv, "--emit-commands"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "--config.train.lr=0.000123" in line and "--config.model.num_layers=1" in line


def test_preempted_sweep_resumes_inside_the_unfinished_run(tmp_path, capsys, monkeypatch):
    one = ["--config.sweep.tasks=rte", "--config.sweep.presets=bipft", "--config.sweep.seeds=1",
           "--config.train.max_steps=6", "--config.train.eval_every=3",
           "--config.train.save_every=2", "--config.train.async_checkpoint=false"]  # fmt: skip
    assert sweep.main(_argv(tmp_path / "whole", *one)) == 0
    calls = {"n": 0}

    def preempt_at_step_4():
        calls["n"] += 1
        return calls["n"] == 4

    monkeypatch.setattr(ckpt_mod, "preemption_requested", preempt_at_step_4)
    assert sweep.main(_argv(tmp_path / "cut", *one)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["status"] == "preempted" and out["ran"] == 0
    run_dirs = list((tmp_path / "cut" / "runs").glob("*/*/*/*"))
    assert len(run_dirs) == 1 and not (run_dirs[0] / "results.json").exists()
    monkeypatch.undo()
    assert sweep.main(_argv(tmp_path / "cut", *one)) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["ran"], again["skipped"]) == (1, 0)
    # Continued inside the run: no step trained twice, and the same final params as unbroken.
    metrics = (run_dirs[0] / "0_bipft" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(m)["step"] for m in metrics if "train/loss" in m]
    assert steps.count(1) == 1 and max(steps) == 6, steps
    flat = lambda d: traverse_util.flatten_dict(restore_params(str(d / "0_bipft" / "final")))  # noqa: E731
    whole = flat(next((tmp_path / "whole" / "runs").glob("*/*/*/*")))
    cut = flat(run_dirs[0])
    assert whole.keys() == cut.keys()
    for k in whole:
        np.testing.assert_array_equal(np.asarray(whole[k]), np.asarray(cut[k]), err_msg=str(k))
