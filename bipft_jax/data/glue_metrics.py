"""GLUE metrics in NumPy (no sklearn / scipy) and the GLUE average conventions."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bipft_jax.data.glue import get_task


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(np.mean(preds == labels))


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the positive class (0.0 when there are no true or predicted positives)."""
    p, y = np.asarray(preds) == positive, np.asarray(labels) == positive
    tp = np.sum(p & y)
    denom = np.sum(p) + np.sum(y)
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K; equals the binary MCC for 2 classes)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes, idx = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    y, p = idx[: len(labels)], idx[len(labels) :]
    k = len(classes)
    c = np.zeros((k, k), np.float64)
    np.add.at(c, (y, p), 1)
    t, pk = c.sum(1), c.sum(0)
    n, correct = c.sum(), np.trace(c)
    cov_yp = correct * n - t @ pk
    cov_yy, cov_pp = n * n - t @ t, n * n - pk @ pk
    if cov_yy == 0 or cov_pp == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / denom) if denom else float("nan")


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's 'average' method)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1..ends
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U with
    ties counted half; NaN when one of the two classes is absent)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = rankdata(scores)[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def collapse_metrics(logits, labels) -> dict[str, float]:
    """What tells "one class" from "signal below the threshold" on a classification split:
    ``share_<c>``, the fraction of rows predicted as class c; ``one_class`` (1.0 when a single
    class is predicted); ``margin_auc``, the ROC AUC of the logit margin (binary: z1 - z0; more
    classes: mean one-vs-rest AUC of z_c - max of the others). An AUC above 0.5 with one class
    predicted means the model ranks rows but its threshold sits outside their range."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    k = logits.shape[1]
    shares = np.bincount(logits.argmax(-1), minlength=k) / len(logits)
    out = {f"share_{c}": float(shares[c]) for c in range(k)}
    out["one_class"] = float(shares.max() == 1.0)
    if k == 2:
        out["margin_auc"] = roc_auc(logits[:, 1] - logits[:, 0], labels == 1)
    else:
        aucs = [roc_auc(logits[:, c] - np.delete(logits, c, 1).max(1), labels == c)
                for c in range(k)]  # fmt: skip
        out["margin_auc"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
    return out


def task_metrics(task: str, preds, labels) -> dict[str, float]:
    """All metrics of a task; `main` repeats the task's main metric.

    Classification `preds` are label ids (or logits [N, C], argmax'ed: then the collapse
    diagnostics of `collapse_metrics` are added); STS-B takes scores.
    Multi-metric tasks get `combined` = mean of their two numbers (the GLUE-server convention).
    """
    spec = get_task(task)
    preds = np.asarray(preds)
    collapse: dict[str, float] = {}
    if not spec.is_regression and preds.ndim == 2:
        collapse = collapse_metrics(preds, labels)
        preds = preds.argmax(-1)
    if spec.is_regression and preds.ndim == 2:
        preds = preds[:, 0]
    out: dict[str, float] = {}
    if spec.is_regression:
        out["pearson"], out["spearman"] = pearson(preds, labels), spearman(preds, labels)
        out["combined"] = (out["pearson"] + out["spearman"]) / 2
    else:
        out["accuracy"] = accuracy(preds, labels)
        if "f1" in spec.metrics:
            out["f1"] = f1_binary(preds, labels)
            out["combined"] = (out["f1"] + out["accuracy"]) / 2
        if "mcc" in spec.metrics:
            out["mcc"] = matthews_corrcoef(preds, labels)
    out["main"] = out[spec.main_metric]
    out.update(collapse)
    return out


# Keys of the score dict given to `glue_average` (each task's main number, WNLI excluded).
GLUE_8TASK_KEYS = ("mnli_m", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
GLUE_9NUMBER_KEYS = ("mnli_m", "mnli_mm", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
CONVENTIONS = {
    "8task": (GLUE_8TASK_KEYS, "mean of 8 tasks (MNLI-m counted once, WNLI excluded)"),
    "9numbers": (GLUE_9NUMBER_KEYS, "mean of 9 numbers (MNLI-m and -mm separate, WNLI excluded)"),
}


def glue_average(scores: Mapping[str, float], convention: str = "8task") -> tuple[float, str]:
    """GLUE average under a stated convention -> (value, label of the convention).

    BiT's rows match "8task", the BERT / BinaryBERT / BiBERT rows "9numbers"
    (docs/methods.md §6.1). Both are reported by the sweep; the label travels with the number.
    """
    if convention not in CONVENTIONS:
        raise KeyError(f"unknown GLUE average convention {convention!r}; use {list(CONVENTIONS)}")
    keys, label = CONVENTIONS[convention]
    missing = [k for k in keys if k not in scores]
    if missing:
        raise KeyError(f"glue_average({convention}): scores lack {', '.join(missing)}")
    return float(np.mean([scores[k] for k in keys])), label
