"""Ready fine-tuned KD teachers (glue/teacher.py): HF classifier dirs, stage dirs, model cards."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.checkpoint import CheckpointManager
from bipft_jax.checkpoint.model_card import write_model_card
from bipft_jax.glue.init import InitError, model_config, parse_stage
from bipft_jax.glue.recipes import finetune_config
from bipft_jax.glue.teacher import apply_teacher, load_teacher
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.train.config_io import save_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
HF = dict(vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
          intermediate_size=32, max_position_embeddings=32)  # fmt: skip


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((3, 9), np.int32)
    mask[1, 6:] = 0
    return {
        "input_ids": jnp.asarray(rng.integers(1, 97, (3, 9)), jnp.int32),
        "attention_mask": jnp.asarray(mask),
        "token_type_ids": jnp.asarray((np.arange(9) >= 4)[None].repeat(3, 0), jnp.int32),
    }


def _hf_dir(tmp_path, cls, num_labels=3):
    torch.manual_seed(0)
    model = cls(transformers.BertConfig(**HF, num_labels=num_labels)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def test_hf_classifier_teacher_matches_transformers(tmp_path):
    ref = _hf_dir(tmp_path, transformers.BertForSequenceClassification)
    teacher = load_teacher(tmp_path, 3)
    batch = _batch()
    ours = apply_teacher(teacher.model, teacher.params, batch, dropout=False)["logits"]
    with torch.no_grad():
        theirs = ref(
            input_ids=torch.tensor(np.asarray(batch["input_ids"]), dtype=torch.long),
            attention_mask=torch.tensor(np.asarray(batch["attention_mask"])),
            token_type_ids=torch.tensor(np.asarray(batch["token_type_ids"]), dtype=torch.long),
        ).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)
    assert teacher.description == f"hf:{tmp_path}"
    # Train mode: dropout on, reproducible for one rng, different from eval mode.
    run = lambda r: apply_teacher(teacher.model, teacher.params, batch, dropout=True, rng=r)  # noqa: E731
    a, b = run(jax.random.PRNGKey(1))["logits"], run(jax.random.PRNGKey(1))["logits"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(ours), atol=1e-3)
    with pytest.raises(ValueError, match="rng"):
        apply_teacher(teacher.model, teacher.params, batch, dropout=True)


def test_hf_teacher_errors(tmp_path):
    _hf_dir(tmp_path / "base", transformers.BertModel)
    with pytest.raises(InitError, match="classifier"):
        load_teacher(tmp_path / "base", 3)
    _hf_dir(tmp_path / "two", transformers.BertForSequenceClassification, num_labels=2)
    with pytest.raises(InitError, match="classifier"):
        load_teacher(tmp_path / "two", 3)
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    (tmp_path / "two" / "config.json").write_text(json.dumps({**cfg, "weight_bits": 1}))
    with pytest.raises(InitError, match="bipft convert"):
        load_teacher(tmp_path / "two", 2)
    with pytest.raises(InitError, match="not found"):
        load_teacher(tmp_path / "nowhere", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitError, match="neither"):
        load_teacher(tmp_path / "empty", 2)


def _random_params(model):
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.PRNGKey(3), ids)["params"]))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(x.dtype), params)


def _save(directory, params):
    with CheckpointManager(directory, max_to_keep=1, async_save=False) as m:
        m.save(7, {"params": params}, {}, force=True)


def test_finetune_stage_dir_teacher(tmp_path):
    cfg = finetune_config("bit", "rte", chain="fp,bit:a2", kd="bit", optimizer="bertadam")
    cfg.model.size, cfg.model.num_layers = "tiny", 1
    save_config(cfg, tmp_path)
    config = model_config(parse_stage("bit:a2"), "tiny", num_layers=1)
    model = BertForSequenceClassification(config, num_labels=2)
    params = _random_params(model)
    _save(tmp_path / "1_bit_a2" / "best", params)
    teacher = load_teacher(tmp_path / "1_bit_a2", 2)
    assert (
        teacher.model.config == config and teacher.model.config.quant.pooler_quant.input.bits == 2
    )
    batch = _batch()
    want = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"])["logits"]  # fmt: skip
    got = apply_teacher(teacher.model, teacher.params, batch, dropout=False)["logits"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_model_card_teacher(tmp_path):
    config = model_config(parse_stage("bipft"), "tiny", num_layers=1, vocab_size=97)
    model = BertForSequenceClassification(config, num_labels=1)
    params = _random_params(model)
    _save(tmp_path, params)
    write_model_card(tmp_path, config, 1, preset="bipft")
    teacher = load_teacher(tmp_path, 1)
    assert teacher.model.config == config
    assert jax.tree.all(jax.tree.map(np.array_equal, teacher.params, params))
    with pytest.raises(InitError, match="labels"):
        load_teacher(tmp_path, 3)
    write_model_card(tmp_path, model_config(parse_stage("bit"), "tiny", num_layers=1), 1)
    with pytest.raises(InitError, match="does not fit"):
        load_teacher(tmp_path, 1)
