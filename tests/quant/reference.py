"""Independent NumPy (float64) re-implementations of the binarizer formulas (methods.md §2)."""

import numpy as np


def sign(x):
    return np.sign(x)


def ste_grad(x, g, ste, clip, inclusive):
    ax = np.abs(x)
    if ste == "identity":
        return g
    if ste == "clipped":
        return g * ((ax <= clip) if inclusive else (ax < clip))
    # Bi-Real ApproxSign: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), scaled to clip c.
    xs = x / clip
    d = np.where((xs >= -1) & (xs < 0), 2 + 2 * xs, np.where((xs >= 0) & (xs < 1), 2 - 2 * xs, 0))
    return g * d / clip


def _axes(ndim, per_channel, channel_axis):
    keep = channel_axis % ndim
    return tuple(a for a in range(ndim) if not per_channel or a != keep)


def bwn(w, per_channel_scale, per_channel_center, channel_axis):
    m = np.abs(w).mean(axis=_axes(w.ndim, per_channel_scale, channel_axis), keepdims=True)
    mu = w.mean(axis=_axes(w.ndim, per_channel_center, channel_axis), keepdims=True)
    return m * np.sign(w - mu)


def bibert_weight_grad(w, g, channel_axis):
    """VJP of clip(W - rowmean(W), -1, 1), written out by hand."""
    axes = _axes(w.ndim, True, channel_axis)
    c = w - w.mean(axis=axes, keepdims=True)
    u = g * ((c >= -1) & (c <= 1))
    n = np.prod([w.shape[a] for a in axes])
    return u - u.sum(axis=axes, keepdims=True) / n


def levels(bits, signed):
    if signed:
        return (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return 0, 2**bits - 1


def elastic(x, alpha, bits, signed, shift_min=True):
    a = max(alpha, 1e-5)
    qn, qp = levels(bits, signed)
    off = x.min() if (not signed and bits > 1 and shift_min) else 0.0
    xs = x - off
    if signed and bits == 1:
        return a * np.sign(xs) + off
    return a * np.clip(np.round(xs / a), qn, qp) + off  # np.round: half to even


def elastic_grads(x, alpha, g, bits, signed, multiplier=1, shift_min=True):
    a = max(alpha, 1e-5)
    qn, qp = levels(bits, signed)
    off = x.min() if (not signed and bits > 1 and shift_min) else 0.0
    q = (x - off) / a
    small, big = q < qn, q > qp
    mid = ~small & ~big
    s = 1.0 / np.sqrt(x.size * qp * multiplier)
    if signed and bits == 1:
        da = s * np.sum(np.sign(x - off) * g)
    else:
        da = s * np.sum(g * (small * qn + big * qp + mid * (np.round(q) - q)))
    return g * mid, da


def alpha_init(x, bits, signed):
    qp = max(2 ** (bits - 1) - 1 if signed else 2**bits - 1, 1)
    return (2.0 if signed else 4.0) * np.abs(x).mean() / np.sqrt(qp)
