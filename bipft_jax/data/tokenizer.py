"""Uncased BERT WordPiece tokenizer on the Rust `tokenizers` library.

Built by hand from a `vocab.txt` (never via transformers' fast tokenizer, which silently builds a
5-token vocabulary from `vocab_file=` in transformers 5). On construction it checks the vocab size
and, for the standard uncased vocab, a known encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Known encoding in bert-base-uncased (checked whenever the vocab is that one).
_KNOWN_TEXT = "it is a truth"
_KNOWN_IDS = [101, 2009, 2003, 1037, 3606, 102]


class VocabError(ValueError):
    """A vocab file that cannot be used (missing, empty, not UTF-8, no special tokens)."""


def read_vocab(path: str | Path) -> dict[str, int]:
    """Read a BERT `vocab.txt` (one token per line, id = line number - 1)."""
    path = Path(path)
    if not path.is_file():
        raise VocabError(f"vocab file not found: {path}")
    vocab: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                token = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise VocabError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            vocab.setdefault(token, lineno - 1)
    if not vocab:
        raise VocabError(f"vocab file is empty: {path}")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise VocabError(f"{path}: vocab lacks special token(s) {', '.join(missing)}")
    return vocab


def truncate_pair(a: list[int], b: list[int] | None, max_tokens: int) -> None:
    """BERT's longest-first rule in place: drop from the end of the longer (ties: `b`)."""
    while len(a) + (len(b) if b is not None else 0) > max_tokens:
        if b is None or len(a) > len(b):
            a.pop()
        else:
            b.pop()


class BertTokenizer:
    """Lower-casing, accent-stripping BERT WordPiece tokenizer.

    `encode` returns plain Python lists; `encode_batch` returns padded int32 numpy arrays.
    """

    def __init__(self, vocab: dict[str, int], source: str = "<dict>"):
        self.vocab = vocab
        self.source = source
        model = WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS
        )
        self.vocab_size = max(vocab.values()) + 1
        if tok.get_vocab_size() != self.vocab_size:
            raise VocabError(
                f"{source}: tokenizers built a vocab of {tok.get_vocab_size()} tokens, "
                f"expected {self.vocab_size}"
            )
        self._check_known_encoding()

    @property
    def backend(self) -> Tokenizer:
        """The `tokenizers` pipeline (normalizer, pre-tokenizer, WordPiece; no special tokens)."""
        return self._tok

    @classmethod
    def from_vocab(cls, path: str | Path) -> BertTokenizer:
        return cls(read_vocab(path), source=str(path))

    def _check_known_encoding(self) -> None:
        if self.vocab_size == 30522 and self.vocab.get("truth") == 3606:
            got = self.encode(_KNOWN_TEXT)["input_ids"]
            if got != _KNOWN_IDS:
                raise VocabError(f"{self.source}: {_KNOWN_TEXT!r} -> {got}, expected {_KNOWN_IDS}")

    # --- token level -----------------------------------------------------------------------
    def tokenize_to_ids(self, text: str) -> list[int]:
        """Word-piece ids of `text` without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch_to_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) or "[UNK]" for i in ids]

    def special_ids(self) -> list[int]:
        return [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]

    # --- model inputs ----------------------------------------------------------------------
    def build_inputs(self, a: list[int], b: list[int] | None, max_length: int) -> dict:
        """`[CLS] a [SEP] (b [SEP])` after BERT's longest-first pair truncation."""
        a, b = list(a), (list(b) if b is not None else None)
        truncate_pair(a, b, max_length - (3 if b is not None else 2))
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}

    def encode(self, text_a: str, text_b: str | None = None, max_length: int = 128) -> dict:
        """Encode one text or pair; lists of ints, unpadded, at most `max_length` long."""
        a = self.tokenize_to_ids(text_a)
        b = self.tokenize_to_ids(text_b) if text_b is not None else None
        return self.build_inputs(a, b, max_length)

    def encode_batch(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str | None] | None = None,
        max_length: int = 128,
    ) -> dict[str, np.ndarray]:
        """Encode many texts (pairs), padded to `max_length`: int32 arrays [N, max_length]."""
        n = len(texts_a)
        if texts_b is not None and len(texts_b) != n:
            raise ValueError(f"texts_a has {n} items but texts_b has {len(texts_b)}")
        ids_a = self.tokenize_batch_to_ids(texts_a)
        ids_b: list[list[int] | None] = [None] * n
        if texts_b is not None:
            present = [i for i, t in enumerate(texts_b) if t is not None]
            encoded = self.tokenize_batch_to_ids([t for t in texts_b if t is not None])
            for i, ids in zip(present, encoded, strict=True):
                ids_b[i] = ids
        out = {k: np.zeros((n, max_length), np.int32) for k in _FIELDS}
        out["input_ids"][:] = self.pad_id
        for i in range(n):
            enc = self.build_inputs(ids_a[i], ids_b[i], max_length)
            for k in _FIELDS:
                out[k][i, : len(enc[k])] = enc[k]
        return out


_FIELDS = ("input_ids", "token_type_ids", "attention_mask")
