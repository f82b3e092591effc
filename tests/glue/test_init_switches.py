"""glue/init.py switches: W1A2 pooler bits, keeping loaded α, loading the source's classifier."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.checkpoint import CheckpointManager
from bipft_jax.glue.init import InitError, load_initial_params, model_config, parse_stage
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.model.heads import BertPooler

SIZES = dict(vocab_size=97, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def _batch(n=4, seq=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1, 97, (n, seq)).astype(np.int32),
        "attention_mask": np.ones((n, seq), np.int32),
        "token_type_ids": np.zeros((n, seq), np.int32),
    }


def test_w1a2_pooler_follows_the_stage_bits():
    stage = parse_stage("bit:a2")
    on = model_config(stage, "tiny", **SIZES)
    off = model_config(stage, "tiny", pooler_follows_bits=False, **SIZES)
    assert on.quant.pooler_quant.input.bits == 2 and on.quant.linear_input.bits == 2
    assert off.quant.pooler_quant.input.bits == 1 and off.quant.linear_input.bits == 2
    # The pooler forward is the reference's 2-bit LSQ: alpha * clip(round((x + b) / alpha), -2, 1).
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(3, 5, 16)).astype(np.float32)
    boxed = BertPooler(on).init(jax.random.PRNGKey(0), hidden)["params"]
    params = jax.tree.map(np.asarray, nn.unbox(boxed))
    dense = params["dense"]
    dense["input_quant"]["alpha"] = np.float32(0.7)
    dense["input_quant"]["shift"]["bias"] = rng.normal(size=16).astype(np.float32) * 0.3
    got = np.asarray(BertPooler(on).apply({"params": params}, hidden))
    x = hidden[:, 0] + dense["input_quant"]["shift"]["bias"]
    xq = 0.7 * np.clip(np.round(x / 0.7), -2, 1)
    w = dense["kernel"]
    wq = np.abs(w).mean() * np.sign(w - w.mean())
    np.testing.assert_allclose(got, np.tanh(xq @ wq + dense["bias"]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, np.asarray(BertPooler(off).apply({"params": params}, hidden)))


def _init(model, batch):
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(batch["input_ids"]))
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, nn.unbox(variables["params"])))


def _alphas(params):
    flat = traverse_util.flatten_dict(params)
    return {k: float(v) for k, v in flat.items() if k[-1] == "alpha"}


def _save(tmp_path, params):
    with CheckpointManager(tmp_path, max_to_keep=1, async_save=False) as m:
        m.save(0, {"params": params}, {}, force=True)


@pytest.mark.parametrize("keep", [True, False])
def test_keep_alpha_from_a_binary_checkpoint(tmp_path, keep):
    model = BertForSequenceClassification(model_config(parse_stage("bit"), "tiny", **SIZES), 3)
    batch = _batch()
    params = _init(model, batch)
    params = {k: (np.float32(0.123) if k[-1] == "alpha" else v) for k, v in params.items()}
    _save(tmp_path, traverse_util.unflatten_dict(params))
    loaded, desc = load_initial_params(model, batch, 1, "checkpoint", str(tmp_path),
                                       keep_alpha=keep)  # fmt: skip
    alphas = _alphas(loaded)
    assert alphas and desc.startswith("checkpoint:")
    if keep:
        np.testing.assert_allclose(list(alphas.values()), 0.123, rtol=1e-6)
    else:  # re-derived from the batch
        assert all(abs(a - 0.123) > 1e-3 for a in alphas.values())


def test_keep_alpha_still_calibrates_from_an_fp_checkpoint(tmp_path):
    fp = BertForSequenceClassification(model_config(parse_stage("fp"), "tiny", **SIZES), 3)
    batch = _batch()
    _save(tmp_path, traverse_util.unflatten_dict(_init(fp, batch)))
    student = BertForSequenceClassification(model_config(parse_stage("bit"), "tiny", **SIZES), 3)
    a, _ = load_initial_params(student, batch, 1, "checkpoint", str(tmp_path), keep_alpha=True)
    b, _ = load_initial_params(student, batch, 1, "checkpoint", str(tmp_path), keep_alpha=False)
    assert _alphas(a) == _alphas(b)


def test_checkpoint_classifier_of_another_task_is_reported_not_skipped(tmp_path):
    config = model_config(parse_stage("fp"), "tiny", **SIZES)
    batch = _batch()
    _save(tmp_path, traverse_util.unflatten_dict(_init(BertForSequenceClassification(config, 3),
                                                       batch)))  # fmt: skip
    two = BertForSequenceClassification(config, 2)
    with pytest.raises(
        InitError,
        match=r"classifier/kernel: checkpoint \(16, 3\) vs model "
        r"config \(16, 2\).*set init.load_classifier=False",
    ):
        load_initial_params(two, batch, 1, "checkpoint", str(tmp_path))
    params, _ = load_initial_params(two, batch, 1, "checkpoint", str(tmp_path),
                                    load_classifier=False)  # fmt: skip
    assert params["classifier"]["kernel"].shape == (16, 2)


@pytest.mark.parametrize("load", [True, False])
def test_hf_init_loads_the_classifier(tmp_path, load):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    transformers.BertForSequenceClassification(hf_cfg).save_pretrained(tmp_path)
    hf_w = transformers.BertForSequenceClassification.from_pretrained(tmp_path).classifier.weight
    model = BertForSequenceClassification(model_config(parse_stage("bit"), "tiny", **SIZES), 3)
    batch = _batch()
    params, _ = load_initial_params(model, batch, 1, "hf", str(tmp_path), load_classifier=load)
    kernel = np.asarray(params["classifier"]["kernel"])
    same = np.allclose(kernel, hf_w.detach().numpy().T, atol=1e-7)
    assert same == load
    fresh = model.init(jax.random.PRNGKey(1), jnp.asarray(batch["input_ids"]))["params"]
    assert np.allclose(kernel, np.asarray(nn.unbox(fresh)["classifier"]["kernel"])) != load


def test_stage_model_config_reads_the_switches():
    from bipft_jax.glue.init import stage_model_config
    from bipft_jax.glue.recipes import finetune_config

    cfg = finetune_config("bit", "rte", chain="fp,bit:a2", kd="bit", optimizer="bertadam")
    cfg.model.size, cfg.model.num_layers = "tiny", 1
    stage = parse_stage("bit:a2")
    got = stage_model_config(cfg, stage)
    assert got == model_config(stage, "tiny", num_layers=1)
    assert got.padding_idx == 0 and got.quant.pooler_quant.input.bits == 2
    cfg.model.padding_idx, cfg.model.pooler_follows_stage_bits = -1, False
    got = stage_model_config(cfg, stage)
    assert got.padding_idx is None and got.quant.pooler_quant.input.bits == 1


def test_encoder_arrays_without_a_place_are_an_error(tmp_path):
    """A BiPFT checkpoint into a BiBERT model: its estimators would be dropped without a word."""
    batch = _batch()
    bipft = BertForSequenceClassification(model_config(parse_stage("bipft"), "tiny", **SIZES), 3)
    _save(tmp_path, traverse_util.unflatten_dict(_init(bipft, batch)))
    bibert = BertForSequenceClassification(model_config(parse_stage("bibert"), "tiny", **SIZES), 3)
    with pytest.raises(InitError, match=r"encoder arrays of the checkpoint have no place.*bert/"):
        load_initial_params(bibert, batch, 1, "checkpoint", str(tmp_path))
