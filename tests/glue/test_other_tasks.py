"""Tasks not in the shared data (MRPC, QQP, QNLI) run end to end from a `glue_data/<TASK>/`
directory in the official formats, given through `data_dir` (issue #12)."""

from pathlib import Path

import numpy as np
import pytest

from bipft_jax import paths
from bipft_jax.glue import finetune

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("shared_data")

# task: (dir, train/dev header, test header, row(i, a, b, label) in the train/dev column order)
FORMATS = {
    "mrpc": ("MRPC", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             "index\t#1 ID\t#2 ID\t#1 String\t#2 String",
             lambda i, a, b, y: f"{y}\t{i}\t{i + 1000}\t{a}\t{b}", ("0", "1")),
    "qqp": ("QQP", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "id\tquestion1\tquestion2",
            lambda i, a, b, y: f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{y}", ("0", "1")),
    "qnli": ("QNLI", "index\tquestion\tsentence\tlabel", "index\tquestion\tsentence",
             lambda i, a, b, y: f"{i}\t{a}\t{b}\t{y}", ("entailment", "not_entailment")),
}  # fmt: skip


def _write(root, task, rng):
    name, head, test_head, row, labels = FORMATS[task]
    dev = (paths.default_glue_dir() / "SST-2" / "dev.tsv").read_text().splitlines()
    sents = [r.split("\t")[0] for r in dev[1:]]
    d = root / name
    d.mkdir(parents=True)
    for split, n in (("train", 40), ("dev", 16)):
        lines = [head] + [row(i, *rng.choice(sents, 2), rng.choice(labels)) for i in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    test = [test_head] + [f"{i}\t" + "\t".join(rng.choice(sents, 2)) for i in range(6)]
    if task == "mrpc":  # index, #1 ID, #2 ID, #1 String, #2 String
        test = [test_head] + [f"{i}\t{i}\t{i + 9}\t" + "\t".join(rng.choice(sents, 2))
                              for i in range(6)]  # fmt: skip
    (d / "test.tsv").write_text("\n".join(test) + "\n")


@pytest.mark.parametrize("task", sorted(FORMATS))
def test_task_from_a_data_dir_end_to_end(tmp_path, task):
    _write(tmp_path / "glue", task, np.random.default_rng(1))
    cfg = tiny_config("bipft", task, "chain=fp", "predict_test=True", "max_train_rows=0",
                      f"data_dir={tmp_path / 'glue'}", "train.max_steps=2")  # fmt: skip
    out = finetune.run(cfg, tmp_path / "w")["result"]
    metrics = out["final"]["metrics"]["dev"]
    assert "accuracy" in metrics and 0.0 <= metrics["main"] <= 1.0
    if task in ("mrpc", "qqp"):
        assert "f1" in metrics
    assert out["train_rows"] == 40
    sub = out["submission"][0]
    assert len(Path(sub).read_text().splitlines()) == 7
