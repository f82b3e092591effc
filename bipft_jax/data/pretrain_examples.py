"""BERT MLM + NSP examples from a `TokenizedCorpus`, deterministic per (seed, step, index).

An *instance plan* packs each document's consecutive sentences into chunks that fill the sequence
(BERT's `create_instances_from_document`, with `short_seq_prob` shorter targets). Every example
draws its randomness (segment split, random next document, truncation, masking) from its own
`numpy` Generator seeded by (seed, step, example index), so any batch can be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bipft_jax.data.corpus import TokenizedCorpus
from bipft_jax.data.masking import IGNORE, mask_batch  # noqa: F401  (IGNORE re-exported)

_PLAN_TAG, _EPOCH_TAG, _EXAMPLE_TAG = 0, 1, 2  # stream tags: disjoint random streams


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    seq_len: int = 128
    mask_prob: float = 0.15
    max_predictions: int | None = None  # cap on masked tokens per example (None: no cap)
    whole_word_mask: bool = False
    random_next_prob: float = 0.5  # NSP: fraction of random (label 1) second segments
    short_seq_prob: float = 0.1  # BERT: 10% of chunks target a random shorter length

    def __post_init__(self):
        if self.seq_len < 8:
            raise ValueError(f"seq_len={self.seq_len} is too short (need >= 8)")
        for name in ("mask_prob", "random_next_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """What masking needs to know about the vocab."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    random_ids: np.ndarray  # ids used for the 10% random replacement (no special tokens)
    is_continuation: np.ndarray  # bool [V]: token starts with "##" (whole-word masking)

    @classmethod
    def from_tokenizer(cls, tok) -> Vocabulary:
        return cls.from_vocab_dict(tok.vocab)

    @classmethod
    def from_vocab_dict(cls, vocab: dict[str, int]) -> Vocabulary:
        size = max(vocab.values()) + 1
        cont = np.zeros(size, bool)
        special = np.zeros(size, bool)
        for tok, i in vocab.items():
            cont[i] = tok.startswith("##")
            special[i] = tok.startswith("[") and tok.endswith("]")
        return cls(
            vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"], vocab["[MASK]"],
            np.flatnonzero(~special).astype(np.int32), cont,
        )  # fmt: skip


def _rng(seed: int, tag: int, *key: int) -> np.random.Generator:
    """Counter-based stream: Philox keyed by the seed, counter words (0, tag, *key).

    The lowest counter word is the block counter, so streams for different (tag, key) never
    overlap (each draws far fewer than 2**64 blocks).
    """
    return np.random.Generator(np.random.Philox(key=seed, counter=_counter(tag, key)))


def _counter(tag: int, key: tuple[int, ...]) -> np.ndarray:
    words = [0, tag, *key]
    if len(words) > 4 or min(words) < 0:
        raise ValueError(f"bad stream key {(tag, *key)}")
    return np.array(words + [0] * (4 - len(words)), np.uint64)


class _Streams:
    """The streams of `_rng`, by re-seating one Philox generator (3x cheaper than building one).
    Not thread-safe: one instance per builder, builders are per process."""

    def __init__(self, seed: int):
        self._bits = np.random.Philox(key=seed)
        self._gen = np.random.Generator(self._bits)
        self._key = self._bits.state["state"]["key"]

    def get(self, tag: int, *key: int) -> np.random.Generator:
        self._bits.state = {
            "bit_generator": "Philox",
            "state": {"counter": _counter(tag, key), "key": self._key},
            "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
        }  # fmt: skip
        return self._gen


