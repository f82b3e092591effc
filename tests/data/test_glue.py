"""GLUE readers on the real shared tasks and on small files in the official formats."""

import numpy as np
import pytest

from bipft_jax.data import glue
from bipft_jax.data.glue import GlueDataError, encode_glue, load_glue, write_submission
from bipft_jax.data.tokenizer import BertTokenizer

REAL_COUNTS = {
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "stsb": (5749, 1500),
    "rte": (2490, 277),
    "wnli": (635, 71),
}


@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_tasks_row_counts_and_labels(shared_data, task):
    spec = glue.get_task(task)
    for split, n in zip(("train", "dev"), REAL_COUNTS[task], strict=True):
        ex = load_glue(task, split, shared_data / "glue_data")
        assert len(ex) == n
        assert all(e.text_a for e in ex)
        assert all((e.text_b is not None) == (spec.splits[split].text_b is not None) for e in ex)
        labels = np.array([e.label for e in ex])
        if spec.is_regression:
            assert labels.min() >= 0 and labels.max() <= 5 and len(np.unique(labels)) > 50
        else:
            assert set(labels.tolist()) == set(range(len(spec.labels)))


def test_real_first_rows(shared_data):
    d = shared_data / "glue_data"
    e = load_glue("cola", "dev", d)[0]
    assert (e.text_a, e.text_b, e.label) == (
        "The sailors rode the breeze clear of the rocks.",
        None,
        1,
    )
    e = load_glue("stsb", "dev", d)[0]
    assert e.text_a == "A man with a hard hat is dancing." and e.label == 5.0
    e = load_glue("wnli", "dev", d)[1]
    assert e.text_b == "Susan did not answer." and e.label == 1


def _tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse"]
MNLI_HEAD += ["sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1"]
MNLI_HEAD += ["sentence2", "label1", "gold_label"]


def _mnli_row(i, a, b, label):
    return [str(i), "1", "1a", "fiction", "(", "(", "(", "(", a, b, label, label]


