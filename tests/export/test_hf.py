"""Hugging Face export: transformers loads it and gives our logits; round-trip; sharding."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.export.hf import ExportError, export_hf
from bipft_jax.model.hf_import import import_hf_weights, read_hf_checkpoint
from bipft_jax.model.params import ParamsError
from tests.export.helpers import init_params, random_batch, tiny_config, write_vocab

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _ours(model, params, batch):
    out = model.apply(
        {"params": params},
        *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
    )
    return out


def _theirs(cls, out_dir, batch):
    model = cls.from_pretrained(str(out_dir)).eval()
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()})


def test_mlm_logits_match_transformers(tmp_path):
    config = tiny_config("fp")
    model, params = init_params(config, "pretraining")
    batch = random_batch()
    export_hf({"params": params}, config, tmp_path)
    ours = _ours(model, params, batch)
    theirs = _theirs(transformers.BertForPreTraining, tmp_path, batch)
    mlm = np.abs(np.asarray(ours["mlm_logits"]) - theirs.prediction_logits.numpy()).max()
    nsp = np.abs(np.asarray(ours["nsp_logits"]) - theirs.seq_relationship_logits.numpy()).max()
    assert mlm <= 1e-4 and nsp <= 1e-4, (mlm, nsp)
    assert np.abs(np.asarray(ours["mlm_logits"])).max() > 0.1  # not trivially zero
    theirs_mlm = _theirs(transformers.BertForMaskedLM, tmp_path, batch)
    assert np.abs(np.asarray(ours["mlm_logits"]) - theirs_mlm.logits.numpy()).max() <= 1e-4
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["BertForPreTraining"] and cfg["num_hidden_layers"] == 2


def test_classifier_logits_match_transformers(tmp_path):
    config = tiny_config("fp")
    model, params = init_params(config, "classification", num_labels=3)
    batch = random_batch()
    vocab = write_vocab(tmp_path / "v.txt")
    export_hf(params, config, tmp_path / "out", vocab_file=vocab)
    ours = np.asarray(_ours(model, params, batch)["logits"])
    theirs = _theirs(transformers.BertForSequenceClassification, tmp_path / "out", batch)
    assert theirs.logits.shape == (3, 3)
    assert np.abs(ours - theirs.logits.numpy()).max() <= 1e-4
    assert (tmp_path / "out" / "vocab.txt").read_text() == vocab.read_text()


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_and_sharding(tmp_path, scan):
    config = tiny_config("fp", scan_layers=scan)
    model, params = init_params(config, "pretraining", seed=3)
    export_hf(params, config, tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    assert all((tmp_path / f).stat().st_size <= 40_000 + 97 * 32 * 4 * 2 for f in files)
    _, state = read_hf_checkpoint(tmp_path)
    template = model.init(jax.random.PRNGKey(9), jnp.zeros((1, 4), jnp.int32))
    restored, _ = import_hf_weights(template, state)
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = dict(
        jax.tree_util.tree_leaves_with_path(
            jax.tree.map(np.asarray, __import__("flax").linen.unbox(restored["params"]))
        )
    )
    assert len(flat_a) == len(flat_b)
    for path, a in flat_a:
        np.testing.assert_array_equal(a, flat_b[path])
    # The sharded (and, for scan, unstacked) export loads in transformers with our logits.
    batch = random_batch(seed=4)
    ours = np.asarray(_ours(model, params, batch)["mlm_logits"])
    theirs = _theirs(transformers.BertForPreTraining, tmp_path, batch).prediction_logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_binary_config_and_shape_mismatch_are_clear_errors(tmp_path):
    bconfig = tiny_config("bipft")
    _, bparams = init_params(bconfig, "base")
    with pytest.raises(ExportError, match="export_binary"):
        export_hf(bparams, bconfig, tmp_path)
    config = tiny_config("fp")
    _, params = init_params(config, "base")
    with pytest.raises(
        ParamsError, match=r"embeddings/word_embeddings/embedding: params \(97, 32\)"
    ):
        export_hf(params, tiny_config("fp", vocab_size=50), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        export_hf(params, config, tmp_path, vocab_file=tmp_path / "nope.txt")
