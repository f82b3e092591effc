"""`bipft prepare`: tokenize a corpus once into sharded ArrayRecord files plus `manifest.json`.

Each record is one document: int32 little-endian `[n_sentences, len_1..len_n, tokens...]`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from bipft_jax import paths
from bipft_jax.data.corpus import (
    DOC_SPLITS,
    CorpusError,
    TokenizedCorpus,
    iter_text_documents,
    iter_tfds_documents,
    tokenize_documents,
)
from bipft_jax.data.tokenizer import BertTokenizer
from bipft_jax.errors import CommandParser

FORMAT = "bipft-pretrain-records-v1"
MANIFEST = "manifest.json"


def encode_record(doc: Sequence[Sequence[int]]) -> bytes:
    lens = [len(s) for s in doc]
    flat = [t for s in doc for t in s]
    return np.asarray([len(doc), *lens, *flat], "<i4").tobytes()


def decode_record(data: bytes) -> list[np.ndarray]:
    arr = np.frombuffer(data, "<i4")
    n = int(arr[0])
    bounds = np.concatenate([[0], np.cumsum(arr[1 : n + 1])]) + n + 1
    return [arr[bounds[i] : bounds[i + 1]] for i in range(n)]


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.array_record"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_prepared(
    docs: Iterable[list[list[int]]],
    out_dir: str | Path,
    shard_size: int,
    settings: dict,
    log=print,
) -> dict:
    """Write tokenized documents to `out_dir/shard-XXXXX.array_record` + manifest; returns it."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if shard_size < 1:
        raise CorpusError(f"shard_size must be >= 1, got {shard_size}")
    out = paths.local_path(out_dir, "prepared corpus --out")
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        raise CorpusError(f"{out} already holds a prepared corpus ({MANIFEST}); use a new --out")
    shards: list[dict] = []
    totals = {"num_docs": 0, "num_sentences": 0, "num_tokens": 0}
    writer, shard_docs, shard_tokens, t0 = None, 0, 0, time.time()

    def close_shard(w) -> None:
        w.close()
        shards.append({"file": shard_name(len(shards)), "num_docs": shard_docs,
                       "num_tokens": shard_tokens})  # fmt: skip

    for doc in docs:
        doc = [s for s in doc if len(s)]
        if not doc:
            continue
        if writer is None:
            writer = ArrayRecordWriter(str(out / shard_name(len(shards))), "group_size:1")
            shard_docs = shard_tokens = 0
        writer.write(encode_record(doc))
        n_tok = sum(len(s) for s in doc)
        shard_docs += 1
        shard_tokens += n_tok
        totals["num_docs"] += 1
        totals["num_sentences"] += len(doc)
        totals["num_tokens"] += n_tok
        if shard_docs >= shard_size:
            close_shard(writer)
            writer = None
            log(
                f"prepare: {totals['num_docs']} docs, {totals['num_tokens']} tokens, "
                f"{len(shards)} shard(s), {time.time() - t0:.1f}s"
            )
    if writer is not None:
        close_shard(writer)
    if not totals["num_docs"]:
        raise CorpusError("no non-empty documents in the input; nothing written")
    manifest = {"format": FORMAT, **totals, "settings": settings, "shards": shards}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"prepare: done: {totals} in {len(shards)} shard(s) -> {out}")
    return manifest