@pytest.fixture
def fake_glue(tmp_path):
    r = tmp_path / "glue_data"
    mrpc_head = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    _tsv(
        r / "MRPC/train.tsv",
        [
            mrpc_head,
            ["1", "7", "8", "He ran.", "He sprinted."],
            ["0", "9", "10", "A cat.", "A dog."],
        ],
    )
    _tsv(r / "MRPC/test.tsv", [["index", *mrpc_head[1:]], ["0", "1", "2", "x y", "y x"]])
    _tsv(
        r / "QQP/dev.tsv",
        [
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["5", "1", "2", "How?", "Why?", "0"],
            ["6", "3", "4", "Hi?", "Hi?", "1"],
        ],
    )
    _tsv(r / "QQP/test.tsv", [["id", "question1", "question2"], ["0", "q1?", "q2?"]])
    _tsv(r / "MNLI/train.tsv", [MNLI_HEAD, _mnli_row(0, "P.", "H.", "neutral")])
    head16 = MNLI_HEAD[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
    _tsv(
        r / "MNLI/dev_matched.tsv",
        [head16, _mnli_row(0, "P.", "H.", "entailment")[:-1] + ["x"] * 4 + ["entailment"]],
    )
    _tsv(
        r / "MNLI/dev_mismatched.tsv",
        [head16, _mnli_row(0, "A.", "B.", "contradiction")[:-1] + ["x"] * 4 + ["contradiction"]],
    )
    _tsv(r / "MNLI/test_matched.tsv", [MNLI_HEAD[:-2], _mnli_row(0, "T.", "U.", "")[:-2]])
    _tsv(
        r / "QNLI/dev.tsv",
        [["index", "question", "sentence", "label"], ["0", "Who?", "Him.", "not_entailment"]],
    )
    _tsv(r / "diagnostic/diagnostic.tsv", [["index", "sentence1", "sentence2"], ["0", "a", "b"]])
    return r


def test_official_format_tasks(fake_glue):
    ex = load_glue("mrpc", "train", fake_glue)
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [
        ("He ran.", "He sprinted.", 1),
        ("A cat.", "A dog.", 0),
    ]
    assert load_glue("MRPC", "test", fake_glue)[0].text_b == "y x"
    assert [e.label for e in load_glue("qqp", "dev", fake_glue)] == [0, 1]
    assert load_glue("qqp", "test", fake_glue)[0].label is None
    assert load_glue("mnli", "train", fake_glue)[0].label == 2  # neutral
    assert load_glue("mnli", "dev_matched", fake_glue)[0].label == 1  # entailment
    assert load_glue("mnli", "dev_mismatched", fake_glue)[0].label == 0  # contradiction
    t = load_glue("mnli", "test_matched", fake_glue)[0]
    assert (t.text_a, t.text_b, t.label) == ("T.", "U.", None)
    assert load_glue("qnli", "dev", fake_glue)[0].label == 1
    assert load_glue("ax", "test", fake_glue)[0].text_b == "b"


def test_bad_inputs(tmp_path, fake_glue):
    with pytest.raises(GlueDataError, match="directory for rte not found"):
        load_glue("rte", "dev", tmp_path / "nowhere")
    with pytest.raises(GlueDataError, match=r"split 'dev': file not found: .*MRPC/dev\.tsv"):
        load_glue("mrpc", "dev", fake_glue)
    with pytest.raises(KeyError, match="unknown GLUE task"):
        load_glue("squad", "dev", fake_glue)
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_glue("mnli", "dev", fake_glue)
    rte = fake_glue / "RTE"
    head = ["index", "sentence1", "sentence2", "label"]
    _tsv(rte / "dev.tsv", [head, ["0", "a", "b", "entailment"], ["1", "a", "b"]])
    with pytest.raises(
        GlueDataError, match=r"RTE/dev\.tsv:3: expected 4 tab-separated columns, got 3"
    ):
        load_glue("rte", "dev", fake_glue)
    _tsv(rte / "dev.tsv", [head, ["0", "a", "b", "entailment"], ["1", "a", "b", "maybe"]])
    with pytest.raises(GlueDataError, match=r"RTE/dev\.tsv:3: unknown label 'maybe'"):
        load_glue("rte", "dev", fake_glue)
    ex = load_glue("rte", "dev", fake_glue, skip_bad_rows=True)
    assert len(ex) == 1
    (rte / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\t\xff\tentailment\n")
    with pytest.raises(GlueDataError, match=r"RTE/dev\.tsv:2: not valid UTF-8"):
        load_glue("rte", "dev", fake_glue)
    (rte / "dev.tsv").write_bytes(b"")
    with pytest.raises(GlueDataError, match=r"RTE/dev\.tsv: file is empty"):
        load_glue("rte", "dev", fake_glue)
    _tsv(fake_glue / "STS-B/dev.tsv", [["i"] * 10, ["0"] * 9 + ["high"]])
    with pytest.raises(GlueDataError, match=r"STS-B/dev\.tsv:2: label 'high' is not a number"):
        load_glue("stsb", "dev", fake_glue)
    for bad in ("nan", "inf", "-Infinity"):  # float() accepts them; a score must be finite
        _tsv(fake_glue / "STS-B/dev.tsv", [["i"] * 10, ["0"] * 9 + ["4.0"], ["0"] * 9 + [bad]])
        with pytest.raises(GlueDataError, match=rf"STS-B/dev\.tsv:3: label .{bad}. is not finite"):
            load_glue("stsb", "dev", fake_glue)
    _tsv(fake_glue / "CoLA/dev.tsv", [["src", "1", "", "ok"], ["src", "1", "only three"]])
    with pytest.raises(GlueDataError, match=r"CoLA/dev\.tsv:2: expected 4 tab-separated columns"):
        load_glue("cola", "dev", fake_glue)
    with pytest.raises(ValueError, match="unknown GLUE source"):
        load_glue("cola", "dev", fake_glue, source="hub")


def test_skip_bad_rows_reports_count(fake_glue, capsys):
    _tsv(
        fake_glue / "WNLI/dev.tsv",
        [
            ["index", "sentence1", "sentence2", "label"],
            ["0", "a", "b", "1"],
            ["1", "a", "b", "7"],
            ["2", "a"],
        ],
    )
    assert len(load_glue("wnli", "dev", fake_glue, skip_bad_rows=True)) == 1
    assert "skipped 2 bad row(s)" in capsys.readouterr().out


def test_tfds_label_mapping_consistent():
    tfds_class_names = {  # ClassLabel names in tensorflow_datasets/text/glue.py, in id order
        "cola": ["unacceptable", "acceptable"],
        "sst2": ["negative", "positive"],
        "mrpc": ["not_equivalent", "equivalent"],
        "qqp": ["not_duplicate", "duplicate"],
        "mnli": ["entailment", "neutral", "contradiction"],
        "qnli": ["entailment", "not_entailment"],
        "rte": ["entailment", "not_entailment"],
        "wnli": ["not_entailment", "entailment"],
        "ax": ["entailment", "neutral", "contradiction"],
    }
    for name, spec in glue.TASKS.items():
        if spec.is_regression:
            assert spec.tfds_labels == ()
            continue
        assert [n for n, _ in spec.tfds_labels] == tfds_class_names[name]
        m = spec.tfds_label_map()
        assert sorted(m.tolist()) == list(range(len(spec.labels))), name  # a bijection
        assert set(spec.tfds_splits) == set(spec.splits), name
    mnli = glue.get_task("mnli")
    rec = {"premise": b"P", "hypothesis": "H", "label": 0}  # TFDS 0 = entailment
    ex = glue.tfds_record_to_example(mnli, "dev_matched", 3, rec)
    assert (ex.text_a, ex.text_b, mnli.labels[ex.label]) == ("P", "H", "entailment")
    ex = glue.tfds_record_to_example(
        glue.get_task("mrpc"), "train", 0, {"sentence1": "a", "sentence2": "b", "label": 1}
    )
    assert ex.label == 1


def test_tfds_missing_dataset_clear_error(tmp_path):
    pytest.importorskip("importlib_resources")
    with pytest.raises(GlueDataError, match=r"TFDS dataset 'glue/rte' .* not available"):
        load_glue("rte", "dev", source="tfds", tfds_data_dir=str(tmp_path))


def test_encode_glue(shared_data, vocab_file):
    tok = BertTokenizer.from_vocab(vocab_file)
    ex = load_glue("stsb", "dev", shared_data / "glue_data")[:20]
    enc = encode_glue(ex, tok, max_length=32)
    assert enc["input_ids"].shape == (20, 32) and enc["input_ids"].dtype == np.int32
    assert enc["labels"].dtype == np.float32 and enc["labels"][0] == 5.0
    want = tok.encode(ex[3].text_a, ex[3].text_b, max_length=32)["input_ids"]
    assert enc["input_ids"][3, : len(want)].tolist() == want
    enc = encode_glue(load_glue("cola", "dev", shared_data / "glue_data")[:5], tok, 16)
    assert enc["labels"].dtype == np.int32 and (enc["token_type_ids"] == 0).all()


def test_write_submission(tmp_path):
    p = write_submission("rte", [0, 1, 1], tmp_path)
    assert p.name == "RTE.tsv"
    assert p.read_text().splitlines() == [
        "index\tprediction",
        "0\tentailment",
        "1\tnot_entailment",
        "2\tnot_entailment",
    ]
    assert write_submission("stsb", [1.23456], tmp_path).read_text().splitlines()[1] == "0\t1.235"
    assert write_submission("mnli", [2], tmp_path, split="test_mismatched").name == "MNLI-mm.tsv"
    assert (tmp_path / "MNLI-mm.tsv").read_text().splitlines()[1] == "0\tneutral"
    names = {write_submission(t, [0], tmp_path).name for t in glue.TASKS if t not in ("mnli",)}
    names.add(write_submission("mnli", [0], tmp_path, split="test_matched").name)
    assert names == {
        "CoLA.tsv",
        "SST-2.tsv",
        "MRPC.tsv",
        "STS-B.tsv",
        "QQP.tsv",
        "MNLI-m.tsv",
        "QNLI.tsv",
        "RTE.tsv",
        "WNLI.tsv",
        "AX.tsv",
    }
    with pytest.raises(ValueError, match="needs split"):
        write_submission("mnli", [0], tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        write_submission("cola", [2], tmp_path)


class _FakeBuilder:
    """Stands in for a prepared TFDS builder (no network / TensorFlow here)."""

    def __init__(self, records):
        self.records = records
        self.calls = []

    def as_data_source(self, split):
        self.calls.append(split)
        return self.records


def test_tfds_source_path_with_fake_builder(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("importlib_resources")
    recs = [
        {"premise": b"A man sleeps.", "hypothesis": b"A man is awake.", "label": 2, "idx": 0},
        {"premise": b"Dogs bark.", "hypothesis": b"Animals make noise.", "label": 0, "idx": 1},
        {"premise": b"Test.", "hypothesis": b"Unlabelled.", "label": -1, "idx": 2},
    ]
    fake = _FakeBuilder(recs)
    seen = {}

    def builder(name, data_dir=None):
        seen.update(name=name, data_dir=data_dir)
        return fake

    monkeypatch.setattr(tfds, "builder", builder)
    ex = load_glue("mnli", "dev_mismatched", source="tfds", tfds_data_dir="gs://b/tfds")
    assert seen == {"name": "glue/mnli", "data_dir": "gs://b/tfds"}
    assert fake.calls == ["validation_mismatched"]
    labels = glue.get_task("mnli").labels
    assert [labels[e.label] for e in ex[:2]] == ["contradiction", "entailment"]
    assert ex[2].label is None and ex[0].text_b == "A man is awake."
