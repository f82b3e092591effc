"""Checkpoint integrity: every kind of file in a step, flipped, truncated or deleted, is caught
before Orbax reads it; the newest intact step is used (or a clear error, on request)."""

import gc
import json
import shutil

import jax
import numpy as np
import pytest

from bipft_jax.checkpoint import manager as ckpt
from bipft_jax.checkpoint.integrity import MANIFEST, CheckpointCorruptError


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return jax.device_put({
        "params": {"w": rng.normal(size=(64, 48)).astype(np.float32),
                   "b": rng.normal(size=(48,)).astype(np.float32)},
        "step": np.int32(seed),
    })  # fmt: skip


def _same(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir with intact steps 1 and 2 (async saves, as in training)."""
    root = tmp_path_factory.mktemp("ckpt") / "run"
    with ckpt.CheckpointManager(root, save_every=1) as m:
        for step in (1, 2):
            assert m.save(step, _state(step), {"loader": step})
    return root


def _kinds(step_dir) -> dict[str, str]:
    """One file per kind (Orbax data, OCDBT manifests, array/sharding metadata, the extra JSON,
    our manifest), as a relative path."""
    files = sorted(json.loads((step_dir / MANIFEST).read_text())["files"])
    kinds = {
        "ocdbt data": next(f for f in files if "/ocdbt.process_0/d/" in f),
        "merged data": next(f for f in files if f.startswith("state/d/")),
        "ocdbt manifest": "state/manifest.ocdbt",
        "process manifest": "state/ocdbt.process_0/manifest.ocdbt",
        "array metadata": "state/_METADATA",
        "sharding": "state/_sharding",
        "array_metadatas": "state/array_metadatas/process_0",
        "extra json": "extra/metadata",
        "item commit marker": "state/commit_success.txt",
        "integrity manifest": MANIFEST,
    }
    assert all(k == MANIFEST or k in files for k in kinds.values()), (kinds, files)
    return kinds


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        i = len(data) // 2
        data[i : i + 4096] = bytes(b ^ 0xFF for b in data[i : i + 4096])
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()


KINDS = (
    "ocdbt data", "merged data", "ocdbt manifest", "process manifest", "array metadata",
    "sharding", "array_metadatas", "extra json", "item commit marker", "integrity manifest",
)  # fmt: skip
HOWS = {"flip": "SHA-256|unreadable", "truncate": "bytes|unreadable", "delete": "missing|no "}


@pytest.mark.parametrize("how", sorted(HOWS))
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_falls_back_to_newest_intact_step(saved, tmp_path, capsys, kind, how):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    rel = _kinds(root / "checkpoints" / "2")[kind]
    _damage(root / "checkpoints" / "2" / rel, how)
    with ckpt.CheckpointManager(root, save_every=1, read_only=True) as m:
        assert m.latest_step() == 1
        state, extra = m.restore()
        with pytest.raises(CheckpointCorruptError, match="step 2 .* unusable"):
            m.restore(step=2)
    assert extra == {"loader": 1}
    _same(state, _state(1))
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "checkpoint step 2" in warning[0]
    assert (MANIFEST if kind == "integrity manifest" else rel) in warning[0]
    with (
        ckpt.CheckpointManager(root, save_every=1, on_corrupt="error", read_only=True) as m,
        pytest.raises(
            CheckpointCorruptError, match=f"checkpoint step 2 .*unusable: .*({HOWS[how]})"
        ),
    ):
        m.latest_step()


def test_commit_time_bookkeeping_is_not_needed(saved, tmp_path):
    """The two step-level files outside the manifest: damaging them does not change a restore."""
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    _damage(root / "checkpoints" / "2" / "_CHECKPOINT_METADATA", "flip")
    (root / "checkpoints" / "2" / "commit_success.txt").unlink()
    with ckpt.CheckpointManager(root, save_every=1, read_only=True) as m:
        state, extra = m.restore()
    assert extra == {"loader": 2}
    _same(state, _state(2))


def test_writer_moves_bad_steps_aside_and_saves_the_same_step_again(saved, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    (root / "checkpoints" / "2" / MANIFEST).unlink()  # as if killed before the commit
    with ckpt.CheckpointManager(root, save_every=1) as m:
        assert m.latest_step() == 1
        assert m.all_steps() == [1, 2]  # nothing moved by reading
        state, _ = m.restore()
        assert m.save(2, _state(22), {"loader": 22})  # Orbax would refuse step 2 <= latest 2
    assert "moved unusable checkpoint step 2" in capsys.readouterr().err
    assert (root / "checkpoints_corrupt" / "2" / "state").is_dir()
    with ckpt.CheckpointManager(root, save_every=1, read_only=True) as m:
        assert m.all_steps() == [1, 2] and m.verify(2) is None
        state, extra = m.restore()
    assert extra == {"loader": 22}
    _same(state, _state(22))


def test_every_step_unusable_is_an_error_not_a_fresh_start(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    for step in (1, 2):
        _damage(root / "checkpoints" / str(step) / "extra" / "metadata", "truncate")
    with ckpt.CheckpointManager(root, read_only=True) as m:
        with pytest.raises(CheckpointCorruptError, match=r"no intact checkpoint .*\[1, 2\]"):
            m.latest_step()
        with pytest.raises(CheckpointCorruptError):
            m.restore()
    with pytest.raises(ValueError, match="on_corrupt must be one of"):
        ckpt.CheckpointManager(root, on_corrupt="ignore")


def test_export_and_finetune_init_use_the_newest_intact_step(saved, tmp_path, capsys):
    """The two other readers: `bipft export --checkpoint` and a fine-tuning init checkpoint."""
    from bipft_jax import cli
    from bipft_jax.checkpoint import restore_params
    from bipft_jax.export.cli import load_checkpoint_params

    root = tmp_path / "run"
    shutil.copytree(saved, root)
    _damage(root / "checkpoints" / "2" / "state" / "_METADATA", "flip")
    _same(load_checkpoint_params(str(root)), _state(1)["params"])
    _same(restore_params(str(root)), _state(1)["params"])
    assert "checkpoint step 2" in capsys.readouterr().err
    argv = ["export", "--format", "hf", "--checkpoint", str(root), "--step", "2", "--preset",
            "fp", "--size", "tiny", "--out", str(tmp_path / "o")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint step 2" in err[0] and "state/_METADATA" in err[0], err
    assert not (root / "checkpoints_corrupt").exists()  # readers never move anything


# Orbax's failed restore abandons read coroutines; they are collected (and ignored) here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_intact_checkpoint_of_another_config_is_a_clear_error(saved):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                          _state(1))  # fmt: skip
    target["params"]["w"] = jax.ShapeDtypeStruct((64, 96), np.float32, sharding=one)
    with (
        ckpt.CheckpointManager(saved, read_only=True) as m,
        pytest.raises(ckpt.CheckpointMismatchError, match=r"does not fit this run .*\(64, 96\)"),
    ):
        m.restore(target)
    gc.collect()
