"""The study's tables: per-seed averages, median [min, max], and the verdict sentences."""

import numpy as np

from bipft_jax.glue import study_table

TASKS = ("cola", "stsb")


def _rec(row, task, seed, score, fraction=1.0):
    metrics = {"mcc": score} if task == "cola" else {"pearson": score, "spearman": score - 0.02}
    if task == "stsb":
        metrics["combined"] = score - 0.01
    run = {"metrics": {"dev": metrics}}
    return {"run": f"{row}__{task}__s{seed}", "row": row, "task": task, "seed": seed,
            "pretrain_fraction": fraction, "pretrain_tokens": 0, "pretrain_seconds": 0.0,
            "final": run, "best": run, "steps": 10, "finetune_seconds": 1.0, "lr": 2e-4,
            "command": "bipft finetune"}  # fmt: skip


def _records(scores):
    """scores: {row: [(cola, stsb) per seed]}."""
    return [_rec(row, task, seed, s)
            for row, per_seed in scores.items()
            for seed, pair in enumerate(per_seed, start=1)
            for task, s in zip(TASKS, pair, strict=True)]  # fmt: skip


def test_averages_are_per_seed_then_median_min_max():
    rng = np.random.default_rng(0)
    pairs = rng.uniform(0.1, 0.9, size=(3, 2))
    summary = study_table.summarise(_records({"bit": [tuple(p) for p in pairs]}), TASKS)
    per_seed_paper = 100 * pairs.mean(axis=1)
    per_seed_glue = 100 * (pairs[:, 0] + pairs[:, 1] - 0.01) / 2
    got = summary["bit"]["final"]
    np.testing.assert_allclose(got["avg_paper"]["median"], np.median(per_seed_paper))
    np.testing.assert_allclose(got["avg_paper"]["min"], per_seed_paper.min())
    np.testing.assert_allclose(got["avg_paper"]["max"], per_seed_paper.max())
    np.testing.assert_allclose(got["avg_glue"]["median"], np.median(per_seed_glue))
    np.testing.assert_allclose(got["stsb/spearman"]["median"], np.median(100 * pairs[:, 1] - 2))
    assert got["avg_paper"]["n"] == 3


def test_verdict_names_the_best_rival_and_each_bipft_row():
    summary = study_table.summarise(_records({
        "bibert": [(0.10, 0.50), (0.12, 0.52), (0.11, 0.51)],
        "bit": [(0.20, 0.60), (0.22, 0.62), (0.21, 0.61)],
        "bipft_a": [(0.30, 0.70), (0.32, 0.72), (0.31, 0.71)],
        "bipft_b": [(0.10, 0.40), (0.12, 0.42), (0.11, 0.41)],
    }), TASKS)  # fmt: skip
    text = study_table.verdict(summary)
    assert "BiPFT-A beats the best task-specific binary row (BiT" in text
    assert "51.0 vs 41.0, +10.0" in text and "(paper: +13.9" in text
    assert "BiPFT-B does not beat" in text and "26.0 vs 41.0, -15.0" in text
    assert "3 seeds" in text and "overlap" not in text and "preliminary" not in text


def test_verdict_flags_one_seed_and_overlapping_ranges():
    one = study_table.summarise(_records({"bibert": [(0.2, 0.6)], "bipft_b": [(0.3, 0.6)]}), TASKS)
    assert "BiPFT-B beats" in study_table.verdict(one)
    assert "one seed, preliminary" in study_table.verdict(one)
    close = study_table.summarise(_records({
        "bibert": [(0.20, 0.60), (0.30, 0.70)],
        "bipft_a": [(0.22, 0.60), (0.28, 0.60)],
    }), TASKS)  # fmt: skip
    assert "(the seed ranges overlap)" in study_table.verdict(close)
    assert study_table.verdict(
        study_table.summarise(_records({"bit": [(0.2, 0.6)]}), TASKS)
    ).startswith("Not enough finished runs")


def test_curve_compares_the_common_seeds_task_by_task():
    rng = np.random.default_rng(1)
    scores = {f: rng.uniform(0.1, 0.9, size=(3, 2)) for f in (0.0, 0.5, 1.0)}
    records = [_rec("bipft_b", task, seed, scores[f][seed - 1, i], fraction=f)
               for f in scores for seed in (1, 2, 3) for i, task in enumerate(TASKS)
               if f == 1.0 or seed == 1]  # fmt: skip
    pts = study_table.curve(records, TASKS)
    assert [p["fraction"] for p in pts] == [0.0, 0.5, 1.0]
    assert all(p["seeds"] == [1] for p in pts)  # seeds 2-3 of the full row are left out
    for p in pts:
        want = scores[p["fraction"]][0]
        np.testing.assert_allclose(p["avg_paper"]["median"], 100 * want.mean())
        np.testing.assert_allclose(p["tasks"]["stsb"]["median"], 100 * want[1])
    text = study_table.curve_sentence(pts)
    gain = 100 * (scores[1.0][0].mean() - scores[0.0][0].mean())
    assert f"{gain:+.1f} from 0 to 1" in text and "(seed 1," in text
    assert study_table.curve([r for r in records if r["pretrain_fraction"] == 1.0], TASKS) == []
    running = records + [_rec("bipft_b", "cola", 1, 0.5, fraction=0.25)]  # stsb not finished
    assert [p["fraction"] for p in study_table.curve(running, TASKS)] == [0.0, 0.5, 1.0]
