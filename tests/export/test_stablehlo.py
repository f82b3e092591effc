"""jax.export artifact: reloads and runs in a process that imports only jax + numpy."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.export import hlo_artifact
from bipft_jax.export.stablehlo import (
    export_inference,
    load_exported,
    params_for_call,
    save_exported,
)
from tests.export.helpers import init_params, random_batch, tiny_config

_CHILD = """
import importlib.util, sys, numpy as np, jax
if sys.argv[2] == "jax":  # the standard format: jax alone reads it
    exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
else:
    spec = importlib.util.spec_from_file_location("hlo_artifact", sys.argv[2])
    art = importlib.util.module_from_spec(spec); spec.loader.exec_module(art)
    exp = art.load_artifact(sys.argv[1])
for name in sys.argv[3:]:
    batch = np.load(name + ".in.npz")
    out = exp.call(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    np.savez(name + ".out.npz", **{k: np.asarray(v) for k, v in out.items()})
assert not any(m.startswith(("bipft_jax", "flax")) for m in sys.modules), "model code imported"
"""


def _reference(model, params, batch):
    return model.apply(
        {"params": params},
        *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
    )


@pytest.mark.parametrize("container", ["jax", "bipft"])
def test_baked_artifact_runs_without_model_code(tmp_path, container):
    config = tiny_config("bipft")
    model, params = init_params(config, "classification")
    exp = export_inference({"params": params}, config, seq_len=8)
    path = save_exported(exp, tmp_path / "m.jaxexport", container)
    batches = {b: random_batch(batch=b, seed=b) for b in (3, 5)}  # symbolic batch dimension
    for b, batch in batches.items():
        np.savez(tmp_path / f"b{b}.in.npz", **batch)
    reader = "jax" if container == "jax" else hlo_artifact.__file__
    cmd = [sys.executable, "-c", _CHILD, str(path), reader]
    cmd += [str(tmp_path / f"b{b}") for b in batches]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    for b, batch in batches.items():
        got = np.load(tmp_path / f"b{b}.out.npz")["logits"]
        assert got.shape == (b, 3)
        want = _reference(model, params, batch)["logits"]
        np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-5)


def test_params_as_argument_and_errors(tmp_path):
    config = tiny_config("bibert", scan_layers=True)
    model, params = init_params(config, "pretraining")
    exp = export_inference(params, config, seq_len=8, batch_size=3, params_as_argument=True)
    loaded = load_exported(save_exported(exp, tmp_path / "a" / "m.bin", "bipft"))
    batch = random_batch()
    out = loaded.call(
        params_for_call(params),
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
    )
    ref = _reference(model, params, batch)
    for key in ("mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_exported(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"not an artifact")
    with pytest.raises(ValueError, match="junk.bin"):
        load_exported(tmp_path / "junk.bin")
    raw = (tmp_path / "a" / "m.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_exported(tmp_path / "cut.bin")
    with pytest.raises(ValueError, match="max_position"):
        export_inference(params, config, seq_len=64)


def test_standard_container_checksum_and_errors(tmp_path):
    config = tiny_config("bibert")
    model, params = init_params(config, "classification")
    exp = export_inference(params, config, seq_len=8, batch_size=3)
    path = save_exported(exp, tmp_path / "m.jaxexport")
    digest, name = (tmp_path / "m.jaxexport.sha256").read_text().split()
    assert name == "m.jaxexport" and len(digest) == 64
    batch = random_batch()
    out = load_exported(path).call(
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )
    want = _reference(model, params, batch)["logits"]
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(want), atol=1e-5, rtol=0)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # still deserializes without the checksum: it must be caught
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_exported(path)
    (tmp_path / "junk.jaxexport").write_bytes(b"not an artifact")
    with pytest.raises(ValueError, match="junk.jaxexport is not a jax.export artifact"):
        load_exported(tmp_path / "junk.jaxexport")
    with pytest.raises(ValueError, match="unknown artifact container"):
        save_exported(exp, tmp_path / "x", "zip")
