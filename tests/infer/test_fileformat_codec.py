"""Lossless float codec of the packed container (format v2): exact round trip, smaller files,
clear errors for damage, and version-1 directories still load."""

import json

import numpy as np
import pytest

from bipft_jax.infer.fileformat import (
    FLOAT_FILE,
    MANIFEST,
    TENSOR_FILE,
    PackedFormatError,
    load_packed,
    packed_size_bytes,
    save_packed,
    seal,
)
from bipft_jax.infer.packing import pack_matrix


def _arrays(rng):
    w = rng.standard_normal((300, 64)).astype(np.float32)
    odd = rng.standard_normal((3, 5, 7)).astype(np.float32)
    odd.reshape(-1)[:4] = [np.nan, -0.0, np.inf, np.float32(1e-42)]  # payloads survive bit-exact
    return {
        "w.signs": pack_matrix(w, axis=0, with_mask=False).signs,
        "w.scale": np.abs(w).mean(0).astype(np.float32),
        "pos": (0.02 * rng.standard_normal((512, 64))).astype(np.float32),
        "half": rng.standard_normal((40, 9)).astype(np.float16),
        "odd": odd,
        "empty": np.zeros((0, 4), np.float32),
        "ids": np.arange(10, dtype=np.int32),
    }


def test_compressed_round_trip_is_bit_exact_and_smaller(tmp_path):
    arrays = _arrays(np.random.default_rng(0))
    plain = save_packed(tmp_path / "plain", arrays, {"preset": "x"})
    packed = save_packed(tmp_path / "packed", arrays, {"preset": "x"}, compress=True)
    got, body = load_packed(packed)
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        assert got[name].tobytes() == a.tobytes(), name  # bit-exact, NaN/-0.0/denormal included
    coded = {n for n, r in body["tensors"].items() if r.get("codec") == "shuffle-xz"}
    assert coded == {"w.scale", "pos", "half", "odd", "empty"}  # floats only; words stay raw
    assert set(body["files"]) == {TENSOR_FILE, FLOAT_FILE}
    assert packed_size_bytes(packed) < packed_size_bytes(plain)
    on_disk = sum((packed / f).stat().st_size for f in (MANIFEST, TENSOR_FILE, FLOAT_FILE))
    assert packed_size_bytes(packed) == on_disk


def test_resaving_without_compression_drops_the_float_file(tmp_path):
    arrays = _arrays(np.random.default_rng(1))
    out = save_packed(tmp_path / "m", arrays, {}, compress=True)
    save_packed(out, arrays, {})
    assert not (out / FLOAT_FILE).exists()
    got, _ = load_packed(out)
    np.testing.assert_array_equal(got["pos"], arrays["pos"])


@pytest.fixture
def compressed(tmp_path):
    return save_packed(tmp_path / "m", _arrays(np.random.default_rng(2)), {}, compress=True)


def test_truncated_float_file(compressed):
    f = compressed / FLOAT_FILE
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(PackedFormatError, match="truncated data file .*floats.xz"):
        load_packed(compressed)


def test_corrupt_float_file(compressed):
    f = compressed / FLOAT_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="corrupt data file .*floats.xz"):
        load_packed(compressed)


def test_bad_codec_fields(compressed):
    mpath = compressed / MANIFEST
    body = json.loads(mpath.read_text())
    body["tensors"]["pos"]["nbytes"] += 4
    mpath.write_text(json.dumps(seal(body)))  # resealed, as a writer would
    with pytest.raises(PackedFormatError, match="tensor 'pos' does not fit"):
        load_packed(compressed)
    body["tensors"]["pos"]["nbytes"] -= 4
    body["tensors"]["pos"]["codec"] = "zstd"
    mpath.write_text(json.dumps(seal(body)))  # resealed, as a writer would
    with pytest.raises(PackedFormatError, match="unknown codec 'zstd'"):
        load_packed(compressed)


def test_version_1_directory_still_loads(tmp_path):
    arrays = _arrays(np.random.default_rng(3))
    out = save_packed(tmp_path / "m", arrays, {})
    body = json.loads((out / MANIFEST).read_text())
    body["format_version"] = 1
    (out / MANIFEST).write_text(json.dumps(body))
    got, _ = load_packed(out)
    np.testing.assert_array_equal(got["w.signs"], arrays["w.signs"])
