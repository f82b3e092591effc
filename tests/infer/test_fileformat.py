"""Packed-model container: round trip, exact sizes, and a clear error for each kind of damage."""

import json

import numpy as np
import pytest

from bipft_jax.infer.fileformat import (
    MANIFEST,
    TENSOR_FILE,
    PackedFormatError,
    load_packed,
    packed_entries,
    packed_from_entries,
    packed_size_bytes,
    save_packed,
    seal,
)
from bipft_jax.infer.packing import pack_matrix


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 12)).astype(np.float32)
    pw = pack_matrix(w, axis=0, with_mask=False)
    arrays = {
        "layer0/kernel.signs": pw.signs,
        "layer0/kernel.scale": np.abs(w).mean(0).astype(np.float32),
        "layer0/bias": rng.standard_normal(12).astype(np.float32),
    }
    meta = {
        "layer0/kernel.signs": {"role": "packed_signs", "k": 70},
        "layer0/kernel.scale": {"role": "scale"},
        "layer0/bias": {"role": "fp"},
    }
    manifest = {"preset": "bibert", "config": {"hidden": 12, "layers": 1}}
    out = save_packed(tmp_path / "model", arrays, manifest, meta)
    return out, arrays


def test_round_trip_preserves_arrays_and_manifest(saved):
    out, arrays = saved
    got, body = load_packed(out)
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype
        np.testing.assert_array_equal(got[name], a)
    assert body["preset"] == "bibert" and body["config"] == {"hidden": 12, "layers": 1}
    assert body["tensors"]["layer0/kernel.signs"] == {
        "shape": [12, 3],
        "dtype": "uint32",
        "role": "packed_signs",
        "k": 70,
    }


def test_packed_size_bytes_is_exact(saved):
    out, arrays = saved
    assert packed_size_bytes(arrays) == 12 * 3 * 4 + 12 * 4 + 12 * 4
    on_disk = (out / MANIFEST).stat().st_size + (out / TENSOR_FILE).stat().st_size
    assert packed_size_bytes(out) == on_disk
    assert on_disk > packed_size_bytes(arrays)


def test_corrupt_file_names_the_file(saved):
    out, _ = saved
    f = out / TENSOR_FILE
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match=rf"corrupt data file .*{TENSOR_FILE}.*sha256"):
        load_packed(out)


def test_truncated_file(saved):
    out, _ = saved
    f = out / TENSOR_FILE
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(PackedFormatError, match=rf"truncated data file .*{TENSOR_FILE}"):
        load_packed(out)


def test_unknown_version(saved):
    out, _ = saved
    body = json.loads((out / MANIFEST).read_text())
    body["format_version"] = 99
    (out / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(PackedFormatError, match="unknown format_version 99"):
        load_packed(out)


def test_missing_manifest_and_missing_dir(saved, tmp_path):
    out, _ = saved
    (out / MANIFEST).unlink()
    with pytest.raises(PackedFormatError, match="missing manifest"):
        load_packed(out)
    with pytest.raises(PackedFormatError, match="directory not found"):
        load_packed(tmp_path / "nope")


def test_missing_data_file_and_bad_json(saved):
    out, _ = saved
    (out / TENSOR_FILE).unlink()
    with pytest.raises(PackedFormatError, match="missing data file"):
        load_packed(out)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(PackedFormatError, match="unreadable manifest"):
        load_packed(out)


def test_manifest_tensor_mismatch_detected(saved):
    out, _ = saved
    body = json.loads((out / MANIFEST).read_text())
    body["tensors"]["layer0/bias"]["shape"] = [13]
    (out / MANIFEST).write_text(json.dumps(seal(body)))  # resealed, as a writer would
    with pytest.raises(PackedFormatError, match="'layer0/bias' is float32\\[12\\]"):
        load_packed(out)


def test_save_rejects_reserved_keys_and_unknown_meta(tmp_path):
    a = {"x": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="reserved keys \\['format_version'\\]"):
        save_packed(tmp_path / "a", a, {"format_version": 2})
    with pytest.raises(ValueError, match="not in arrays: \\['y'\\]"):
        save_packed(tmp_path / "b", a, {}, {"y": {"role": "fp"}})


@pytest.mark.parametrize("zeros", [False, True])
def test_packed_entries_round_trip(tmp_path, zeros):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((45, 6)).astype(np.float32)
    if zeros:
        w[3, 2] = 0.0
    packed = pack_matrix(w, axis=0)
    arrays, meta = packed_entries("enc/q", packed)
    assert ("enc/q.mask" in arrays) == zeros
    got_arrays, body = load_packed(save_packed(tmp_path / "m", arrays, {"preset": "x"}, meta))
    back = packed_from_entries(got_arrays, body, "enc/q")
    assert back.k == 45
    np.testing.assert_array_equal(back.unpack(np.float32), np.sign(w).T)
    with pytest.raises(PackedFormatError, match="no packed tensor 'enc/k'"):
        packed_from_entries(got_arrays, body, "enc/k")
    body["tensors"]["enc/q.signs"]["k"] = 100
    with pytest.raises(PackedFormatError, match="cannot hold k=100"):
        packed_from_entries(got_arrays, body, "enc/q")


def test_files_get_the_umask_mode(tmp_path):
    """safetensors alone writes 0600; the packed files follow the umask like any other file."""
    import os

    old = os.umask(0o022)
    try:
        out = save_packed(tmp_path / "m", {"w": np.ones(3, np.float32)}, {})
    finally:
        os.umask(old)
    assert oct((out / TENSOR_FILE).stat().st_mode & 0o777) == oct(0o644)