def build_plan(
    corpus: TokenizedCorpus, doc_ids: np.ndarray, cfg: MaskingConfig, seed: int
) -> np.ndarray:
    """Instances [N, 4] = (doc, first sentence, end sentence, target length), from `doc_ids`.

    Greedy per document: a chunk takes sentences until it reaches its target length (seq_len-3,
    or with `short_seq_prob` a random shorter one). Vectorised across documents: each round cuts
    the next chunk of every unfinished document with one `searchsorted`.
    """
    rng = _rng(seed, _PLAN_TAG)
    max_tokens = cfg.seq_len - 3
    cum = corpus.sent_bounds
    docs = np.asarray(doc_ids, np.int64)
    starts, ends = corpus.doc_bounds[docs], corpus.doc_bounds[docs + 1]
    rows = []
    while True:
        live = starts < ends
        docs, starts, ends = docs[live], starts[live], ends[live]
        if not len(docs):
            break
        target = np.full(len(docs), max_tokens, np.int64)
        short = rng.random(len(docs)) < cfg.short_seq_prob
        target[short] = rng.integers(2, max_tokens + 1, int(short.sum()))
        stop = np.minimum(np.searchsorted(cum, cum[starts] + target, side="left"), ends)
        rows.append(np.stack([docs, starts, stop, target], axis=1))
        starts = stop
    if not rows:
        raise ValueError("the corpus yields no pretraining instances (no non-empty documents)")
    plan = np.concatenate(rows)
    return plan[np.lexsort((plan[:, 1], plan[:, 0]))]


