"""Independent NumPy (float64) re-implementations of the losses, written from methods.md §4."""

import numpy as np


def log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ce_ignore(logits, labels, weights=None):
    """Loop-based CE/accuracy over labels != -100."""
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    labels = np.asarray(labels).reshape(-1)
    w = np.ones(labels.shape) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    num = den = hits = 0.0
    for row, lab, wi in zip(logits, labels, w, strict=True):
        if lab == -100:
            continue
        num += -log_softmax(row)[lab] * wi
        hits += float(np.argmax(row) == lab) * wi
        den += wi
    return (num / den, hits / den) if den else (0.0, 0.0)


def soft_ce(s, t, temp=1.0):
    p = np.exp(log_softmax(np.asarray(t, np.float64) / temp))
    return float(np.mean(-p * log_softmax(np.asarray(s, np.float64) / temp)))


def masked_soft_ce_sum_vocab(s, t, labels, temp=1.0):
    p = np.exp(log_softmax(np.asarray(t, np.float64) / temp))
    per = -(p * log_softmax(np.asarray(s, np.float64) / temp)).sum(-1)
    keep = labels != -100
    return float(per[keep].mean())


def mse(a, b, mask=None):
    d2 = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is None:
        return float(d2.mean())
    m = np.broadcast_to(mask, d2.shape)
    return float((d2 * m).sum() / m.sum())


def sim(x):
    x = np.asarray(x, np.float64)
    return x @ np.swapaxes(x, -1, -2) / np.sqrt(x.shape[-1])


def dmd_ref(gs, gt):
    gs, gt = np.asarray(gs, np.float64), np.asarray(gt, np.float64)
    gs = np.where(gs <= -1e2, 0.0, gs)
    gt = np.where(gt <= -1e2, 0.0, gt)
    return float(np.linalg.norm((gs / np.linalg.norm(gs) - gt / np.linalg.norm(gt)).ravel()))


def dmd_per_example(gs, gt, token_mask):
    """Mean over examples of the normalized distance restricted to valid tokens (slicing)."""
    out = []
    for b in range(gs.shape[0]):
        n = int(token_mask[b].sum())  # valid tokens are a prefix in the tests
        if gs.ndim == 4:
            s, t = gs[b, :, :n, :n], gt[b, :, :n, :n]
        else:
            s, t = gs[b, :n], gt[b, :n]
        s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
        out.append(np.linalg.norm((s / np.linalg.norm(s) - t / np.linalg.norm(t)).ravel()))
    return float(np.mean(out))
