"""`restore_params` (only the params subtree is read) and `restore_state` of a run directory."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bipft_jax.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    restore_params,
    restore_state,
)
from bipft_jax.checkpoint.integrity import CheckpointCorruptError


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    params = {"bert": {"w": rng.normal(size=(16, 8)).astype(np.float32),
                       "alpha": np.float32(seed)},
              "head": {"b": rng.normal(size=(8,)).astype(np.float32)}}  # fmt: skip
    moments = jax.tree.map(lambda x: np.full_like(x, 7.0), params)
    return {"step": np.int32(seed), "params": params, "opt_state": ({"mu": moments},)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore") / "run"
    with CheckpointManager(root, save_every=1, async_save=False) as m:
        for step in (1, 2):
            m.save(step, _state(step), {"loader": step})
    return root


def _same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_params_only_as_numpy(run, monkeypatch):
    requests = []
    restore = ocp.PyTreeCheckpointer.restore

    def spy(self, directory, *a, args=None, **kw):
        requests.append(args)
        return restore(self, directory, *a, args=args, **kw)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", spy)
    params = restore_params(run)
    _same(params, _state(2)["params"])
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    _same(restore_params(run / "checkpoints", step=1), _state(1)["params"])
    # One Orbax read per call, asking for the params subtree only (no optimizer moments).
    assert len(requests) == 2
    assert all(r.partial_restore and set(r.item) == {"params"} for r in requests)


def test_like_places_and_casts_and_must_match(run):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.bfloat16, sharding=one),
                        _state(2)["params"])  # fmt: skip
    got = restore_params(run, like=like)
    assert all(isinstance(x, jax.Array) and x.dtype == jnp.bfloat16 and x.sharding == one
               for x in jax.tree.leaves(got))  # fmt: skip
    np.testing.assert_allclose(np.asarray(got["head"]["b"], np.float32),
                               _state(2)["params"]["head"]["b"], rtol=1e-2)  # fmt: skip
    like["bert"]["w"] = jax.ShapeDtypeStruct((16, 9), jnp.float32)
    like["bert"]["beta"] = jax.ShapeDtypeStruct((), jnp.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        restore_params(run, like=like)
    msg = str(e.value)
    assert "bert/w: checkpoint (16, 8) vs model (16, 9)" in msg
    assert "1 model arrays not in the checkpoint: bert/beta" in msg  # Orbax alone: silent
    del like["bert"]
    with pytest.raises(CheckpointMismatchError, match="checkpoint arrays not in the model"):
        restore_params(run, like=like)


def test_errors_and_fallback(run, tmp_path, capsys):
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found"):
        restore_params(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .*\[1, 2\]"):
        restore_params(run, step=5)
    with CheckpointManager(tmp_path / "x", async_save=False) as m:
        m.save(0, {"w": np.zeros(2)}, force=True)
    with pytest.raises(CheckpointMismatchError, match=r"holds no params \(its state: \['w'\]\)"):
        restore_params(tmp_path / "x")
    import shutil

    shutil.copytree(run, tmp_path / "bad")
    (tmp_path / "bad" / "checkpoints" / "2" / "integrity.json").write_text("{}")
    _same(restore_params(tmp_path / "bad"), _state(1)["params"])  # the newest intact step
    assert "checkpoint step 2" in capsys.readouterr().err
    with pytest.raises(CheckpointCorruptError):
        restore_params(tmp_path / "bad", on_corrupt="error")
    assert not (tmp_path / "bad" / "checkpoints_corrupt").exists()  # readers move nothing


def test_restore_state_reads_everything(run):
    state, extra = restore_state(run)  # as saved: Orbax gives the tuple back as a list
    want = _state(2)
    _same(state["params"], want["params"])
    _same(state["opt_state"][0], want["opt_state"][0])
    assert int(state["step"]) == 2 and extra == {"loader": 2}
    with CheckpointManager(run, read_only=True) as m:  # a resuming run passes its own manager
        state, extra = restore_state(m, step=1)
    assert int(state["step"]) == 1 and extra == {"loader": 1}
