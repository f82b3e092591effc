"""BERT dynamic MLM masking of a whole batch, from per-example uniform draws.

Each row's randomness comes in as arrays (`u_select`, `u_kind`, `random_pick`) drawn from that
example's own stream, so the result for a row does not depend on the other rows of the batch.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # mlm_labels value at positions that are not predicted


def num_to_mask(n_candidates: np.ndarray, mask_prob: float, max_predictions: int | None):
    """Per row: round(mask_prob * candidates), at least 1 if any, at most `max_predictions`."""
    k = np.maximum(np.rint(n_candidates * mask_prob), np.minimum(n_candidates, 1)).astype(np.int64)
    k = np.where(mask_prob > 0, k, 0)
    return k if max_predictions is None else np.minimum(k, max_predictions)


def mask_batch(
    ids: np.ndarray,
    attention: np.ndarray,
    u_select: np.ndarray,
    u_kind: np.ndarray,
    random_pick: np.ndarray,
    *,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    random_ids: np.ndarray,
    is_continuation: np.ndarray | None = None,
    mask_prob: float = 0.15,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask `ids` [B, L] -> (masked ids, mlm_labels int32: the original id where predicted).

    Candidates are attended positions other than [CLS]/[SEP]. Per row, the k candidates with the
    smallest `u_select` are predicted; with `is_continuation` (whole-word masking) a word's
    pieces share the score of its first piece and words are taken in score order while the
    running total stays <= k. A predicted token becomes [MASK] if `u_kind` < 0.8, a random
    non-special token (`random_ids[random_pick]`) if 0.8 <= `u_kind` < 0.9, else stays.
    """
    B, L = ids.shape
    cand = (attention == 1) & (ids != cls_id) & (ids != sep_id)
    k = num_to_mask(cand.sum(1), mask_prob, max_predictions)[:, None]
    pos = np.broadcast_to(np.arange(L), (B, L))
    rows = np.arange(B)[:, None]
    if is_continuation is None:
        score = np.where(cand, u_select, np.inf)
        order = np.argsort(score, axis=1, kind="stable")
        rank = np.empty_like(order)
        rank[rows, order] = pos
        chosen = cand & (rank < k)
    else:
        prev_cand = np.zeros_like(cand)
        prev_cand[:, 1:] = cand[:, :-1]
        start = cand & ~(is_continuation[ids] & prev_cand)  # '##' after [SEP] starts a word
        last_start = np.maximum.accumulate(np.where(start, pos, 0), axis=1)
        score = np.where(cand, u_select[rows, last_start], np.inf)
        order = np.argsort(score, axis=1, kind="stable")  # a word's pieces stay together
        s_cand = cand[rows, order]
        s_start = start[rows, order]
        cum = np.cumsum(s_cand, axis=1)
        # Running total at the end of each word: the cum just before the next word starts.
        is_end = s_cand & np.concatenate(
            [s_start[:, 1:] | ~s_cand[:, 1:], np.ones((B, 1), bool)], 1
        )
        end_cum = np.where(is_end, cum, np.iinfo(np.int64).max)
        through = np.minimum.accumulate(end_cum[:, ::-1], axis=1)[:, ::-1]
        chosen = np.zeros_like(cand)
        chosen[rows, order] = s_cand & (through <= k)
    labels = np.where(chosen, ids, IGNORE).astype(np.int32)
    out = np.where(chosen & (u_kind < 0.8), mask_id, ids)
    replace = chosen & (u_kind >= 0.8) & (u_kind < 0.9)
    out = np.where(replace, random_ids[random_pick], out).astype(np.int32)
    return out, labels
