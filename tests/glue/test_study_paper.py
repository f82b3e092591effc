"""The paper-budget study (`configs/study/minilm.py:paper`): every binary row with its own paper's
recipe from the same FP runs and pretrainings as the study budget, and the sections that judge
it (one-class runs, the target, the study-budget numbers beside)."""

import json
from pathlib import Path

import ml_collections

from bipft_jax.glue import study, study_table, study_targets
from bipft_jax.glue.recipes import task_recipe
from bipft_jax.train.config_io import config_hash, load_config

from .helpers import ROOT


def _row(arg):
    return load_config(f"{ROOT}/configs/glue/study_paper.py:{arg}")


def test_rows_take_their_papers_recipes():
    for task in ("rte", "stsb", "cola"):
        bit, bibert, b, b_hi = (_row(f"{r}:{task}") for r in ("bit", "bibert", "bipft_b",
                                                                 "bipft_b_hi"))  # fmt: skip
        for c, paper in ((bit, "bit"), (bibert, "bibert"), (b, "bipft")):
            want = task_recipe(paper, task)
            assert (c.train.epochs, c.train.batch_size, c.train.lr) == (
                want["epochs"], want["batch_size"], want["lr"])  # fmt: skip
            assert c.train.eval_every == 0 and c.model.size == "hf"
        assert bit.chain == "bit:a2,bit" and bit.kd.kind == "bit"
        assert bit.optimizer.name == "bertadam"
        assert bibert.kd.kind == "bibert" and not bibert.kd.teacher_dropout
        assert b.kd.kind == "none" and b.optimizer.schedule == "constant" and b.train.lr == 2e-5
        assert b_hi.train.lr == 2e-4 and b_hi.train.epochs == b.train.epochs
        assert _row(f"bipft_a:{task}").model.overrides == ("quant.estimators.enabled=False",)
    # The FP row is the study's own, so both studies share its runs (same config hash).
    same = load_config(f"{ROOT}/configs/glue/study_minilm.py:fp:rte")
    assert config_hash(_row("fp:rte")) == config_hash(same)


def test_jobs_share_fp_runs_and_pretrainings(tmp_path):
    cfg = load_config(f"{ROOT}/configs/study/minilm.py:paper")
    jobs = study.jobs(cfg)
    names = [j.name for j in jobs]
    study_names = {j.name for j in study.jobs(load_config(f"{ROOT}/configs/study/minilm.py"))}
    shared = {n for n in names if not n.startswith("paper-")}
    assert shared <= study_names and "pretrain__bipft_b" in shared and "fp__rte__s3" in shared
    assert "paper-bit__sst2__s1" in names and "paper-bit__sst2__s2" not in names
    assert sum(n.startswith("paper-") for n in names) == 6 * (3 * 3 + 1)
    by = {j.name: j for j in jobs}
    hi = study.command(by["paper-bipft_b_hi__stsb__s2"], cfg, tmp_path)
    assert f"--config.init.path={tmp_path}/runs/pretrain__bipft_b" in hi
    assert "configs/glue/study_paper.py:bipft_b_hi:stsb" in hi
    bit = study.command(by["paper-bit__cola__s1"], cfg, tmp_path)
    assert f"--config.kd.teacher_path={tmp_path}/runs/fp__cola__s1/0_fp/final" in bit
    assert names.index("pretrain__bipft_b") < names.index("paper-bipft_b_hi__stsb__s1")


def _rec(row, task, seed, metrics):
    run = {"metrics": {"dev": metrics}}
    return {"run": f"paper-{row}__{task}__s{seed}", "row": row, "task": task, "seed": seed,
            "pretrain_fraction": 1.0 if row.startswith("bipft") else None,
            "pretrain_tokens": 0, "pretrain_seconds": 0.0, "final": run, "best": run,
            "steps": 10, "finetune_seconds": 1.0, "lr": 2e-4,
            "command": "bipft finetune"}  # fmt: skip


def test_tables_flag_one_class_runs_and_judge_the_target(tmp_path):
    def cola(one, auc):
        return {"mcc": 0.0 if one else 0.1, "accuracy": 0.69, "share_0": 0.0, "share_1": 1.0,
                "one_class": float(one), "margin_auc": auc}  # fmt: skip

    recs = []
    for s in (1, 2, 3):
        recs.append(_rec("bit", "cola", s, cola(s == 2, 0.61)))
        recs.append(_rec("bit", "stsb", s, {"pearson": 0.4 + 0.05 * s, "spearman": 0.4,
                                            "combined": 0.4}))  # fmt: skip
        recs.append(_rec("bipft_b_hi", "stsb", s, {"pearson": 0.55, "spearman": 0.5,
                                                   "combined": 0.52}))  # fmt: skip
    folder = tmp_path / "glue_study_paper"
    folder.mkdir()
    for r in recs:
        (folder / f"{r['run']}.json").write_text(json.dumps(r))
    other = tmp_path / "glue_study.json"
    other.write_text(json.dumps({"summary": {"bipft_b": {"final": {
        "stsb/pearson": {"median": 12.3}}}}}))  # fmt: skip
    cfg = ml_collections.ConfigDict(dict(tasks=("stsb", "cola"), seeds=(1, 2, 3),
        finetune_config="configs/glue/study_paper.py", pretrain_config="p", pretrain_steps=1,
        compare_with=str(other)))  # fmt: skip
    study_table.build_tables(folder, cfg)
    md = Path(f"{folder}.md").read_text()
    data = json.loads(Path(f"{folder}.json").read_text())
    assert [x["run"] for x in data["one_class"]["one_class"]] == ["paper-bit__cola__s2"]
    assert "paper-bit__cola__s2 (margin AUC 0.61)" in md
    t = data["target"]["parts"]
    assert t["stsb/pearson"]["best_row"] == "bipft_b_hi" and t["stsb/pearson"]["met"]
    assert not t["cola/no_one_class"]["met"] and data["target"]["met"] is False
    assert "Target: **not met**" in md and "— each paper's own fine-tuning budget" in md
    assert "1 binary runs predict one class; in 1 of them the margin AUC is above 0.55" in md
    # columns cola/mcc, stsb/pearson, stsb/spearman; the _hi row sits beside the study's row
    assert "| BiPFT-B at the study's lr 2e-4 | — / — | 55.0 / 12.3 | 50.0 / — |" in md


def test_one_class_runs_tell_unrecorded_runs_apart():
    old = _rec("bit", "rte", 1, {"accuracy": 0.53})
    new = _rec("bibert", "rte", 1, {"accuracy": 0.53, "one_class": 0.0, "margin_auc": 0.5})
    got = study_targets.one_class_runs([old, new, _rec("fp", "rte", 1, {"accuracy": 0.6})])
    assert got == {"one_class": [], "not_recorded": ["paper-bit__rte__s1"]}
