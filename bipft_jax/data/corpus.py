"""Pretraining text: documents from local files or TFDS, and the tokenized in-memory corpus.

A document is a list of sentences. Local files split into documents at blank lines
(`doc_split="blank_line"`) or at WikiText ` = Title = ` lines (`"wiki_title"`); `"auto"` picks
`wiki_title` when the file has such lines. Sentences come from a light rule-based splitter.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

DOC_SPLITS = ("blank_line", "wiki_title", "auto")
_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKI_HEADING = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


class CorpusError(ValueError):
    """Unusable corpus input; the message names the path, dataset or setting."""


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences at `.`/`!`/`?` followed by a capitalised word."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s.strip()] if text else []


def expand_inputs(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand globs to a sorted file list; every pattern must match at least one file."""
    files: list[Path] = []
    for pat in patterns:
        matched = sorted(glob.glob(str(pat), recursive=True))
        matched = [m for m in matched if Path(m).is_file()]
        if not matched:
            raise CorpusError(f"input {str(pat)!r} matches no file")
        files += [Path(m) for m in matched]
    return files


def _read_lines(path: Path) -> list[str]:
    lines = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
    return lines


def _resolve_split(lines: Sequence[str], doc_split: str, path: Path) -> str:
    if doc_split not in DOC_SPLITS:
        raise CorpusError(f"doc_split={doc_split!r} for {path}; use one of {DOC_SPLITS}")
    if doc_split == "auto":
        return "wiki_title" if any(_WIKI_TITLE.match(x) for x in lines[:5000]) else "blank_line"
    return doc_split


def documents_from_lines(lines: Sequence[str], mode: str) -> Iterator[list[str]]:
    """Documents (lists of sentences) from the lines of one file."""
    doc: list[str] = []
    para: list[str] = []

    def flush_para() -> None:
        if para:
            doc.extend(split_sentences(" ".join(para)))
            para.clear()

    for line in lines:
        if mode == "wiki_title":
            if _WIKI_TITLE.match(line):
                flush_para()
                if doc:
                    yield doc
                doc = []
                continue
            if _WIKI_HEADING.match(line):
                flush_para()
                continue
        if line.strip():
            para.append(line)
            continue
        flush_para()  # blank line: paragraph end (and document end in blank_line mode)
        if mode == "blank_line" and doc:
            yield doc
            doc = []
    flush_para()
    if doc:
        yield doc


def iter_text_documents(
    patterns: Sequence[str | Path], doc_split: str = "auto"
) -> Iterator[list[str]]:
    """Documents from local text files (globs), in file order."""
    for path in expand_inputs(patterns):
        lines = _read_lines(path)
        if not any(x.strip() for x in lines):
            raise CorpusError(f"{path}: file is empty")
        yield from documents_from_lines(lines, _resolve_split(lines, doc_split, path))


def iter_tfds_documents(
    name: str, split: str = "train", data_dir: str | None = None, text_field: str = "text"
) -> Iterator[list[str]]:
    """Documents of a prepared TFDS text dataset (e.g. `wikipedia/20230601.en`); `data_dir`
    may be a `gs://` path. Paragraphs are the text's lines; sentences are split from them."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.builder(name, data_dir=data_dir).as_data_source(split=split)
    except Exception as e:  # TFDS raises assorted errors for missing / unprepared data
        raise CorpusError(
            f"TFDS dataset {name!r} split {split!r} not available in data_dir={data_dir!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    for i, record in enumerate(source):
        if text_field not in record:
            raise CorpusError(
                f"TFDS {name!r} record {i} has no field {text_field!r}: {list(record)}"
            )
        text = record[text_field]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        doc = [s for para in text.split("\n") for s in split_sentences(para)]
        if doc:
            yield doc


@dataclasses.dataclass
class TokenizedCorpus:
    """Flat token storage: sentence k is `tokens[sent_bounds[k]:sent_bounds[k+1]]`, document d
    holds sentences `doc_bounds[d]:doc_bounds[d+1]` (so a sentence run is one token slice)."""

    tokens: np.ndarray  # uint16 when the vocab fits, else int32
    sent_bounds: np.ndarray  # int64 [S+1]
    doc_bounds: np.ndarray  # int64 [D+1]

    @property
    def num_docs(self) -> int:
        return len(self.doc_bounds) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sent_bounds) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sent_bounds[-1])

    def sentence_lengths(self) -> np.ndarray:
        return np.diff(self.sent_bounds)

    def document(self, d: int) -> list[np.ndarray]:
        s0, s1 = self.doc_bounds[d], self.doc_bounds[d + 1]
        return [self.tokens[self.sent_bounds[k] : self.sent_bounds[k + 1]] for k in range(s0, s1)]

    @classmethod
    def from_documents(cls, docs: Iterable[Sequence[Sequence[int]]], vocab_size: int = 65535):
        """Build from token-id documents; empty sentences and documents are dropped."""
        lengths: list[int] = []
        doc_bounds = [0]
        chunks: list[np.ndarray] = []
        dtype = np.uint16 if vocab_size <= 65535 else np.int32
        for doc in docs:
            sents = [np.asarray(s, dtype) for s in doc if len(s)]
            if not sents:
                continue
            lengths += [len(s) for s in sents]
            chunks += sents
            doc_bounds.append(len(lengths))
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
        sent_bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        return cls(tokens, sent_bounds.astype(np.int64), np.asarray(doc_bounds, np.int64))


def tokenize_documents(
    docs: Iterable[list[str]], tokenizer, max_docs: int | None = None, batch_docs: int = 256
) -> Iterator[list[list[int]]]:
    """Tokenize documents in batches (the Rust tokenizer parallelises within a batch)."""
    buf: list[list[str]] = []

    def flush() -> Iterator[list[list[int]]]:
        flat = [s for d in buf for s in d]
        ids = tokenizer.tokenize_batch_to_ids(flat)
        k = 0
        for d in buf:
            yield ids[k : k + len(d)]
            k += len(d)
        buf.clear()

    for n, doc in enumerate(docs):
        if max_docs is not None and n >= max_docs:
            break
        buf.append(doc)
        if len(buf) >= batch_docs:
            yield from flush()
    yield from flush()
