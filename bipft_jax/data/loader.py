"""Resumable, per-host-sharded MLM+NSP batch iterator.

Global batch `step` holds stream examples `step*B .. step*B+B-1` (instances reshuffled every
epoch with the seed); host `p` of `P` gets the contiguous slice `[p*B/P, (p+1)*B/P)`. Every
example is a pure function of (seed, step, index), so the state is just the next step, and
worker processes (`num_workers`) can build batches ahead without changing any result.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bipft_jax import paths
from bipft_jax.data.corpus import (
    CorpusError,
    TokenizedCorpus,
    iter_text_documents,
    tokenize_documents,
)
from bipft_jax.data.prepare import file_sha256, load_prepared
from bipft_jax.data.pretrain_examples import ExampleBuilder, MaskingConfig, Vocabulary
from bipft_jax.data.tokenizer import BertTokenizer, read_vocab

SPLITS = ("train", "eval")
_EVAL_SPLIT_SEED = 20_231_214  # fixed: the held-out documents do not depend on the run seed

_WORKER_BUILDER: ExampleBuilder | None = None  # set in worker processes


def _worker_init(builder: ExampleBuilder) -> None:
    global _WORKER_BUILDER
    _WORKER_BUILDER = builder


def _worker_batch(step: int, lo: int, hi: int, global_batch: int) -> dict[str, np.ndarray]:
    assert _WORKER_BUILDER is not None
    return _WORKER_BUILDER.batch(step, range(lo, hi), global_batch)


def split_documents(num_docs: int, eval_fraction: float, split: str) -> np.ndarray:
    """Document ids of the train or held-out eval split (fixed, seed-independent)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; use one of {SPLITS}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction} must be in [0, 1)")
    n_eval = math.ceil(eval_fraction * num_docs)
    if split == "eval" and n_eval == 0:
        raise ValueError("split='eval' needs eval_fraction > 0")
    perm = np.random.default_rng(_EVAL_SPLIT_SEED).permutation(num_docs)
    return np.sort(perm[:n_eval] if split == "eval" else perm[n_eval:])


def _load_corpus(source, vocab_file, doc_split: str, max_docs: int | None):
    """A prepared directory, or text files / globs tokenized in memory."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():  # must be a prepared dir
        corpus, manifest = load_prepared(source)
        vocab_file = vocab_file or manifest["settings"]["vocab_file"]
        vocab = read_vocab(vocab_file)
        if file_sha256(vocab_file) != manifest["settings"]["vocab_sha256"]:
            raise CorpusError(
                f"vocab {vocab_file} differs (sha256) from the one {source} was prepared with "
                f"({manifest['settings']['vocab_file']}); pass vocab_file= the original"
            )
        return corpus, vocab
    files = [source] if isinstance(source, (str, Path)) else list(source)
    tok = BertTokenizer.from_vocab(vocab_file or paths.default_vocab_file())
    docs = tokenize_documents(iter_text_documents(files, doc_split), tok, max_docs)
    return TokenizedCorpus.from_documents(docs, tok.vocab_size), tok.vocab


class PretrainLoader:
    """Iterator of local MLM+NSP batches (dicts of numpy arrays, leading dim B/process_count).

    Args:
      source: a `bipft prepare` output directory, or text file paths / globs.
      global_batch_size, seq_len, seed: batch shape and the one seed for all randomness.
      process_index, process_count: this host's slice; default `jax.process_index/count()`.
      split, eval_fraction: train on the other documents, evaluate on a held-out fraction.
      num_workers: >0 builds batches ahead in that many processes (same batches as 0);
        `worker_start_method` "spawn" (default; safe once JAX runs threads) or "fork".
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        global_batch_size: int,
        seq_len: int = 128,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        *,
        vocab_file: str | Path | None = None,
        doc_split: str = "auto",
        max_docs: int | None = None,
        mask_prob: float = 0.15,
        whole_word_mask: bool = False,
        max_predictions: int | None = None,
        short_seq_prob: float = 0.1,
        split: str = "train",
        eval_fraction: float = 0.0,
        num_workers: int = 0,
        prefetch: int = 2,
        worker_start_method: str = "spawn",
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by "
                f"process_count={process_count}"
            )
        corpus, vocab = _load_corpus(source, vocab_file, doc_split, max_docs)
        cfg = MaskingConfig(
            seq_len=seq_len, mask_prob=mask_prob, max_predictions=max_predictions,
            whole_word_mask=whole_word_mask, short_seq_prob=short_seq_prob,
        )  # fmt: skip
        doc_ids = split_documents(corpus.num_docs, eval_fraction, split)
        self.builder = ExampleBuilder(corpus, Vocabulary.from_vocab_dict(vocab), cfg, seed, doc_ids)
        self.global_batch_size, self.seed = global_batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.num_workers, self.prefetch = num_workers, max(1, prefetch)
        self.worker_start_method = worker_start_method
        self._fingerprint = self._make_fingerprint(cfg, split, eval_fraction)
        self.step = 0
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pending: deque = deque()

    def _make_fingerprint(self, cfg: MaskingConfig, split: str, eval_fraction: float) -> str:
        c = self.builder.corpus
        desc = [repr(cfg), split, eval_fraction, self.seed, self.global_batch_size,
                c.num_docs, c.num_tokens, int(c.tokens[:4096].astype(np.int64).sum())]  # fmt: skip
        return hashlib.sha256(json.dumps(desc, default=str).encode()).hexdigest()[:16]

    @property
    def examples_per_epoch(self) -> int:
        return self.builder.num_instances

    def _local_range(self) -> tuple[int, int]:
        lo = self.process_index * self.local_batch_size
        return lo, lo + self.local_batch_size

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's batch for `step` (does not move the iterator)."""
        lo, hi = self._local_range()
        return self.builder.batch(step, range(lo, hi), self.global_batch_size)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_workers <= 0:
            out = self.batch_at(self.step)
        else:
            out = self._next_from_pool()
        self.step += 1
        return out

    def _next_from_pool(self) -> dict[str, np.ndarray]:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                self.num_workers,
                mp.get_context(self.worker_start_method),
                _worker_init,
                (self.builder,),
            )
        lo, hi = self._local_range()
        ahead = self.num_workers * self.prefetch
        next_step = self.step + len(self._pending)
        while len(self._pending) < ahead:
            fut = self._pool.submit(_worker_batch, next_step, lo, hi, self.global_batch_size)
            self._pending.append(fut)
            next_step += 1
        return self._pending.popleft().result()

    def state(self) -> dict:
        """Small JSON-able state; `restore` of it continues with exactly the same batches."""
        return {"step": self.step, "seed": self.seed, "fingerprint": self._fingerprint}

    def restore(self, state: dict) -> None:
        for key in ("step", "seed", "fingerprint"):
            if key not in state:
                raise KeyError(f"loader state lacks {key!r}: {state}")
        if state["seed"] != self.seed or state["fingerprint"] != self._fingerprint:
            raise ValueError(
                "loader state was saved with a different corpus, seed or settings "
                f"(saved seed {state['seed']}, fingerprint {state['fingerprint']}; this loader "
                f"seed {self.seed}, fingerprint {self._fingerprint})"
            )
        self._drop_pending()
        self.step = int(state["step"])

    def _drop_pending(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
