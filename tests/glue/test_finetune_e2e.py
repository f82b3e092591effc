"""End-to-end fine-tuning on tiny models: KD chains, checkpoints, results, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from bipft_jax import paths
from bipft_jax.checkpoint import restore_params
from bipft_jax.data.glue import GlueDataError
from bipft_jax.glue import finetune
from bipft_jax.glue.init import InitError, parse_chain

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("shared_data")


def _stage_losses(stage_dir):
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return {k for r in rows for k in r if k.startswith("train/")}


def test_bit_two_stage_chain_with_w1a2(tmp_path):
    """FP teacher -> W1A2 BiT -> W1A1 BiT (a multi-distillation chain) on SST-2."""
    cfg = tiny_config("bit_multi", "sst2", "seed=3")
    out = finetune.run(cfg, tmp_path)
    stages = out["stages"]
    assert [s["stage"] for s in stages] == ["fp", "bit_a2", "bit"]
    assert [s["kd"] for s in stages] == ["none", "bit", "bit"]
    assert stages[1]["init"] == "stage 0" and stages[2]["init"] == "stage 1"
    assert stages[0]["lr"] == cfg.train.teacher_lr and stages[1]["lr"] == cfg.train.lr
    for i, s in enumerate(stages):
        d = tmp_path / f"{i}_{s['stage']}"
        assert (d / "best" / "checkpoints").is_dir() and (d / "final" / "checkpoints").is_dir()
        assert s["final"]["step"] == 3 and s["best"]["step"] in (2, 3)
        assert {"accuracy", "main"} <= set(s["best"]["metrics"]["dev"])
        assert s["seed"] == 3 and len(s["config_hash"]) >= 8
    assert {"train/logit_kd", "train/hidden_mse"} <= _stage_losses(tmp_path / "1_bit_a2")
    assert json.loads((tmp_path / "results.json").read_text())["result"]["stage"] == "bit"
    # The final checkpoint holds the trained params; restoring gives the stage's tree.
    params = restore_params(str(tmp_path / "2_bit" / "final"))
    assert np.asarray(params["classifier"]["kernel"]).shape == (128, 2)


def _write_mnli(root, rng):
    """A small MNLI directory in the official 10+-column format, from SST-2 sentences."""
    dev = (paths.default_glue_dir() / "SST-2" / "dev.tsv").read_text().splitlines()
    sents = [r.split("\t")[0] for r in dev[1:]]
    head = "\t".join(["index", *[f"c{i}" for i in range(1, 8)], "sentence1", "sentence2"])
    labels = ("contradiction", "entailment", "neutral")
    d = root / "MNLI"
    d.mkdir(parents=True)
    for name, n, labelled in [("train", 40, True), ("dev_matched", 12, True),
                              ("dev_mismatched", 10, True), ("test_matched", 7, False),
                              ("test_mismatched", 5, False)]:  # fmt: skip
        rows = [head + ("\tgold_label" if labelled else "")]
        for i in range(n):
            a, b = rng.choice(sents, 2)
            cells = [str(i), *["x"] * 7, a, b] + ([str(rng.choice(labels))] if labelled else [])
            rows.append("\t".join(cells))
        (d / f"{name}.tsv").write_text("\n".join(rows) + "\n")


def test_mnli_matched_mismatched_and_submission(tmp_path):
    _write_mnli(tmp_path / "glue", np.random.default_rng(0))
    cfg = tiny_config("bipft", "mnli", "chain=fp", "predict_test=True",
                      f"data_dir={tmp_path / 'glue'}", "train.max_steps=2",
                      "train.grad_accum_steps=2")  # fmt: skip
    out = finetune.run(cfg, tmp_path / "w")["result"]
    for ckpt in ("best", "final"):
        assert set(out[ckpt]["metrics"]) == {"dev_matched", "dev_mismatched"}
    files = sorted(out["submission"])
    assert [f.rsplit("/", 1)[1] for f in files] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    lines = Path(files[0]).read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 8
    assert {ln.split("\t")[1] for ln in lines[1:]} <= {"contradiction", "entailment", "neutral"}


def test_bibert_dmd_on_regression(tmp_path):
    """BiBERT DMD + prediction KD on STS-B (regression: MSE to the teacher's logit)."""
    out = finetune.run(tiny_config("bibert", "stsb"), tmp_path)
    assert [s["kd"] for s in out["stages"]] == ["none", "bibert"]
    assert {"train/pred", "train/dmd"} <= _stage_losses(tmp_path / "1_bibert")
    m = out["result"]["final"]["metrics"]["dev"]
    assert {"pearson", "spearman", "combined", "main"} <= set(m)


def test_parse_chain_errors():
    assert [s.name for s in parse_chain("fp, bit:a2 ,bit")] == ["fp", "bit_a2", "bit"]
    with pytest.raises(ValueError, match="unknown preset 'binarybert'"):
        parse_chain("fp,binarybert")
    with pytest.raises(ValueError, match="<preset>:a<bits>"):
        parse_chain("bit:w2")
    with pytest.raises(ValueError, match="chain"):
        parse_chain(" , ")


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sst5'"):
        finetune.run(tiny_config("bipft", "sst2", "task=sst5", "init.kind=scratch"), tmp_path)


def test_missing_data_dir(tmp_path):
    cfg = tiny_config("bipft", "sst2", f"data_dir={tmp_path / 'nowhere'}")
    with pytest.raises(GlueDataError, match="data_dir.*nowhere"):
        finetune.run(cfg, tmp_path / "w")


def test_multi_stage_without_kd(tmp_path):
    with pytest.raises(ValueError, match="kd.kind='none'"):
        finetune.run(tiny_config("bit", "sst2", "kd.kind=none"), tmp_path)


def test_init_checkpoint_shape_mismatch(tmp_path):
    """A checkpoint of a 128-wide model cannot initialise a 256-wide config."""
    finetune.run(tiny_config("bipft", "sst2", "chain=fp", "train.max_steps=1"), tmp_path / "a")
    ckpt = tmp_path / "a" / "0_fp" / "best"
    cfg = tiny_config(
        "bipft", "sst2", "chain=fp", "model.size=mini", "init.kind=checkpoint",
        f"init.path={ckpt}",
    )  # fmt: skip
    with pytest.raises(InitError, match=r"shape mismatch.*bert/embeddings.*\(30522, 128\)"):
        finetune.run(cfg, tmp_path / "b")
    # A matching config loads the weights (lr 0 keeps them, so the final checkpoint shows them).
    cfg = tiny_config("bipft", "sst2", "chain=fp", "init.kind=checkpoint", f"init.path={ckpt}",
                      "train.max_steps=1", "train.lr=0.0")  # fmt: skip
    assert finetune.run(cfg, tmp_path / "ok")["result"]["init"] == f"checkpoint:{ckpt}"
    want, got = restore_params(str(ckpt)), restore_params(str(tmp_path / "ok" / "0_fp" / "final"))
    emb = ("bert", "embeddings", "word_embeddings", "embedding")
    a, b = want, got
    for k in emb:
        a, b = a[k], b[k]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg = tiny_config("bipft", "sst2", "init.kind=checkpoint", f"init.path={tmp_path}/none")
    with pytest.raises(InitError, match="not found"):
        finetune.run(cfg, tmp_path / "c")
