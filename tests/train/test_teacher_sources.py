"""The two real teacher sources of `bipft pretrain`, end to end: a Hugging Face BERT directory and
the checkpoint of our own FP run. Checked: the teacher computes what the source model computes,
and the student starts from the teacher's weights (one step at lr 0 leaves params unchanged)."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.parallel import get_rules, make_mesh
from bipft_jax.train.pretrain import build_teacher, default_config, student_config
from tests.train.cli_runs import final_params, run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LR0 = ["--config.train.total_steps=1", "--config.optim.lr=0.0", "--config.optim.schedule=constant"]


def _hf_tiny_bert(path):
    """A randomly initialised HF BertForPreTraining with the `tiny` preset's sizes."""
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(cfg).eval()
    model.save_pretrained(path)
    return model


def _teacher(source: str, path) -> tuple:
    c = default_config()
    c.teacher.source, c.teacher.path = source, str(path)
    ids = np.zeros((1, 8), np.int32)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    return build_teacher(c, student_config(c, 30522), mesh, get_rules("dp"), ids)


def _shared_leaves(student: dict, source: dict) -> int:
    """Assert every student leaf that the source has (same path) equals it; return the count."""
    flat_s, flat_t = traverse_util.flatten_dict(student), traverse_util.flatten_dict(source)
    common = [k for k in flat_s if k in flat_t]
    for k in common:
        np.testing.assert_array_equal(np.asarray(flat_s[k]), np.asarray(flat_t[k]), "/".join(k))
    return len(common)


def test_hf_directory_teacher_matches_transformers_and_inits_student(tmp_path, shared_data):
    hf = _hf_tiny_bert(tmp_path / "hf")
    model, params, _, has_heads = _teacher("hf", tmp_path / "hf")
    assert has_heads
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 30522, size=(2, 24), dtype=np.int32)
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    types = np.zeros_like(ids)
    types[:, 12:] = 1
    out = model.apply({"params": params}, ids, mask, types, deterministic=True)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types, dtype=torch.long))  # fmt: skip
    keep = mask.astype(bool)  # padded query rows are not compared
    np.testing.assert_allclose(np.asarray(out["mlm_logits"])[keep],
                               ref.prediction_logits.numpy()[keep], atol=1e-4, rtol=0)  # fmt: skip
    np.testing.assert_allclose(np.asarray(out["nsp_logits"]), ref.seq_relationship_logits.numpy(),
                               atol=1e-4, rtol=0)  # fmt: skip

    w = tmp_path / "w"
    res = run(w, tmp_path / "cache", *LR0, "--config.teacher.source=hf",
              f"--config.teacher.path={tmp_path / 'hf'}")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    student = final_params(w)["params"]
    assert _shared_leaves(student, jax.device_get(params)) >= 30  # embeddings, encoder, heads


def test_checkpoint_teacher_is_the_fp_runs_final_params(tmp_path, shared_data):
    fp_dir = tmp_path / "fp"
    res = run(fp_dir, tmp_path / "cache", "--config", "configs/pretrain/tiny.py:fp",
              "--config.train.total_steps=3")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fp_final = final_params(fp_dir)["params"]
    assert not any("alpha" in k for k in traverse_util.flatten_dict(fp_final, sep="/"))  # an FP run

    _, params, _, _ = _teacher("checkpoint", fp_dir)
    flat_t = traverse_util.flatten_dict(jax.device_get(params))
    assert len(flat_t) == _shared_leaves(jax.device_get(params), fp_final)  # every leaf, exactly

    w = tmp_path / "w"
    res = run(w, tmp_path / "cache", *LR0, "--config.teacher.source=checkpoint",
              f"--config.teacher.path={fp_dir}")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _shared_leaves(final_params(w)["params"], fp_final) >= 30
