"""Document splitting, `bipft prepare` records and manifest, and their errors."""

import json

import numpy as np
import pytest

from bipft_jax import cli
from bipft_jax.data import corpus as C
from bipft_jax.data import prepare as P
from bipft_jax.data.tokenizer import BertTokenizer

WIKI = [" = Alpha = ", "", " Alpha is a letter . It comes first .", "", " = = History = = ", "",
        " It was used by Greeks .", " = Beta = ", "", " Beta is second . Really ."]  # fmt: skip


def test_split_sentences():
    assert C.split_sentences("He left. She stayed! Why? 'Quoted.' Next") == [
        "He left.", "She stayed!", "Why?", "'Quoted.'", "Next"
    ]  # fmt: skip
    assert C.split_sentences("  a  b\n c ") == ["a b c"]
    assert C.split_sentences("") == []


def test_documents_wiki_title_and_blank_line(tmp_path):
    docs = list(C.documents_from_lines(WIKI, "wiki_title"))
    assert docs == [
        ["Alpha is a letter .", "It comes first .", "It was used by Greeks ."],
        ["Beta is second .", "Really ."],
    ]
    austen = ["Emma Woodhouse, handsome,", "clever. And rich.", "", "", "She was the", "youngest."]
    assert list(C.documents_from_lines(austen, "blank_line")) == [
        ["Emma Woodhouse, handsome, clever.", "And rich."],
        ["She was the youngest."],
    ]
    (tmp_path / "w.txt").write_text("\n".join(WIKI))
    (tmp_path / "a.txt").write_text("\n".join(austen))
    assert len(list(C.iter_text_documents([tmp_path / "w.txt"], "auto"))) == 2  # wiki titles
    assert len(list(C.iter_text_documents([str(tmp_path / "*.txt")], "auto"))) == 4


def test_corpus_input_errors(tmp_path):
    with pytest.raises(C.CorpusError, match="matches no file"):
        list(C.iter_text_documents([tmp_path / "none*.txt"]))
    (tmp_path / "bad.txt").write_bytes(b"ok line\n\xff\xfe bad\n")
    with pytest.raises(C.CorpusError, match=r"bad\.txt:2: not valid UTF-8"):
        list(C.iter_text_documents([tmp_path / "bad.txt"]))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(C.CorpusError, match=r"empty\.txt: file is empty"):
        list(C.iter_text_documents([tmp_path / "empty.txt"]))
    (tmp_path / "ok.txt").write_text("A b.\n")
    with pytest.raises(C.CorpusError, match="doc_split='pages'"):
        list(C.iter_text_documents([tmp_path / "ok.txt"], "pages"))


def test_tfds_missing_dataset_clear_error(tmp_path):
    with pytest.raises(
        C.CorpusError, match=r"TFDS dataset 'wikipedia/20230601.en' .* not available"
    ):
        list(C.iter_tfds_documents("wikipedia/20230601.en", data_dir=str(tmp_path)))


def test_record_roundtrip():
    rng = np.random.default_rng(0)
    doc = [rng.integers(0, 30522, n).tolist() for n in (3, 1, 17)]
    back = P.decode_record(P.encode_record(doc))
    assert [b.tolist() for b in back] == doc


def test_prepare_main_on_shared_corpus(shared_data, vocab_file, tmp_path, capsys):
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    out = tmp_path / "prep"
    argv = ["--input", str(wiki), "--vocab", str(vocab_file), "--out", str(out),
            "--shard-size", "4", "--max-docs", "10"]  # fmt: skip
    assert P.main(argv) == 0
    assert "prepare: done" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_docs"] == 10 and len(manifest["shards"]) == 3
    assert [s["num_docs"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["settings"]["vocab_sha256"] == P.file_sha256(vocab_file)
    corpus, _ = P.load_prepared(out)
    # Same token ids as tokenizing the documents directly.
    tok = BertTokenizer.from_vocab(vocab_file)
    docs = list(C.iter_text_documents([wiki]))[:10]
    want = [tok.tokenize_to_ids(s) for d in docs for s in d]
    want = [w for w in want if w]
    assert corpus.num_sentences == manifest["num_sentences"] == len(want)
    assert corpus.num_tokens == manifest["num_tokens"] == sum(map(len, want))
    assert corpus.document(3)[0].tolist() == tok.tokenize_to_ids(docs[3][0])
    # Refuses to overwrite; clear errors for bad arguments.
    assert cli.main(["prepare", *argv]) == 2
    assert "already holds a prepared corpus" in capsys.readouterr().err
    assert cli.main(["prepare", "--vocab", str(vocab_file), "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --input" in capsys.readouterr().err
    bad_vocab = ["--vocab", str(tmp_path / "v.txt"), "--out", str(tmp_path / "y")]
    assert cli.main(["prepare", "--input", str(wiki), *bad_vocab]) == 2
    assert "vocab file not found" in capsys.readouterr().err
    with pytest.raises(C.CorpusError, match="no manifest.json"):
        P.load_prepared(tmp_path)
    (out / manifest["shards"][1]["file"]).unlink()
    with pytest.raises(C.CorpusError, match=r"shard-00001\.array_record: shard listed .* missing"):
        P.load_prepared(out)


def test_tfds_corpus_path_with_fake_builder(monkeypatch, vocab_file, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Fake:
        def as_data_source(self, split):
            assert split == "train"
            return [{"title": b"A", "text": b"First one. Second one.\nNew para here."},
                    {"title": b"B", "text": b""}, {"title": b"C", "text": "Only one."}]  # fmt: skip

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Fake())
    docs = list(C.iter_tfds_documents("wikipedia/20230601.en", data_dir="gs://bucket/tfds"))
    assert docs == [["First one.", "Second one.", "New para here."], ["Only one."]]
    with pytest.raises(C.CorpusError, match="record 0 has no field 'body'"):
        list(C.iter_tfds_documents("wikipedia/20230601.en", text_field="body"))
    m = P.prepare(
        tmp_path / "p", vocab_file, tfds_name="wikipedia/20230601.en", log=lambda *_: None
    )
    assert (m["num_docs"], m["num_sentences"], m["settings"]["tfds"]) == (
        2,
        4,
        "wikipedia/20230601.en",
    )
