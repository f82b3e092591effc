"""Whole-model packed inference equals the fake-quant forward (integers exact, floats to 1e-4).

References: the model's own ``.apply`` (deterministic) on random, perturbed params; at raw init
(zero biases, so linear outputs hit exact zeros, ``sign = 0``) the same model in float32 and in
float64. Both paths multiply integer codes first and scale after (``quant/product.py``), so the
float32 fake-quant sums are exact zeros too (with ``x̂·(m·sign W)`` they left ~4e-9 residues).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.infer.fileformat import PackedFormatError, packed_size_bytes
from bipft_jax.infer.kernels import signed_matmul, unsigned_matmul
from bipft_jax.infer.packed_forward import packed_forward
from bipft_jax.infer.packed_model import (
    PackedModel,
    PackedModelError,
    load_packed_model,
    pack_model,
    packed_bytes_estimate,
    save_packed_model,
)
from bipft_jax.infer.packing import pack_matrix
from bipft_jax.model.params import build_model
from bipft_jax.quant import quantize_weight
from tests.export.helpers import init_params, random_batch, tiny_config

TOL = 1e-4
forward = jax.jit(packed_forward, static_argnames=("kernel", "chunk"))


def _batch(seed: int = 3) -> dict:
    return {k: jnp.asarray(v) for k, v in random_batch(seed=seed).items()}


def _max_diff(out: dict, ref: dict) -> dict:
    return {k: float(np.max(np.abs(np.asarray(out[k]) - np.asarray(ref[k])))) for k in out}


def _assert_close(out: dict, ref: dict, tol: float = TOL) -> None:
    assert set(out) == {k for k in ref if k in out} and "pooled" in out
    diffs = _max_diff(out, ref)
    assert max(diffs.values()) <= tol, diffs


@pytest.mark.parametrize("method", ["bibert", "bit", "bipft"])
@pytest.mark.parametrize("head", ["pretraining", "classification"])
def test_packed_forward_matches_fake_quant(method, head):
    config = tiny_config(method)
    model, params = init_params(config, head, seed=1)
    batch = _batch()
    ref = model.apply({"params": params}, **batch)
    tensors, manifest = pack_model(params, config)
    out = forward(PackedModel.from_tensors(tensors, manifest), **batch)
    logits = ("mlm_logits", "nsp_logits") if head == "pretraining" else ("logits",)
    assert all(k in out for k in logits)
    _assert_close(out, ref)
    # The comparison can fail: one flipped sign bit in a packed weight moves the logits.
    name = next(n for n in tensors if n.endswith("layers/intermediate/dense/kernel.signs"))
    bad = dict(tensors, **{name: tensors[name] ^ np.uint32(1)})
    flipped = forward(PackedModel.from_tensors(bad, manifest), **batch)
    assert max(_max_diff(flipped, ref).values()) > 1e-3


@pytest.mark.parametrize("method", ["bibert", "bit", "bipft"])
def test_packed_forward_equals_fake_quant_bit_for_bit(method):
    """Same codes, same scale order, same LayerNorm: identical floats, so identical predictions.
    Measured at hidden 64, 128 and 384 (and on every GLUE-study model); at the 32-wide test
    models above the float parts still differ by ~5e-7 between the two programs (not chased)."""
    config = tiny_config(method, hidden_size=64, num_heads=2, intermediate_size=128)
    model, params = init_params(config, "classification", seed=2)
    batch = _batch(seed=4)
    ref = jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch)
    out = forward(PackedModel.from_tensors(*pack_model(params, config)), **batch)
    for key in ("last_hidden_state", "pooled", "logits"):
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]), err_msg=key)


@pytest.mark.parametrize("method", ["bibert", "bit", "bipft"])
def test_raw_init_exact_zeros_match_float32_and_float64_models(method):
    config = tiny_config(method)
    _, params = init_params(config, "classification", seed=2, scale=0.0)  # biases are 0
    batch = _batch(seed=4)
    packed = PackedModel.from_tensors(*pack_model(params, config))
    out = forward(packed, **batch)
    model32 = build_model(config, "classification", 3)
    _assert_close(out, model32.apply({"params": params}, **batch))
    with jax.enable_x64(True):
        model64 = build_model(dataclasses.replace(config, dtype=jnp.float64), "classification", 3)
        ref = model64.apply({"params": params}, **batch)
        q = model64.apply({"params": params}, **batch, return_intermediates=True)["q"][0]
    assert int(np.sum(np.asarray(q) == 0)) > 0  # the exact-zero (mask-plane) path really runs
    _assert_close(out, ref)


@pytest.mark.parametrize(
    "method,overrides",
    [
        ("bit", {"scan_layers": True}),
        ("bipft", {"quant.estimators.rank": 2, "quant.estimators.per_head": True}),
    ],
)
def test_scanned_layers_and_estimator_variants(method, overrides):
    config = tiny_config(method, **overrides)
    model, params = init_params(config, "classification", seed=10)
    batch = _batch()
    packed = PackedModel.from_tensors(*pack_model(params, config))
    _assert_close(forward(packed, **batch), model.apply({"params": params}, **batch))


def test_weight_zeros_in_one_layer_get_a_mask_plane():
    """Zero columns (W == μ) need the mask plane; the other layers get all-ones planes. With 96
    zeros the plane (64 words) is smaller than their list (``test_packed_zeros.py``: few zeros)."""
    config = tiny_config("bibert")
    model, params = init_params(config, "classification", seed=4)
    params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"][:, 3:6] = 0.0
    tensors, manifest = pack_model(params, config)
    masks = [n for n in tensors if n.endswith(".mask")]
    assert masks == ["bert/encoder/layers/attention/self/query/kernel.mask"]
    assert tensors[masks[0]].shape[0] == config.num_layers
    batch = _batch()
    ref = model.apply({"params": params}, **batch)
    _assert_close(forward(PackedModel.from_tensors(tensors, manifest), **batch), ref)


def test_native_kernel_gives_the_same_logits():
    config = tiny_config("bipft")
    _, params = init_params(config, "classification", seed=5)
    packed = PackedModel.from_tensors(*pack_model(params, config))
    batch = _batch()
    xla = forward(packed, **batch, kernel="xla")
    for kernel in ("native", "auto"):  # auto: native when the kernels build (they do here)
        got = forward(packed, **batch, kernel=kernel)
        np.testing.assert_array_equal(np.asarray(got["logits"]), np.asarray(xla["logits"]))
    with pytest.raises(ValueError, match="kernel must be one of"):
        forward(packed, **batch, kernel="gpu")


def test_popcount_products_equal_float_dot_of_unpacked_values():
    """Integer popcount results against the float64 dot of the unpacked ±1/0 values."""
    config = tiny_config("bibert")
    _, params = init_params(config, "classification", seed=6)
    tensors, manifest = pack_model(params, config)
    packed = PackedModel.from_tensors(tensors, manifest)
    name = "bert/encoder/layer_1/intermediate/dense/kernel"
    w = packed.tensors[name]
    latent = np.asarray(params["bert"]["encoder"]["layer_1"]["intermediate"]["dense"]["kernel"])
    wq = np.asarray(quantize_weight(jnp.asarray(latent), config.quant.linear_weight))
    scale = np.asarray(packed.tensors[f"{name}.scale"])
    np.testing.assert_array_equal(np.asarray(w.unpack(np.float32)).T * scale, wq)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, w.k)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0.0  # exact zeros: the two-plane path
    w_pm1 = np.asarray(w.unpack(np.float32)).astype(np.float64)
    for xx in (x, np.where(x == 0, 1.0, x).astype(np.float32)):
        for kernel in ("xla", "native"):
            got = jax.jit(signed_matmul, static_argnums=(2,))(xx, w, kernel)
            np.testing.assert_array_equal(np.asarray(got), np.sign(xx).astype(np.float64) @ w_pm1.T)
    bits = (x > 0.3).astype(np.float32)  # unsigned {0, 1} activations against the weight
    got = jax.jit(unsigned_matmul)(bits, w)
    np.testing.assert_array_equal(np.asarray(got), bits.astype(np.float64) @ w_pm1.T)
    u = (rng.random((2, 3, 7, 40)) < 0.3).astype(np.float32)
    v = rng.standard_normal((2, 3, 4, 40)).astype(np.float32)
    v[..., :5] = 0.0
    want = u.astype(np.float64) @ np.sign(v).astype(np.float64).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(np.asarray(jax.jit(unsigned_matmul)(u, v)), want)
    q = rng.standard_normal((2, 3, 7, 40)).astype(np.float32)
    want = np.sign(q).astype(np.float64) @ np.sign(v).astype(np.float64).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(np.asarray(jax.jit(signed_matmul)(q, v)), want)
    packed_u = pack_matrix(u, with_mask=False)
    assert packed_u.signs.dtype == np.uint32 and packed_u.signs.shape[-1] == 2


def test_save_load_forward_equal_and_size_matches_estimate(tmp_path):
    config = tiny_config("bipft")
    _, params = init_params(config, "pretraining", seed=7)
    tensors, manifest = pack_model(params, config, preset="bipft", size="tiny")
    directory = save_packed_model(tmp_path / "packed", tensors, manifest)
    loaded = load_packed_model(directory)
    batch = _batch()
    a, b = forward(PackedModel.from_tensors(tensors, manifest), **batch), forward(loaded, **batch)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    estimate = packed_bytes_estimate(config, "pretraining")
    raw = packed_size_bytes(tensors)
    assert estimate["total"] == raw
    on_disk = packed_size_bytes(directory)
    header = on_disk - raw  # safetensors header + manifest only
    assert 0 < header < 64 * 1024
    assert (directory / "tensors.safetensors").stat().st_size < raw + 16 * 1024


def test_float16_storage_equals_model_on_rounded_params_and_is_smaller():
    config = tiny_config("bipft")
    model, params = init_params(config, "classification", seed=8)
    batch = _batch()
    for mode in ("pos_type", "fp"):
        tensors, manifest = pack_model(params, config, float16=mode)
        roles = manifest["tensors"]
        halves = [n for n, r in roles.items() if r["dtype"] == "float16"]
        assert halves and all(roles[n]["role"] == "fp" for n in halves)
        if mode == "pos_type":
            assert all("position_embeddings" in n or "token_type" in n for n in halves)

        def rounded(path, x, halves=halves):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            name = re.sub(r"/layer_\d+/", "/layers/", name)  # the file stacks the layers
            return x.astype(np.float16).astype(np.float32) if name in halves else x

        ref = model.apply({"params": jax.tree_util.tree_map_with_path(rounded, params)}, **batch)
        _assert_close(forward(PackedModel.from_tensors(tensors, manifest), **batch), ref)
        full = packed_size_bytes(pack_model(params, config)[0])
        assert packed_size_bytes(tensors) < full
        assert packed_bytes_estimate(config, "classification", 3, float16=mode)["total"] == (
            packed_size_bytes(tensors)
        )


def test_all_1bit_equals_model_with_binarized_position_tables():
    config = tiny_config("bibert")
    model, params = init_params(config, "classification", seed=9)
    tensors, manifest = pack_model(params, config, all_1bit=True)
    emb = params["bert"]["embeddings"]
    assert "bert/embeddings/position_embeddings/embedding.signs" in tensors
    binarized = {
        k: {
            "embedding": np.asarray(
                quantize_weight(jnp.asarray(v["embedding"]), config.quant.word_embedding)
            )
        }
        if k in ("position_embeddings", "token_type_embeddings")
        else v
        for k, v in emb.items()
    }
    ref_params = {**params, "bert": {**params["bert"], "embeddings": binarized}}
    batch = _batch()
    ref = model.apply({"params": ref_params}, **batch)
    _assert_close(forward(PackedModel.from_tensors(tensors, manifest), **batch), ref)


def test_errors_are_clear(tmp_path):
    fp = tiny_config("fp")
    _, params = init_params(fp, "classification")
    with pytest.raises(PackedModelError, match="binary preset"):
        pack_model(params, fp)
    config = tiny_config("bit", **{"quant.qkv.bits": 2})
    _, params = init_params(config, "classification")
    with pytest.raises(PackedModelError, match="qkv.bits=2"):
        pack_model(params, config)
    config = tiny_config("bibert")
    _, params = init_params(config, "classification")
    with pytest.raises(ValueError, match="float16"):
        pack_model(params, config, float16="bf16")
    tensors, manifest = pack_model(params, config)
    directory = save_packed_model(tmp_path / "m", tensors, manifest)
    data = directory / "tensors.safetensors"
    raw = data.read_bytes()
    data.write_bytes(raw[:-10])
    with pytest.raises(PackedFormatError, match="truncated"):
        load_packed_model(directory)
    data.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(PackedFormatError, match="corrupt"):
        load_packed_model(directory)
    with pytest.raises(PackedFormatError, match="not found"):
        load_packed_model(tmp_path / "nowhere")
    missing = {k: v for k, v in tensors.items() if "layers/output/dense/bias" not in k}
    manifest_missing = dict(manifest)
    manifest_missing["tensors"] = {k: v for k, v in manifest["tensors"].items() if k in missing}
    with pytest.raises(PackedFormatError, match="missing tensors"):
        PackedModel.from_tensors(missing, manifest_missing)
    with pytest.raises(PackedFormatError, match="is not a bipft-packed-model"):
        PackedModel.from_tensors(tensors, {**manifest, "kind": "bipft-binary-latent"})
