"""`bipft convert`: reference PyTorch state dicts load, and the model computes what the reference
formulas compute (tests/model/reference_ckpt.py) to 1e-5."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.checkpoint import restore_params
from bipft_jax.checkpoint.model_card import read_model_card
from bipft_jax.convert import convert, main
from bipft_jax.model.params import build_model
from bipft_jax.model.reference_import import REFERENCES, ReferenceImportError
from tests.model.reference_ckpt import SIZES, reference_forward, reference_state

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")
TOL = 1e-5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, SIZES["vocab"], (3, 10))
    mask = np.ones((3, 10))
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    types = (np.arange(10) >= 5)[None].repeat(3, 0).astype(np.int64)
    return ids, mask, types


def _hf_config(kind, **extra):
    s = SIZES
    cfg = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
               num_attention_heads=s["heads"], intermediate_size=s["inter"],
               max_position_embeddings=s["positions"], type_vocab_size=s["types"],
               layer_norm_eps=1e-12, hidden_act="relu" if kind != "bibert" else "gelu")  # fmt: skip
    return {**cfg, **extra}


def _write(directory, state, hf_config=None, safetensors=False):
    directory.mkdir(parents=True)
    if safetensors:
        from safetensors.numpy import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save({k: torch.tensor(v) for k, v in state.items()}, directory / "pytorch_model.bin")
    if hf_config is not None:
        (directory / "config.json").write_text(json.dumps(hf_config))
    return directory


def _ours(out, head="classification"):
    config, num_labels, card = read_model_card(out)
    model = build_model(config, head, max(num_labels, 1))
    ids, mask, types = _batch()
    outputs = model.apply({"params": restore_params(str(out))}, jnp.asarray(ids),
                          jnp.asarray(mask, jnp.int32), jnp.asarray(types))  # fmt: skip
    return outputs, card


@pytest.mark.parametrize(
    "kind,bits,safetensors",
    [("bit", 1, False), ("bipft", 1, True), ("bibert", 1, False), ("bit", 2, True)],  # fmt: skip
)
def test_converted_classifier_matches_the_reference_formulas(tmp_path, kind, bits, safetensors):
    state = reference_state(kind, seed=bits)
    extra = {"weight_bits": 1, "input_bits": bits} if kind != "bibert" else {}
    src = _write(tmp_path / "ref", state, _hf_config(kind, **extra), safetensors)
    card = convert(kind, src, tmp_path / "out")
    assert card["stage"] == (kind if bits == 1 else f"{kind}:a{bits}")
    assert card["dropped"] == sorted(
        k for k in state if kind == "bit" and ".move_" in k or kind == "bibert" and (
            k.endswith(("clip_val", ".scale", ".gate")) or ".clip_" in k)
    )  # fmt: skip
    ours, _ = _ours(tmp_path / "out")
    want = reference_forward(kind, state, *_batch(), bits=bits)
    np.testing.assert_allclose(np.asarray(ours["logits"]), want["logits"], rtol=TOL, atol=TOL)


def test_bipft_pretraining_checkpoint_without_config(tmp_path):
    state = reference_state("bipft", head="pretraining", seed=4)
    src = _write(tmp_path / "ref", state)  # no config.json: sizes from the shapes
    card = convert("bipft", src / "pytorch_model.bin", tmp_path / "out", {"num_heads": 2})
    assert card["head"] == "pretraining" and card["overrides"]["hidden_size"] == SIZES["hidden"]
    ours, _ = _ours(tmp_path / "out", "pretraining")
    want = reference_forward("bipft", state, *_batch())
    np.testing.assert_allclose(np.asarray(ours["nsp_logits"]), want["nsp_logits"], atol=TOL)
    params = restore_params(str(tmp_path / "out"))
    np.testing.assert_allclose(
        params["predictions"]["transform_dense"]["kernel"],
        state["cls.predictions.transform.dense.weight"].T,
    )


@pytest.mark.parametrize("kind", REFERENCES)
def test_unknown_and_missing_keys_are_listed(tmp_path, kind):
    state = reference_state(kind, seed=2)
    p = "bert.encoder.layer.1."
    state[p + "attention.self.lora_q.lora.0.weight"] = np.zeros((1, SIZES["hidden"]), np.float32)
    gone = [p + "intermediate.dense.weight"]
    if kind != "bibert":
        gone += [p + "attention.self.clip_attn", "bert.pooler.dense.move.bias"]
    for key in gone:
        del state[key]
    src = _write(tmp_path / "ref", state, _hf_config(kind))
    with pytest.raises(ReferenceImportError) as err:
        convert(kind, src, tmp_path / "out")
    message = str(err.value)
    for key in [p + "attention.self.lora_q.lora.0.weight", *gone]:
        assert key.removeprefix("bert.") in message, key
    assert not (tmp_path / "out").exists()


def test_wrong_reference_is_rejected(tmp_path):
    src = _write(tmp_path / "ref", reference_state("bit"), _hf_config("bit"))
    with pytest.raises(ReferenceImportError, match="input_clip_val"):
        convert("bibert", src, tmp_path / "out")


def test_cli_then_export_and_finetune_init(tmp_path, capsys):
    from bipft_jax.export.cli import main as export_main
    from bipft_jax.export.torch_bert import load
    from bipft_jax.glue.init import load_initial_params
    from bipft_jax.model.bert import BertForSequenceClassification

    state = reference_state("bipft", seed=6)
    src = _write(tmp_path / "ref", state, _hf_config("bipft"))
    assert main(["--from", "bipft", str(src), "--out", str(tmp_path / "ckpt")]) == 0
    card = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
    assert card["export"] in capsys.readouterr().out
    args = card["export"].split()[2:] + ["--format", "binary", "--out", str(tmp_path / "bin")]
    assert export_main(args) == 0
    ids, mask, types = _batch()
    with torch.no_grad():
        exported = load(tmp_path / "bin")(torch.tensor(ids), torch.tensor(types),
                                          torch.tensor(mask))["logits"].numpy()  # fmt: skip
    want = reference_forward("bipft", state, ids, mask, types)["logits"]
    np.testing.assert_allclose(exported, want, rtol=TOL, atol=TOL)
    config, num_labels, _ = read_model_card(tmp_path / "ckpt")
    model = BertForSequenceClassification(config, num_labels)
    batch = {"input_ids": ids, "attention_mask": mask.astype(np.int32), "token_type_ids": types}
    params, _ = load_initial_params(model, batch, 0, "checkpoint", str(tmp_path / "ckpt"),
                                    keep_alpha=True)  # fmt: skip
    got = model.apply({"params": params}, *(jnp.asarray(batch[k]) for k in
                      ("input_ids", "attention_mask", "token_type_ids")))["logits"]  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)
    with pytest.raises(FileNotFoundError, match="reference checkpoint not found"):
        main(["--from", "bit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
