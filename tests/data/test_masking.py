"""Batch-vectorised MLM masking vs a plain per-row Python reference on random inputs."""

import numpy as np
import pytest

from bipft_jax.data.masking import IGNORE, mask_batch

CLS, SEP, MASK, PAD = 2, 3, 4, 0
V = 50
RANDOM_IDS = np.arange(5, V)
IS_CONT = np.zeros(V, bool)
IS_CONT[30:] = True  # ids >= 30 are '##' pieces


def _reference_row(ids, att, u_sel, u_kind, pick, wwm, p, cap):
    L = len(ids)
    cand = [i for i in range(L) if att[i] and ids[i] not in (CLS, SEP)]
    k = max(int(np.rint(len(cand) * p)), 1 if cand else 0)
    k = min(k, cap) if cap is not None else k
    if wwm:
        words = []
        for i in cand:
            if words and IS_CONT[ids[i]] and words[-1][-1] == i - 1:
                words[-1].append(i)
            else:
                words.append([i])
        chosen, total = [], 0
        for w in sorted(words, key=lambda w: (u_sel[w[0]], w[0])):
            if total + len(w) > k:
                break  # a prefix of the words in score order
            chosen += w
            total += len(w)
    else:
        chosen = sorted(cand, key=lambda i: (u_sel[i], i))[:k]
    out, labels = ids.copy(), np.full(L, IGNORE)
    for i in chosen:
        labels[i] = ids[i]
        if u_kind[i] < 0.8:
            out[i] = MASK
        elif u_kind[i] < 0.9:
            out[i] = RANDOM_IDS[pick[i]]
    return out, labels


@pytest.mark.parametrize("wwm", [False, True])
@pytest.mark.parametrize("cap", [None, 3])
def test_mask_batch_matches_reference(wwm, cap):
    rng = np.random.default_rng(7)
    B, L = 64, 40
    ids = rng.integers(5, V, (B, L))
    att = np.zeros((B, L), np.int32)
    for r in range(B):
        n = int(rng.integers(4, L + 1))
        s = int(rng.integers(2, n - 1))
        ids[r, 0], ids[r, s], ids[r, n - 1] = CLS, SEP, SEP
        ids[r, n:] = PAD
        att[r, :n] = 1
    u_sel, u_kind = rng.random((B, L)), rng.random((B, L))
    pick = rng.integers(0, len(RANDOM_IDS), (B, L))
    out, labels = mask_batch(
        ids, att, u_sel, u_kind, pick, cls_id=CLS, sep_id=SEP, mask_id=MASK,
        random_ids=RANDOM_IDS, is_continuation=IS_CONT if wwm else None, mask_prob=0.3,
        max_predictions=cap,
    )  # fmt: skip
    for r in range(B):
        want_out, want_labels = _reference_row(ids[r], att[r], u_sel[r], u_kind[r], pick[r],
                                               wwm, 0.3, cap)  # fmt: skip
        np.testing.assert_array_equal(out[r], want_out, err_msg=f"row {r}")
        np.testing.assert_array_equal(labels[r], want_labels, err_msg=f"row {r}")
    assert out.dtype == labels.dtype == np.int32


def test_no_masking_when_prob_zero():
    ids = np.array([[CLS, 7, 8, SEP, 9, SEP]])
    out, labels = mask_batch(
        ids, np.ones_like(ids), np.zeros((1, 6)), np.zeros((1, 6)), np.zeros((1, 6), int),
        cls_id=CLS, sep_id=SEP, mask_id=MASK, random_ids=RANDOM_IDS, mask_prob=0.0,
    )  # fmt: skip
    assert (labels == IGNORE).all() and (out == ids).all()
