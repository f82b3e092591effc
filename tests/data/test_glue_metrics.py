"""NumPy GLUE metrics vs sklearn / scipy on random predictions; GLUE average conventions."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bipft_jax.data import glue_metrics as gm


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.7, y, 1 - y)
    assert gm.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
    assert gm.f1_binary(p, y) == pytest.approx(skm.f1_score(y, p))
    assert gm.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert gm.matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3))


def test_degenerate_metrics():
    assert (
        gm.matthews_corrcoef([1, 1, 1], [0, 1, 1])
        == 0.0
        == skm.matthews_corrcoef([0, 1, 1], [1, 1, 1])
    )
    assert gm.f1_binary([0, 0], [0, 0]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_vs_scipy(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(0, 5, 200), 1)  # rounded: many ties, as in STS-B
    p = y + rng.normal(0, 1.5, 200)
    p[:20] = np.round(p[:20])
    assert gm.pearson(p, y) == pytest.approx(stats.pearsonr(p, y)[0], abs=1e-12)
    assert gm.spearman(p, y) == pytest.approx(stats.spearmanr(p, y)[0], abs=1e-12)
    np.testing.assert_allclose(gm.rankdata(y), stats.rankdata(y))


def test_task_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    logits = rng.normal(size=(100, 2))
    m = gm.task_metrics("mrpc", logits, y)
    p = logits.argmax(-1)
    assert m["f1"] == pytest.approx(skm.f1_score(y, p))
    assert m["combined"] == pytest.approx((m["f1"] + m["accuracy"]) / 2) == m["main"]
    assert gm.task_metrics("cola", p, y)["main"] == pytest.approx(skm.matthews_corrcoef(y, p))
    s = rng.uniform(0, 5, 50)
    m = gm.task_metrics("stsb", s[:, None] + rng.normal(size=(50, 1)), s)
    assert set(m) == {"pearson", "spearman", "combined", "main"}
    assert m["main"] == pytest.approx((m["pearson"] + m["spearman"]) / 2)
    assert set(gm.task_metrics("rte", p, y)) == {"accuracy", "main"}


def test_glue_average_conventions_reproduce_bit_table():
    # BiT 1-1-1 row and BERT row of the BiT README table (docs/methods.md §6.1).
    bit = dict(
        mnli_m=79.5,
        mnli_mm=79.4,
        qqp=85.4,
        qnli=86.4,
        sst2=89.9,
        cola=32.9,
        stsb=72,
        mrpc=79.9,
        rte=62.1,
        wnli=56.3,
    )
    v8, label8 = gm.glue_average(bit, "8task")
    v9, label9 = gm.glue_average(bit, "9numbers")
    assert round(v8, 2) == 73.51 and round(v9, 2) == 74.17
    assert "8 tasks" in label8 and "9 numbers" in label9
    bert = dict(
        mnli_m=84.9,
        mnli_mm=85.5,
        qqp=91.4,
        qnli=92.1,
        sst2=93.2,
        cola=59.7,
        stsb=90.1,
        mrpc=86.3,
        rte=72.2,
    )
    assert round(gm.glue_average(bert, "9numbers")[0], 2) == 83.93
    with pytest.raises(KeyError, match="lack mnli_mm"):
        gm.glue_average({k: 1.0 for k in gm.GLUE_8TASK_KEYS}, "9numbers")
    with pytest.raises(KeyError, match="unknown GLUE average convention"):
        gm.glue_average(bit, "10task")


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + 0.7 * y, 1)  # rounded: many ties
    assert gm.roc_auc(s, y == 1) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(gm.roc_auc(s, np.zeros(200, bool)))


def test_collapse_metrics_tell_one_class_from_no_signal():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    # One class predicted, yet the margin ranks the rows: AUC well above 0.5.
    z = np.stack([np.full(300, 5.0), rng.normal(size=300) + y], 1)
    m = gm.task_metrics("rte", z, y)
    assert m["share_0"] == 1.0 and m["share_1"] == 0.0 and m["one_class"] == 1.0
    assert m["margin_auc"] == pytest.approx(skm.roc_auc_score(y, z[:, 1] - z[:, 0]))
    assert m["margin_auc"] > 0.65
    z2 = rng.normal(size=(300, 2))
    m2 = gm.task_metrics("cola", z2, y)
    assert m2["one_class"] == 0.0
    assert m2["share_0"] + m2["share_1"] == pytest.approx(1.0)
    assert m2["share_1"] == pytest.approx(np.mean(z2.argmax(-1) == 1))


def test_collapse_metrics_multiclass_is_mean_one_vs_rest():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 240)
    z = rng.normal(size=(240, 3)) + np.eye(3)[y]
    m = gm.collapse_metrics(z, y)
    want = np.mean([
        skm.roc_auc_score(y == c, z[:, c] - np.delete(z, c, 1).max(1)) for c in range(3)
    ])  # fmt: skip
    assert m["margin_auc"] == pytest.approx(want)
    assert sum(m[f"share_{c}"] for c in range(3)) == pytest.approx(1.0)
