"""Per-paper selection metric, MNLI-mm timing and the BiBERT dropout quirk (glue/rules.py)."""

import numpy as np
import pytest

from bipft_jax.data.glue_metrics import task_metrics
from bipft_jax.glue.rules import SELECTIONS, eval_rules, student_dropout_on

scipy_stats = pytest.importorskip("scipy.stats")


def _metrics(task, seed):
    rng = np.random.default_rng(seed)
    if task == "stsb":
        labels = rng.uniform(0, 5, 50)
        preds = labels + rng.normal(0, 1.5, 50) ** 3  # Pearson and Spearman differ
    else:
        k = 3 if task == "mnli" else 2
        labels, preds = rng.integers(0, k, 60), rng.integers(0, k, 60)
    return {"dev": task_metrics(task, preds, labels)}, preds, labels


@pytest.mark.parametrize("task", ["mrpc", "qqp", "stsb", "cola", "sst2", "rte", "qnli"])
def test_selection_scores_match_the_reference_definitions(task):
    metrics, preds, labels = _metrics(task, seed=len(task))
    if task == "stsb":
        p, s = scipy_stats.pearsonr(preds, labels)[0], scipy_stats.spearmanr(preds, labels)[0]
        want = {"bit": (p + s) / 2, "bibert": (p + s) / 2, "bipft": p, "main": (p + s) / 2}
    elif task == "cola":
        mcc = metrics["dev"]["mcc"]
        want = dict.fromkeys(SELECTIONS, mcc)
    else:
        acc = float(np.mean(preds == labels))
        want = {"bit": acc, "bibert": acc, "bipft": acc, "main": metrics["dev"]["main"]}
    for selection in SELECTIONS:
        got = eval_rules(selection, "every", task).score(metrics)
        assert got == pytest.approx(want[selection], abs=1e-9), selection


def test_rules_pick_different_mrpc_checkpoints():
    history = [
        {"dev": {"accuracy": 0.80, "f1": 0.70, "combined": 0.75, "main": 0.75}},
        {"dev": {"accuracy": 0.78, "f1": 0.86, "combined": 0.82, "main": 0.82}},
    ]
    best = {s: int(np.argmax([eval_rules(s, "every", "MRPC").score(m) for m in history]))
            for s in SELECTIONS}  # fmt: skip
    assert best == {"main": 1, "bit": 0, "bibert": 0, "bipft": 0}


def test_mnli_mm_timing():
    splits = ["dev_matched", "dev_mismatched"]
    every = eval_rules("main", "every", "mnli")
    assert every.splits(splits) == splits and every.splits_if_improved(splits) == []
    best = eval_rules("bit", "when_best", "mnli")
    assert best.splits(splits) == ["dev_matched"]
    assert best.splits_if_improved(splits) == ["dev_mismatched"]
    final = eval_rules("bipft", "final", "mnli")
    assert final.splits(splits) == ["dev_matched"]
    assert final.splits(splits, final=True) == splits
    assert final.splits_if_improved(splits) == []
    assert eval_rules("bit", "when_best", "sst2").splits(["dev"]) == ["dev"]


def test_record_and_errors():
    rec = eval_rules("bipft", "final", "STS-B").record()
    assert rec["selection"] == "bipft" and rec["mnli_mm"] == "final"
    assert rec["selection_metric"].startswith("pearson") and "591-603" in rec["selection_source"]
    with pytest.raises(ValueError, match="eval.selection"):
        eval_rules("acc", "every", "rte")
    with pytest.raises(ValueError, match="eval.mnli_mm"):
        eval_rules("bit", "sometimes", "rte")
    with pytest.raises(ValueError, match="train.student_dropout"):
        student_dropout_on(0, mode="never", steps_per_epoch=3, eval_every=2, total_steps=9)


def _bibert_reference_modes(epochs, per_epoch, eval_step):
    """quant_task_glue.py's loop, reduced to the student's train/eval mode at each update."""
    total, modes, global_step = epochs * per_epoch, [], 0
    for _ in range(epochs):
        training = True  # student_model.train() at the start of each epoch (l.500)
        for _ in range(per_epoch):
            modes.append(training)
            global_step += 1  # after optimizer.step()
            if global_step % eval_step == 0 or global_step == total - 1:
                training = False  # student_model.eval() at the evaluation (l.612)
    return modes


@pytest.mark.parametrize("epochs,per_epoch,eval_step", [(3, 7, 3), (4, 5, 5), (2, 9, 20),
                                                        (3, 6, 1), (5, 4, 6)])  # fmt: skip
def test_bibert_quirk_matches_the_reference_loop(epochs, per_epoch, eval_step):
    total = epochs * per_epoch
    want = _bibert_reference_modes(epochs, per_epoch, eval_step)
    kw = dict(steps_per_epoch=per_epoch, eval_every=eval_step, total_steps=total)
    got = [student_dropout_on(s, mode="bibert_quirk", **kw) for s in range(total)]
    assert got == want
    assert all(student_dropout_on(s, mode="always", **kw) for s in range(total))
