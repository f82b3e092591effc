"""MLM+NSP examples and the resumable per-host loader on the shared WikiText corpus."""

import json

import numpy as np
import pytest

from bipft_jax.data import prepare as P
from bipft_jax.data.loader import PretrainLoader, split_documents
from bipft_jax.data.pretrain_examples import IGNORE
from bipft_jax.data.tokenizer import BertTokenizer
from bipft_jax.losses import MODEL_INPUT_KEYS, PRETRAIN_TERMS

SEQ = 64


@pytest.fixture(scope="module")
def prepared(shared_data, vocab_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "wiki"
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    P.prepare(out, vocab_file, [str(wiki)], shard_size=8, max_docs=24, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def tok(vocab_file):
    return BertTokenizer.from_vocab(vocab_file)


def _loader(prepared, **kw):
    args = dict(global_batch_size=16, seq_len=SEQ, seed=3, process_index=0, process_count=1)
    return PretrainLoader(prepared, **{**args, **kw})


@pytest.fixture(scope="module")
def big_batch(prepared):
    return _loader(prepared, global_batch_size=2048).batch_at(0)


def test_batch_layout(big_batch, tok):
    b = big_batch
    assert b["input_ids"].shape == (2048, SEQ) and b["input_ids"].dtype == np.int32
    # No unread fields: exactly the model inputs and what the objective's terms may read.
    read = {key for term in PRETRAIN_TERMS.values() for key in term.batch_keys}
    assert set(b) == set(MODEL_INPUT_KEYS) | read
    assert b["mlm_labels"].dtype == np.int32 and b["next_sentence_label"].shape == (2048,)
    for i in range(0, 2048, 97):
        n = int(b["attention_mask"][i].sum())
        assert (b["attention_mask"][i, :n] == 1).all() and (
            b["input_ids"][i, n:] == tok.pad_id
        ).all()
        orig = np.where(b["mlm_labels"][i] != IGNORE, b["mlm_labels"][i], b["input_ids"][i])
        seps = np.flatnonzero(orig[:n] == tok.sep_id)
        assert orig[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
        assert seps[0] >= 2 and seps[1] - seps[0] >= 2  # both segments non-empty
        want_types = np.r_[np.zeros(seps[0] + 1), np.ones(n - seps[0] - 1), np.zeros(SEQ - n)]
        assert (b["token_type_ids"][i] == want_types).all()


def test_masking_statistics(big_batch, tok):
    b = big_batch
    masked = b["mlm_labels"] != IGNORE
    special = np.isin(np.where(masked, b["mlm_labels"], b["input_ids"]), [tok.cls_id, tok.sep_id])
    maskable = (b["attention_mask"] == 1) & ~special
    assert not (masked & ~maskable).any()  # specials and padding never masked
    frac = masked.sum() / maskable.sum()
    assert 0.14 < frac < 0.16
    ids, labels = b["input_ids"][masked], b["mlm_labels"][masked]
    p_mask = np.mean(ids == tok.mask_id)
    p_keep = np.mean(ids == labels)
    p_rand = 1 - p_mask - p_keep
    assert abs(p_mask - 0.8) < 0.02 and abs(p_keep - 0.1) < 0.015 and abs(p_rand - 0.1) < 0.015
    assert not np.isin(ids[ids != labels], tok.special_ids()[:4]).any()  # random ids not special
    assert abs(b["next_sentence_label"].mean() - 0.5) < 0.05


def test_actual_next_segments_follow_in_the_same_document(prepared, tok):
    loader = _loader(prepared, global_batch_size=120)
    b = loader.batch_at(1)
    corpus = loader.builder.corpus
    follows = {0: [], 1: []}
    for i in range(120):
        n = int(b["attention_mask"][i].sum())
        orig = np.where(b["mlm_labels"][i] != IGNORE, b["mlm_labels"][i], b["input_ids"][i])[:n]
        s = int(np.flatnonzero(orig == tok.sep_id)[0])
        a, bb = orig[1:s], orig[s + 1 : n - 1]
        hits = [(d, _find(corpus, d, a), _find(corpus, d, bb)) for d in range(corpus.num_docs)]
        assert any(len(pa) for _, pa, _ in hits), i  # A is real text of some document
        assert any(len(pb) for _, _, pb in hits), i  # so is B
        # B starts after A ends (up to the tokens truncation removed) in the same document.
        gap = SEQ - n + 64
        dists = [pb[None, :] - (pa[:, None] + len(a)) for _, pa, pb in hits if len(pa) and len(pb)]
        ok = any(((dist >= 0) & (dist <= gap)).any() for dist in dists)
        follows[int(b["next_sentence_label"][i])].append(ok)
    assert len(follows[0]) > 40 and all(follows[0])
    assert len(follows[1]) > 40 and np.mean(follows[1]) < 0.05


def _find(corpus, d, seq):
    """Start offsets of `seq` inside document `d`'s token stream."""
    lo, hi = corpus.sent_bounds[corpus.doc_bounds[d]], corpus.sent_bounds[corpus.doc_bounds[d + 1]]
    toks = corpus.tokens[lo:hi].astype(np.int64)
    if len(seq) > len(toks):
        return np.zeros(0, np.int64)
    win = np.lib.stride_tricks.sliding_window_view(toks, len(seq))
    return np.flatnonzero((win == seq).all(1))


def test_whole_word_masking(prepared, tok):
    b = _loader(prepared, global_batch_size=512, whole_word_mask=True).batch_at(0)
    masked = b["mlm_labels"] != IGNORE
    orig = np.where(masked, b["mlm_labels"], b["input_ids"])
    cont = np.array([t.startswith("##") for t in tok.convert_ids_to_tokens(orig.ravel())])
    cont = cont.reshape(orig.shape)
    # A word piece is masked iff the piece before it (same word) is masked.
    both = cont[:, 1:] & (orig[:, :-1] != tok.sep_id) & (orig[:, :-1] != tok.cls_id)
    assert both.sum() > 500
    assert (masked[:, 1:][both] == masked[:, :-1][both]).all()
    frac = masked.sum() / (b["attention_mask"].sum() - 3 * 512)
    assert 0.13 < frac < 0.16


def test_deterministic_and_seed_dependent(prepared):
    a, b, c = _loader(prepared), _loader(prepared), _loader(prepared, seed=4)
    for _ in range(3):
        x, y, z = next(a), next(b), next(c)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(x["input_ids"], z["input_ids"])
    with pytest.raises(ValueError, match="seed must be an int"):
        _loader(prepared, seed=-1)


def test_restore_continues_exactly(prepared):
    ref = _loader(prepared, global_batch_size=64)
    n_steps = ref.examples_per_epoch // 64 + 3  # crosses an epoch boundary
    want = [next(ref) for _ in range(n_steps)]
    run = _loader(prepared, global_batch_size=64)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.state()))
    resumed = _loader(prepared, global_batch_size=64)
    resumed.restore(state)
    for step in range(5, n_steps):
        got = next(resumed)
        for k in got:
            np.testing.assert_array_equal(got[k], want[step][k], err_msg=f"{k} step {step}")
    with pytest.raises(ValueError, match="different corpus, seed or settings"):
        _loader(prepared, global_batch_size=64, seq_len=32).restore(state)
    with pytest.raises(KeyError, match="lacks 'fingerprint'"):
        resumed.restore({"step": 1, "seed": 3})


def test_epochs_reshuffle_same_instances(prepared):
    builder = _loader(prepared).builder
    n = builder.num_instances
    e0 = np.array([builder.instance_for(i) for i in range(n)])
    e1 = np.array([builder.instance_for(n + i) for i in range(n)])
    assert not np.array_equal(e0, e1)
    key = lambda e: sorted(map(tuple, e.tolist()))  # noqa: E731
    assert key(e0) == key(e1) == key(builder.plan)


def test_hosts_union_is_global_batch(prepared):
    glob = _loader(prepared)
    hosts = [_loader(prepared, process_index=p, process_count=2) for p in range(2)]
    for _ in range(3):
        g = next(glob)
        parts = [next(h) for h in hosts]
        for k in g:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k])
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        _loader(prepared, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index=2 not in"):
        _loader(prepared, process_index=2, process_count=2)


def test_default_process_from_jax(prepared):
    loader = PretrainLoader(prepared, global_batch_size=8, seq_len=SEQ)
    assert (loader.process_index, loader.process_count, loader.local_batch_size) == (0, 1, 8)


def test_eval_split_held_out(prepared):
    tr, ev = split_documents(24, 0.25, "train"), split_documents(24, 0.25, "eval")
    assert len(ev) == 6 and sorted(np.r_[tr, ev].tolist()) == list(range(24))
    loader = _loader(prepared, split="eval", eval_fraction=0.25)
    assert set(loader.builder.plan[:, 0].tolist()) <= set(ev.tolist())
    assert next(loader)["input_ids"].shape == (16, SEQ)
    with pytest.raises(ValueError, match="needs eval_fraction > 0"):
        _loader(prepared, split="eval")


def test_worker_processes_give_same_batches(prepared):
    ref = _loader(prepared)
    with _loader(prepared, num_workers=2) as par:
        for _ in range(4):
            x, y = next(ref), next(par)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        state = par.state()
        par.restore(state)
        np.testing.assert_array_equal(next(par)["input_ids"], next(ref)["input_ids"])


def test_loader_from_text_files(shared_data, vocab_file):
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    loader = PretrainLoader([wiki], 8, SEQ, 0, 0, 1, vocab_file=vocab_file, max_docs=5)
    assert loader.builder.corpus.num_docs == 5
    assert next(loader)["input_ids"].shape == (8, SEQ)


def test_plan_is_greedy_tiling_of_documents(prepared):
    builder = _loader(prepared, seq_len=128).builder
    corpus, plan = builder.corpus, builder.plan
    lengths = corpus.sentence_lengths()
    for d in range(corpus.num_docs):
        rows = plan[plan[:, 0] == d]
        # Chunks tile the document's sentences in order.
        assert rows[0, 1] == corpus.doc_bounds[d] and rows[-1, 2] == corpus.doc_bounds[d + 1]
        assert (rows[1:, 1] == rows[:-1, 2]).all()
        for _, s0, s1, target in rows:
            total = lengths[s0:s1].sum()
            assert total >= target or s1 == corpus.doc_bounds[d + 1]  # full, or the doc's end
            assert total - lengths[s1 - 1] < target  # the last sentence was needed
    short = np.mean(plan[:, 3] < 125)
    assert 0.05 < short < 0.15  # short_seq_prob = 0.1


def test_nsp_half_random_even_with_one_sentence_documents(tok):
    from bipft_jax.data.corpus import TokenizedCorpus
    from bipft_jax.data.pretrain_examples import ExampleBuilder, MaskingConfig, Vocabulary

    rng = np.random.default_rng(0)
    docs = []
    for i in range(300):  # half the documents have a single sentence (e.g. short paragraphs)
        n_sent = 1 if i % 2 else int(rng.integers(2, 12))
        docs.append([rng.integers(1000, 30000, rng.integers(3, 30)) for _ in range(n_sent)])
    corpus = TokenizedCorpus.from_documents(docs)
    builder = ExampleBuilder(corpus, Vocabulary.from_tokenizer(tok), MaskingConfig(seq_len=64), 1)
    forced = np.mean(np.diff(corpus.doc_bounds)[builder.plan[:, 0]] == 1)
    assert forced > 0.2  # without compensation the NSP rate would be 0.5 + forced / 2
    nsp = builder.batch(0, range(3000), 3000)["next_sentence_label"]
    assert abs(nsp.mean() - 0.5) < 0.03


def test_prepared_corpus_rejects_other_vocab(prepared, vocab_file, tmp_path):
    other = tmp_path / "vocab.txt"
    other.write_text(vocab_file.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"differs \(sha256\) from the one .* prepared with"):
        _loader(prepared, vocab_file=other)


def test_loader_source_errors(tmp_path, vocab_file):
    with pytest.raises(ValueError, match="no manifest.json"):
        PretrainLoader(tmp_path, 8, SEQ, 0, 0, 1)
    with pytest.raises(ValueError, match="matches no file"):
        PretrainLoader([tmp_path / "missing*.txt"], 8, SEQ, 0, 0, 1, vocab_file=vocab_file)
    (tmp_path / "one.txt").write_text("Just one document here. Two sentences.\n")
    with pytest.raises(
        ValueError, match=r"NSP needs at least 2 documents, got 1 of the corpus's 1$"
    ):
        PretrainLoader([tmp_path / "one.txt"], 8, SEQ, 0, 0, 1, vocab_file=vocab_file)
    # With an eval hold-out the one document is held out: the message says so (not "got 0").
    held = r"got 0 of the corpus's 1 \(1 held out for eval: data.eval_fraction\)"
    with pytest.raises(ValueError, match=held):
        PretrainLoader([tmp_path / "one.txt"], 8, SEQ, 0, 0, 1, vocab_file=vocab_file,
                       eval_fraction=0.02)  # fmt: skip


def test_reseated_streams_equal_fresh_generators():
    from bipft_jax.data.pretrain_examples import _rng, _Streams

    rng = np.random.default_rng(0)
    streams = _Streams(12345)
    for _ in range(20):
        key = tuple(int(x) for x in rng.integers(0, 2**40, 3))
        got = streams.get(*key)
        got.random()  # leave partial state behind (buffers) before the next re-seat
        fresh = _rng(12345, *key)
        fresh.random()
        np.testing.assert_array_equal(got.integers(0, 1000, 7), fresh.integers(0, 1000, 7))
        np.testing.assert_array_equal(got.random(3), fresh.random(3))
    a, b = _rng(1, 2, 3, 4).random(4), _rng(1, 2, 3, 5).random(4)
    assert not np.allclose(a, b)