def read_manifest(prepared_dir: str | Path) -> dict:
    path = paths.local_path(prepared_dir, "prepared corpus") / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{prepared_dir}: no {MANIFEST} (not a `bipft prepare` output)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CorpusError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_prepared(prepared_dir: str | Path) -> tuple[TokenizedCorpus, dict]:
    """Read every shard of a prepared corpus into memory (uint16 tokens) through grain's
    `ArrayRecordDataSource` (the example builder needs random access to every document)."""
    import grain

    manifest = read_manifest(prepared_dir)
    files = []
    for shard in manifest["shards"]:
        path = Path(prepared_dir) / shard["file"]
        if not path.is_file():
            raise CorpusError(f"{path}: shard listed in {MANIFEST} is missing")
        files.append(str(path))
    source = grain.sources.ArrayRecordDataSource(files)
    if len(source) != manifest["num_docs"]:
        raise CorpusError(
            f"{prepared_dir}: {len(source)} records in the shards, {MANIFEST} says "
            f"{manifest['num_docs']}"
        )
    lens, toks = [], []  # per document: sentence lengths, tokens (no per-sentence arrays)
    for rec in source.__getitems__(range(len(source))):
        arr = np.frombuffer(rec, "<i4")
        n = int(arr[0])
        lens.append(arr[1 : n + 1])
        toks.append(arr[n + 1 :])
    dtype = np.uint16 if manifest["settings"]["vocab_size"] <= 65535 else np.int32
    sent_lens = np.concatenate(lens).astype(np.int64)
    corpus = TokenizedCorpus(
        tokens=np.concatenate(toks).astype(dtype),
        sent_bounds=np.concatenate([[0], np.cumsum(sent_lens)]).astype(np.int64),
        doc_bounds=np.concatenate([[0], np.cumsum([len(x) for x in lens])]).astype(np.int64),
    )
    if corpus.num_tokens != manifest["num_tokens"] or len(corpus.tokens) != corpus.num_tokens:
        raise CorpusError(f"{prepared_dir}: token count disagrees with {MANIFEST}")
    return corpus, manifest


def prepare(
    out_dir: str | Path,
    vocab_file: str | Path,
    inputs: Sequence[str] = (),
    tfds_name: str | None = None,
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
    text_field: str = "text",
    doc_split: str = "auto",
    shard_size: int = 10_000,
    max_docs: int | None = None,
    log=print,
) -> dict:
    """Tokenize local files (`inputs`, globs) or a TFDS dataset into `out_dir`."""
    if bool(inputs) == bool(tfds_name):
        raise CorpusError("give exactly one of --input (local files) or --tfds (dataset name)")
    tok = BertTokenizer.from_vocab(vocab_file)
    if inputs:
        docs = iter_text_documents(list(inputs), doc_split)
    else:
        assert tfds_name is not None
        docs = iter_tfds_documents(tfds_name, tfds_split, tfds_data_dir, text_field)
    settings = {
        "inputs": [str(i) for i in inputs], "tfds": tfds_name, "tfds_split": tfds_split,
        "text_field": text_field, "doc_split": doc_split, "max_docs": max_docs,
        "shard_size": shard_size, "vocab_file": str(vocab_file),
        "vocab_sha256": file_sha256(vocab_file), "vocab_size": tok.vocab_size,
        "lowercase": True,
    }  # fmt: skip
    return write_prepared(
        tokenize_documents(docs, tok, max_docs), out_dir, shard_size, settings, log
    )


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="bipft prepare", description=__doc__)
    p.add_argument("--input", nargs="*", default=[], help="text files or globs")
    p.add_argument("--tfds", default=None, help="TFDS text dataset, e.g. wikipedia/20230601.en")
    p.add_argument("--tfds-split", default="train")
    p.add_argument("--tfds-data-dir", default=None, help="TFDS data_dir (may be gs://...)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--doc-split", default="auto", choices=DOC_SPLITS)
    p.add_argument(
        "--vocab", default=None, help="vocab.txt (default: the data directory's BERT vocab)"
    )
    p.add_argument("--out", required=True, help="output directory (must not hold a manifest)")
    p.add_argument("--shard-size", type=int, default=10_000, help="documents per shard")
    p.add_argument("--max-docs", type=int, default=None)
    a = p.parse_args(argv)
    # CorpusError / ValueError propagate to the `bipft` edge (errors.py): one line, exit code 2.
    prepare(
        a.out, a.vocab or paths.default_vocab_file(), a.input, a.tfds, a.tfds_split,
        a.tfds_data_dir, a.text_field, a.doc_split, a.shard_size, a.max_docs,
    )  # fmt: skip
    return 0
