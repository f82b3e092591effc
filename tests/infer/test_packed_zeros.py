"""Few exact zeros (sign 0, ``W == μ``) are stored as a ``.zeros`` position list instead of a
nonzero-mask plane; loading rebuilds the identical plane, and ``.mask`` files still load."""

import json

import numpy as np
import pytest

from bipft_jax.infer.fileformat import (
    MANIFEST,
    PackedFormatError,
    load_packed,
    mask_from_zeros,
    masks_to_zeros,
    packed_entries,
    packed_from_entries,
    zero_positions,
    zeros_to_masks,
)
from bipft_jax.infer.packed_model import (
    PackedModel,
    binarize_for_packing,
    load_packed_model,
    pack_model,
    save_packed_model,
)
from bipft_jax.infer.packing import pack_bits, pack_matrix
from bipft_jax.model.params import weight_quant
from tests.export.helpers import init_params, tiny_config
from tests.infer.test_packed_model import _assert_close, _batch, forward

WORD = "bert/embeddings/word_embeddings/embedding"
QUERY = "bert/encoder/layers/attention/self/query/kernel"
KEY = "bert/encoder/layers/attention/self/key/kernel"
POOLER = "bert/pooler/dense/kernel"
# name -> (param path, planted (row, col) positions of the latent weight)
PLANTS = {
    WORD: (("bert", "embeddings", "word_embeddings", "embedding"), [(5, 7), (60, 30)]),
    QUERY: (
        ("bert", "encoder", "layer_0", "attention", "self", "query", "kernel"),
        [(0, 0), (9, 4)],
    ),
    KEY: (("bert", "encoder", "layer_1", "attention", "self", "key", "kernel"), [(30, 2)]),
    POOLER: (("bert", "pooler", "dense", "kernel"), [(3, 3), (4, 3), (17, 20)]),
}


def _plant_zeros(w: np.ndarray, positions: list) -> np.ndarray:
    """``w`` on a 2**-10 grid with zero row and column sums, so every centre the binarizers use
    (per tensor, per row, per column) is exactly 0 in any float32 summation order, and exact 0 at
    ``positions`` (inside ``w[:-1, :-1]``) and nowhere else."""
    c = np.round(np.asarray(w, np.float64) * 1024)
    c[c == 0] = 1
    a = c[:-1, :-1]
    for p in positions:
        a[p] = 0
    c[:-1, -1], c[-1, :-1], c[-1, -1] = -a.sum(1), -a.sum(0), a.sum()
    assert np.count_nonzero(c == 0) == len(positions)
    return (c / 1024).astype(np.float32)


def _model_with_zeros(method: str, seed: int = 1):
    config = tiny_config(method)
    model, params = init_params(config, "classification", seed=seed)
    for path, positions in PLANTS.values():
        parent = params
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = _plant_zeros(parent[path[-1]], positions)
    return config, model, params


def _latent(params, path):
    for key in path:
        params = params[key]
    return np.asarray(params)


def _old_masks(config, params) -> dict[str, np.ndarray]:
    """The mask planes the dense writer stores (``pack_matrix`` of the binarizer's signs, layers
    stacked; a layer without zeros gets its all-ones plane)."""
    out = {}
    for name, (path, _) in PLANTS.items():
        table = name.endswith("/embedding")
        layers = [path]
        if "layers" in name:
            layers = [(*path[:2], f"layer_{i}", *path[3:]) for i in range(config.num_layers)]
        planes = []
        for p in layers:
            signs, _ = binarize_for_packing(_latent(params, p), weight_quant("/".join(p), config))
            planes.append(pack_matrix(signs, axis=-1 if table else 0, with_mask=True).mask)
        out[name] = planes[0] if len(planes) == 1 else np.stack(planes)
    return out


@pytest.mark.parametrize("method", ["bibert", "bit", "bipft"])
def test_few_zeros_round_trip_as_lists_with_the_same_planes_and_logits(method, tmp_path):
    config, model, params = _model_with_zeros(method)
    tensors, manifest = pack_model(params, config)
    assert not [n for n in tensors if n.endswith(".mask")]
    assert sorted(n for n in tensors if n.endswith(".zeros")) == sorted(
        f"{n}.zeros" for n in PLANTS
    )
    n_k = 32 * 32  # one [N, K] layer of the stacked [layers, N, K] query/key matrices
    want = {
        WORD: [5 * 32 + 7, 60 * 32 + 30],  # tables: [V, E] rows as they are
        QUERY: [0 * 32 + 0, 4 * 32 + 9],  # kernels [K, N] -> [N, K]: (k, n) at n * K + k
        KEY: [n_k + 2 * 32 + 30],  # layer 1 of 2: offset by one layer
        POOLER: [3 * 32 + 3, 3 * 32 + 4, 20 * 32 + 17],
    }
    for name, positions in want.items():
        np.testing.assert_array_equal(tensors[f"{name}.zeros"], positions)
        rec = manifest["tensors"][f"{name}.zeros"]
        assert rec["role"] == "packed_zeros" and rec["dtype"] == "int32"
        assert rec["k"] == manifest["tensors"][f"{name}.signs"]["k"]
        assert rec.get("layers") == manifest["tensors"][f"{name}.signs"].get("layers")
    directory = save_packed_model(tmp_path / "m", tensors, manifest)
    assert json.loads((directory / MANIFEST).read_text())["format_version"] == 4
    loaded = load_packed_model(directory)
    for name, plane in _old_masks(config, params).items():
        if "layers" in name:  # only one layer has zeros: the other's plane is all ones
            for i in range(config.num_layers):
                got = loaded.tensors[name.replace("layers/", f"layer_{i}/")].mask
                np.testing.assert_array_equal(np.asarray(got), plane[i])
            assert not np.all(plane == pack_bits(np.ones(32, bool)))
        else:
            np.testing.assert_array_equal(np.asarray(loaded.tensors[name].mask), plane)
    batch = _batch()
    out = forward(loaded, **batch)
    _assert_close(out, model.apply({"params": params}, **batch))
    same = forward(PackedModel.from_tensors(tensors, manifest), **batch)
    for key in out:
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(same[key]))


