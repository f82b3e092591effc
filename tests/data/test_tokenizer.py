"""Our WordPiece tokenizer vs Hugging Face's slow (pure Python) BERT tokenizer on real GLUE text."""

import csv

import pytest

from bipft_jax.data.tokenizer import BertTokenizer, VocabError, read_vocab, truncate_pair

# (task dir, has header, text_a column, text_b column or None)
_DEV_COLUMNS = {
    "CoLA": (False, 3, None),
    "SST-2": (True, 0, None),
    "STS-B": (True, 7, 8),
    "RTE": (True, 1, 2),
    "WNLI": (True, 1, 2),
}


def _dev_texts(shared_data, task):
    header, ca, cb = _DEV_COLUMNS[task]
    with open(shared_data / "glue_data" / task / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[1:] if header else rows
    return [(r[ca], r[cb] if cb is not None else None) for r in rows]


@pytest.fixture(scope="module")
def ours(vocab_file):
    return BertTokenizer.from_vocab(vocab_file)


@pytest.fixture(scope="module")
def reference(vocab_file):
    # transformers 5: BertTokenizer(vocab_file=...) is the broken fast one; Legacy is the slow one.
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ref = BertTokenizerLegacy(vocab_file=str(vocab_file), do_lower_case=True)
    assert len(ref) == 30522
    assert ref("it is a truth")["input_ids"] == [101, 2009, 2003, 1037, 3606, 102]
    return ref


def test_vocab_and_specials(ours):
    assert ours.vocab_size == 30522
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert ours.encode("it is a truth")["input_ids"] == [101, 2009, 2003, 1037, 3606, 102]


@pytest.mark.parametrize("task", sorted(_DEV_COLUMNS))
def test_matches_hf_slow_tokenizer_on_glue_dev(ours, reference, shared_data, task):
    texts = _dev_texts(shared_data, task)
    assert len(texts) > 50
    max_length = 48  # short enough that many pairs are truncated (exercises longest-first)
    batch = ours.encode_batch([a for a, _ in texts], [b for _, b in texts], max_length=max_length)
    n_truncated = 0
    for i, (a, b) in enumerate(texts):
        full = reference.encode(a, b, add_special_tokens=False)
        assert ours.tokenize_to_ids(a + (" " + b if b else "")) == full, (task, i)
        want = reference(
            a, b, truncation="longest_first", max_length=max_length, return_token_type_ids=True
        )
        got = ours.encode(a, b, max_length=max_length)
        assert got == {k: want[k] for k in got}, (task, i, a, b)
        n = len(got["input_ids"])
        n_truncated += len(full) + (3 if b else 2) > max_length
        assert batch["input_ids"][i, :n].tolist() == got["input_ids"]
        assert batch["token_type_ids"][i, :n].tolist() == got["token_type_ids"]
        assert (batch["attention_mask"][i] == ([1] * n + [0] * (max_length - n))).all()
        assert (batch["input_ids"][i, n:] == ours.pad_id).all()
    if task in ("STS-B", "RTE"):
        assert n_truncated > 10


def test_truncate_pair_longest_first_reference():
    a, b = list(range(7)), list(range(100, 105))
    truncate_pair(a, b, 8)  # 12 -> 8: pops a,a (7->5), then tie pops b, then a
    assert (a, b) == ([0, 1, 2, 3], [100, 101, 102, 103])
    a = list(range(5))
    truncate_pair(a, None, 3)
    assert a == [0, 1, 2]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_vocab_errors(tmp_path):
    with pytest.raises(VocabError, match="not found"):
        read_vocab(tmp_path / "nope.txt")
    with pytest.raises(VocabError, match="empty"):
        read_vocab(_write(tmp_path / "e.txt", b""))
    bad = _write(tmp_path / "b.txt", b"[PAD]\n[UNK]\n\xff\xfe\n")
    with pytest.raises(VocabError, match=r"b\.txt:3: not valid UTF-8"):
        read_vocab(bad)
    partial = _write(tmp_path / "p.txt", b"[PAD]\n[UNK]\n[CLS]\nhello\n")
    with pytest.raises(
        VocabError, match=r"p\.txt: vocab lacks special token\(s\) \[SEP\], \[MASK\]"
    ):
        BertTokenizer.from_vocab(partial)


def test_small_vocab_works(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]
    tok = BertTokenizer.from_vocab(_write(tmp_path / "v.txt", "\n".join(words).encode() + b"\n"))
    assert tok.vocab_size == 8
    assert tok.encode("Hello WORLDS zzz")["input_ids"] == [2, 5, 6, 7, 1, 3]