class ExampleBuilder:
    """Builds padded MLM+NSP batches; all randomness from (seed, step, index in global batch)."""

    def __init__(
        self,
        corpus: TokenizedCorpus,
        vocab: Vocabulary,
        cfg: MaskingConfig,
        seed: int,
        doc_ids: np.ndarray | None = None,
    ):
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.corpus, self.vocab, self.cfg, self.seed = corpus, vocab, cfg, int(seed)
        self.doc_ids = np.arange(corpus.num_docs) if doc_ids is None else np.unique(doc_ids)
        if len(self.doc_ids) < 2:
            held = corpus.num_docs - len(self.doc_ids)
            note = f" ({held} held out for eval: data.eval_fraction)" if held else ""
            raise ValueError(
                f"NSP needs at least 2 documents, got {len(self.doc_ids)} of the corpus's "
                f"{corpus.num_docs}{note}"
            )
        self.plan = build_plan(corpus, self.doc_ids, cfg, seed)
        # One-sentence documents can only give a random next; lower the rate elsewhere so
        # the expected NSP random fraction stays `random_next_prob`.
        forced = float(np.mean(np.diff(corpus.doc_bounds)[self.plan[:, 0]] == 1))
        p = cfg.random_next_prob
        self.random_next_prob = (
            min(1.0, max(0.0, (p - forced) / (1 - forced))) if forced < 1 else 1.0
        )
        self._perm_epoch, self._perm = -1, np.arange(0)
        self._streams = _Streams(self.seed)

    @property
    def num_instances(self) -> int:
        return len(self.plan)

    def instance_for(self, global_index: int) -> np.ndarray:
        """The plan row used by the `global_index`-th example of the (repeating) stream."""
        epoch, pos = divmod(global_index, len(self.plan))
        if epoch != self._perm_epoch:
            self._perm = _rng(self.seed, _EPOCH_TAG, epoch).permutation(len(self.plan))
            self._perm_epoch = epoch
        return self.plan[self._perm[pos]]

    # --- one example -----------------------------------------------------------------------
    def _run(self, j: int, limit: int, want: int) -> np.ndarray:
        """Tokens of sentences j, j+1, ... (< limit) until at least `want` tokens."""
        c = self.corpus
        k = int(np.searchsorted(c.sent_bounds[j + 1 : limit + 1] - c.sent_bounds[j], want))
        return c.tokens[c.sent_bounds[j] : c.sent_bounds[min(j + k + 1, limit)]]

    def _segments(self, inst: np.ndarray, rng: np.random.Generator):
        """(A, B, is_random_next). A chunk of one sentence takes its actual next segment from
        the following (or, at the document's end, preceding) sentence; only a one-sentence
        document forces a random next."""
        c = self.corpus
        d, s0, s1, target = (int(x) for x in inst)
        d0, d1 = int(c.doc_bounds[d]), int(c.doc_bounds[d + 1])
        a_end = s0 + (int(rng.integers(1, s1 - s0)) if s1 - s0 >= 2 else 1)
        a = c.tokens[c.sent_bounds[s0] : c.sent_bounds[a_end]]
        is_random = d1 - d0 == 1 or rng.random() < self.random_next_prob
        if is_random:
            r = int(rng.integers(0, len(self.doc_ids) - 1))
            other = int(self.doc_ids[r + (r >= int(np.searchsorted(self.doc_ids, d)))])
            o0, o1 = int(c.doc_bounds[other]), int(c.doc_bounds[other + 1])
            b = self._run(int(rng.integers(o0, o1)), o1, max(1, target - len(a)))
        elif a_end < s1:
            b = c.tokens[c.sent_bounds[a_end] : c.sent_bounds[s1]]
        elif s1 < d1:  # one-sentence chunk: continue into the next sentences
            b = self._run(s1, d1, max(1, target - len(a)))
        else:  # one-sentence chunk at the document's end: the previous sentence comes first
            a, b = c.tokens[c.sent_bounds[s0 - 1] : c.sent_bounds[s0]], a
        return a, b, int(is_random)

    def _truncate(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
        """Longest-first to seq_len-3; each removed token comes off the front or back at random."""
        extra = len(a) + len(b) - (self.cfg.seq_len - 3)
        if extra <= 0:
            return a, b
        diff = len(a) - len(b)  # remove from the longer until equal, then alternate, b first
        first = min(extra, abs(diff))
        half, odd = divmod(extra - first, 2)
        cut_a = half + (first if diff > 0 else 0)
        cut_b = half + odd + (first if diff < 0 else 0)
        out = []
        for seg, cut in ((a, cut_a), (b, cut_b)):
            front = int(rng.binomial(cut, 0.5)) if cut else 0
            out.append(seg[front : len(seg) - (cut - front)])
        return out[0], out[1]

    def batch(
        self, step: int, indices: Sequence[int], global_batch_size: int
    ) -> dict[str, np.ndarray]:
        """Examples `indices` of global batch `step` as [len(indices), seq_len] arrays.

        Row i depends only on (seed, step, indices[i]): segments, truncation and the masking
        draws all come from that example's own stream.
        """
        L, v, cfg = self.cfg.seq_len, self.vocab, self.cfg
        B = len(indices)
        ids = np.full((B, L), v.pad_id, np.int32)
        types = np.zeros((B, L), np.int32)
        attention = np.zeros((B, L), np.int32)
        nsp = np.zeros(B, np.int32)
        u_select, u_kind = np.empty((B, L)), np.empty((B, L))
        pick = np.empty((B, L), np.int64)
        for r, index in enumerate(indices):
            rng = self._streams.get(_EXAMPLE_TAG, step, index)
            inst = self.instance_for(step * global_batch_size + index)
            a, b, nsp[r] = self._segments(inst, rng)
            a, b = self._truncate(a, b, rng)
            n = len(a) + len(b) + 3
            ids[r, 0], ids[r, len(a) + 1], ids[r, n - 1] = v.cls_id, v.sep_id, v.sep_id
            ids[r, 1 : len(a) + 1] = a
            ids[r, len(a) + 2 : n - 1] = b
            types[r, len(a) + 2 : n] = 1
            attention[r, :n] = 1
            u_select[r], u_kind[r] = rng.random(L), rng.random(L)
            pick[r] = rng.integers(0, len(v.random_ids), L)
        masked, labels = mask_batch(
            ids, attention, u_select, u_kind, pick,
            cls_id=v.cls_id, sep_id=v.sep_id, mask_id=v.mask_id, random_ids=v.random_ids,
            is_continuation=v.is_continuation if cfg.whole_word_mask else None,
            mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
        )  # fmt: skip
        return {
            "input_ids": masked, "token_type_ids": types, "attention_mask": attention,
            "mlm_labels": labels, "next_sentence_label": nsp,
        }  # fmt: skip

    def example(self, step: int, index: int, global_batch_size: int) -> dict[str, np.ndarray]:
        """The `index`-th example of global batch `step` (arrays of length seq_len)."""
        return {
            k: x[0] for k, x in self.batch(step, range(index, index + 1), global_batch_size).items()
        }