def test_version2_file_with_mask_planes_loads_unchanged(tmp_path):
    config, model, params = _model_with_zeros("bipft")
    tensors, manifest = pack_model(params, config)
    old_tensors = {n: a for n, a in tensors.items() if not n.endswith(".zeros")}
    old_records = {n: r for n, r in manifest["tensors"].items() if not n.endswith(".zeros")}
    for name, plane in _old_masks(config, params).items():
        rec = manifest["tensors"][f"{name}.zeros"]
        old_tensors[f"{name}.mask"] = plane
        old_records[f"{name}.mask"] = {
            **rec,
            "role": "packed_mask",
            "shape": list(plane.shape),
            "dtype": "uint32",
        }
    old = save_packed_model(tmp_path / "old", old_tensors, {**manifest, "tensors": old_records})
    body = json.loads((old / MANIFEST).read_text())
    body["format_version"] = 2  # as the version-2 writer left it (the manifest is not hashed)
    (old / MANIFEST).write_text(json.dumps(body))
    assert {n for n in load_packed(old)[0] if n.endswith((".mask", ".zeros"))} == {
        f"{n}.mask" for n in PLANTS
    }
    new = load_packed_model(save_packed_model(tmp_path / "new", tensors, manifest))
    got = load_packed_model(old)
    for name, value in new.tensors.items():
        if hasattr(value, "mask"):
            assert (value.mask is None) == (got.tensors[name].mask is None), name
            if value.mask is not None:
                np.testing.assert_array_equal(np.asarray(got.tensors[name].mask), value.mask)
    batch = _batch()
    a, b = forward(new, **batch), forward(got, **batch)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    _assert_close(b, model.apply({"params": params}, **batch))


def test_many_zeros_keep_the_plane_and_the_rule_is_bytes():
    """A list is stored exactly when it has fewer bytes than the plane (int32 vs uint32 words)."""
    rows, k = 3, 45  # 3 rows of 2 words: a 24-byte plane, so up to 5 zeros go in a list
    rng = np.random.default_rng(0)
    for count in (1, 5, 6, 40):
        x = rng.choice([-1.0, 1.0], (rows, k))
        x.reshape(-1)[rng.choice(rows * k, count, replace=False)] = 0.0
        arrays, meta = packed_entries("w", pack_matrix(x))
        out, records = masks_to_zeros(arrays, meta)
        assert ("w.zeros" in out) == (count < 6) and ("w.mask" in out) == (count >= 6)
        np.testing.assert_array_equal(zero_positions(arrays["w.mask"], k), np.flatnonzero(x == 0))
        back, back_records = zeros_to_masks(out, records, "test")
        np.testing.assert_array_equal(back["w.mask"], arrays["w.mask"])
        assert back_records == meta
        manifest = {"tensors": records}
        np.testing.assert_array_equal(packed_from_entries(out, manifest, "w").unpack(), x)
    assert mask_from_zeros(np.zeros(0, np.int32), (2, 3), 40).shape == (2, 3, 2)


def test_bad_zero_lists_fail_clearly_naming_the_tensor(tmp_path):
    config, _, params = _model_with_zeros("bit")
    tensors, manifest = pack_model(params, config)
    name = f"{WORD}.zeros"
    size = 97 * 32
    bad = dict(tensors, **{name: np.array([5, size], np.int32)})
    directory = save_packed_model(tmp_path / "bad", bad, manifest)  # checksums of the bad bytes
    with pytest.raises(PackedFormatError, match=rf"'{name}': position {size} out of range"):
        load_packed_model(directory)
    records = manifest["tensors"]

    def fails(match, arrays=None, recs=None):
        with pytest.raises(PackedFormatError, match=match):
            PackedModel.from_tensors(arrays or tensors, {**manifest, "tensors": recs or records})

    fails(rf"'{name}': position -1 out of range", dict(tensors, **{name: np.array([-1, 4])}))
    fails(rf"'{name}': positions not sorted", dict(tensors, **{name: np.array([9, 4], np.int32)}))
    fails(rf"'{name}': positions not sorted", dict(tensors, **{name: np.array([4, 4], np.int32)}))
    fails(rf"'{name}' is float32\[2\]", dict(tensors, **{name: np.array([1, 2], np.float32)}))
    fails(rf"'{name}' is int32\[1, 2\]", dict(tensors, **{name: np.array([[1, 2]], np.int32)}))
    fails(rf"'{name}' has k=31", recs={**records, name: {**records[name], "k": 31}})
    q = f"{QUERY}.zeros"
    fails(rf"'{q}' has layers=None", recs={**records, q: {"role": "packed_zeros", "k": 32}})
    both = dict(tensors, **{f"{WORD}.mask": np.zeros((97, 1), np.uint32)})
    fails(
        rf"'{WORD}' has both a '.mask' plane and a '.zeros' list",
        both,
        {**records, f"{WORD}.mask": {"role": "packed_mask", "k": 32}},
    )
    orphan = dict(tensors, **{"bert/x.zeros": np.array([1], np.int32)})
    fails(
        r"zero list 'bert/x.zeros' has no packed tensor 'bert/x.signs'",
        orphan,
        {**records, "bert/x.zeros": {"role": "packed_zeros", "k": 32}},
    )
