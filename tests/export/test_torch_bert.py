"""Binary export + the shipped PyTorch module reproduce the JAX logits for every preset."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.export.binary import export_binary, load_binary
from bipft_jax.model.params import tensor_role
from tests.export.helpers import init_params, random_batch, tiny_config

torch = pytest.importorskip("torch")

CASES = [
    ("fp", "pretraining", {}),
    ("bibert", "classification", {}),
    ("bit", "pretraining", {}),
    ("bipft", "classification", {}),
    ("bipft", "pretraining", {"quant.estimators": {"rank": 2, "per_head": True}}),
    ("bibert", "base", {"quant.table_storage": "bfloat16"}),  # rounding visible in hidden states
    (
        "bit",
        "base",
        {
            "quant.qkv": {"bits": 2},
            "quant.probs": {"bits": 4},
            "quant.linear_weight": {"scale": "channel", "center": "channel"},
        },
    ),
]


def _jax_outputs(model, params, batch):
    return model.apply(
        {"params": params},
        *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
    )


@pytest.mark.parametrize("method,head,overrides", CASES)
def test_torch_module_matches_jax(tmp_path, method, head, overrides):
    from bipft_jax.export.torch_bert import load

    config = tiny_config(method, **overrides)
    model, params = init_params(config, head, seed=hash(method) % 100)
    batch = random_batch(seed=5)
    export_binary(params, config, tmp_path, preset=method, size="tiny")
    ours = _jax_outputs(model, params, batch)
    torch_model = load(tmp_path)
    with torch.no_grad():
        theirs = torch_model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    keys = {
        "pretraining": ("mlm_logits", "nsp_logits"),
        "classification": ("logits",),
        "base": ("last_hidden_state", "pooled"),
    }[head]
    for key in keys:
        diff = np.abs(np.asarray(ours[key]) - theirs[key].numpy()).max()
        assert diff <= 1e-4, (key, diff)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["preset"] == method and manifest["config"]["quant"] == json.loads(
        json.dumps(manifest["config"]["quant"])
    )
    roles = {rec["role"] for rec in manifest["tensors"].values()}
    if method != "fp":
        assert "latent_weight" in roles
    if method in ("bit", "bipft"):
        assert {"alpha", "beta"} <= roles
    if method == "bipft":
        assert "estimator" in roles


def test_quantizer_params_matter_and_are_exported(tmp_path):
    """Perturbing α changes the torch output: the module really reads the exported α/β."""
    from bipft_jax.export.torch_bert import load

    config = tiny_config("bipft")
    _, params = init_params(config, "classification")
    export_binary(params, config, tmp_path / "a")
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 3.0 if "alpha" in jax.tree_util.keystr(p) else x, params
    )
    export_binary(bumped, config, tmp_path / "b")
    batch = random_batch()
    with torch.no_grad():
        a = load(tmp_path / "a")(batch["input_ids"])["logits"].numpy()
        b = load(tmp_path / "b")(batch["input_ids"])["logits"].numpy()
    assert np.abs(a - b).max() > 1e-3


def test_load_binary_round_trip_scanned(tmp_path):
    config = tiny_config("bipft", scan_layers=True)
    _, params = init_params(config, "pretraining")
    export_binary(params, config, tmp_path)
    restored, config2, manifest = load_binary(tmp_path)
    assert config2 == config and manifest["head"] == "pretraining"
    a = dict(jax.tree_util.tree_leaves_with_path(params))
    b = dict(jax.tree_util.tree_leaves_with_path(restored))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert tensor_role("bert/encoder/layer_0/attention/self/q_p/kernel", config) == "estimator"
    assert (
        tensor_role("bert/encoder/layer_0/attention/self/query/kernel", config) == "latent_weight"
    )
    assert tensor_role("predictions/transform_dense/kernel", config) == "fp"


def test_torch_module_needs_no_jax(tmp_path):
    config = tiny_config("bibert")
    _, params = init_params(config, "classification")
    export_binary(params, config, tmp_path)
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tb', {str(_module_path())!r})\n"
        "tb = importlib.util.module_from_spec(spec); spec.loader.exec_module(tb)\n"
        f"m = tb.load({str(tmp_path)!r})\n"
        "print(tuple(m([[1, 2, 3]])['logits'].shape))\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 3)"


def test_corrupt_export_is_a_clear_error(tmp_path):
    from bipft_jax.export.torch_bert import load

    config = tiny_config("bit")
    _, params = init_params(config, "base")
    export_binary(params, config, tmp_path)
    data = tmp_path / "tensors.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load(tmp_path)


def _module_path():
    import bipft_jax.export.torch_bert as tb

    return tb.__file__
