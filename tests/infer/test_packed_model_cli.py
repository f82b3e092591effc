"""`bipft export --format packed` writes a loadable packed model; user errors are one line."""

import jax
import numpy as np
import pytest
from flax import serialization

from bipft_jax.errors import EXIT_USER_ERROR, run_command
from bipft_jax.export.cli import main
from bipft_jax.infer.fileformat import load_packed
from bipft_jax.infer.packed_model import load_packed_model, pack_model
from tests.export.helpers import TINY, init_params, tiny_config

SETS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]


def test_cli_writes_packed_model(tmp_path):
    config = tiny_config("bipft")
    _, params = init_params(config, "classification", seed=3)
    src = tmp_path / "params.msgpack"
    src.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    out = tmp_path / "packed"
    argv = ["--format", "packed", "--params", str(src), "--preset", "bipft", "--size", "tiny"]
    assert main([*argv, *SETS, "--float16", "pos_type", "--out", str(out)]) == 0
    loaded = load_packed_model(out)
    assert loaded.head == "classification" and loaded.num_labels == 3
    on_disk, manifest = load_packed(out)
    tensors, want = pack_model(params, config, float16="pos_type")
    codec = ("codec", "offset", "nbytes")  # the default --compress stores floats with a codec
    stored = {
        n: {k: v for k, v in r.items() if k not in codec} for n, r in manifest["tensors"].items()
    }
    assert manifest["preset"] == "bipft" and stored == want["tensors"]
    coded = {n for n, r in manifest["tensors"].items() if "codec" in r}
    assert coded == {n for n, t in tensors.items() if t.dtype.kind == "f"}
    assert set(on_disk) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(on_disk[name], value)
    raw = tmp_path / "raw"
    assert main([*argv, *SETS, "--float16", "pos_type", "--no-compress", "--out", str(raw)]) == 0
    assert (out / "floats.xz").is_file() and not (raw / "floats.xz").exists()


def test_cli_rejects_fp_preset(tmp_path, capsys):
    _, params = init_params(tiny_config("fp"), "classification")
    src = tmp_path / "params.msgpack"
    src.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    argv = ["--format", "packed", "--params", str(src), "--preset", "fp", "--size", "tiny"]
    code = run_command("bipft export", main, [*argv, *SETS, "--out", str(tmp_path / "o")])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "binary preset" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("key", "value"), [("layer_norm_eps", 1e-3), ("hidden_act", "relu")])
def test_edited_manifest_is_refused(tmp_path, key, value):
    """A manifest edited to other valid JSON (another LayerNorm eps or activation) would load and
    give other hidden states; its own hash refuses it, and the untouched file still loads."""
    import json

    from bipft_jax.infer.fileformat import MANIFEST, PackedFormatError
    from bipft_jax.infer.packed_model import save_packed_model

    config = tiny_config("bibert")
    _, params = init_params(config, "classification")
    tensors, manifest = pack_model(params, config, preset="bibert")
    out = save_packed_model(tmp_path / "m", tensors, manifest)
    load_packed_model(out)  # intact: loads
    body = json.loads((out / MANIFEST).read_text())
    assert body["config"][key] != value
    body["config"][key] = value
    (out / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True))
    with pytest.raises(PackedFormatError, match=r"manifest\.json was edited or is corrupt"):
        load_packed_model(out)
    done = run_command("bipft export", lambda a: load_packed_model(out), [])
    assert done == EXIT_USER_ERROR
