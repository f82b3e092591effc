"""Per preset: layer vs a NumPy reference, binary matmul inputs, gradients; bf16 BERT-base."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.model.attention import mask_bias
from bipft_jax.model.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from bipft_jax.model.config import from_config_dict, to_dict
from bipft_jax.model.encoder import BertLayer
from bipft_jax.model.presets import get_model_config
from bipft_jax.quant import calibrate_alphas, quantize_weight
from tests.model import reference_np

ESTIMATORS = ("q_p", "k_p", "q_m", "k_m", "v_p")
PRESETS = ("fp", "bibert", "bit", "bipft")
SMALL = dict(vocab_size=61, hidden_size=24, num_heads=3, intermediate_size=40, max_position=16)


def _perturb(params, seed):
    """Move every parameter away from its init (β ≠ 0, random α, random estimators)."""
    flat = traverse_util.flatten_dict(nn.unbox(params))
    rng = np.random.default_rng(seed)
    out = {}
    for path, v in flat.items():
        v = np.asarray(v, np.float32)
        if path[-1] == "alpha":
            v = v * rng.uniform(0.6, 1.4)
        elif path[-1] == "scale":
            v = v + 0.2 * rng.standard_normal(v.shape)
        else:
            v = v + 0.3 * rng.standard_normal(v.shape)
        out[path] = v.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def _batch(seed=0, b=2, length=7, vocab=61):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[1, 5:] = 0
    return ids, mask


CASES = [(p, False, 1) for p in PRESETS] + [("bipft", True, 2), ("bipft", False, 3)]


@pytest.mark.parametrize("preset,per_head,rank", CASES)
def test_layer_matches_numpy_reference(preset, per_head, rank):
    cfg = get_model_config(
        preset,
        "tiny",
        num_layers=1,
        **SMALL,
        **{"quant.estimators.per_head": per_head, "quant.estimators.rank": rank},
    )
    rng = np.random.default_rng(1)
    h = rng.standard_normal((2, 7, 24)).astype(np.float32)
    keep = np.ones((2, 7), np.int32)
    keep[0, 4:] = 0
    layer = BertLayer(cfg)
    params = layer.init(jax.random.key(0), h, mask_bias(keep))["params"]
    params = _perturb(params, seed=2)
    out, _ = layer.apply({"params": params}, h, mask_bias(keep))
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    ref = reference_np.bert_layer(p64, h.astype(np.float64), keep, cfg)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-4, rtol=0)


def _random_calibrated(model, ids, mask, seed):
    """Random weights, then every α re-initialised from the data it now sees (forward order)."""
    variables = model.init(jax.random.key(0), ids, mask)
    params = {"params": _perturb(variables["params"], seed)}
    return nn.unbox(calibrate_alphas(model, params, ids, mask)["params"])


def _act_cfg(spec, name):
    """The ActQuant of the quantizer module at `name` (independent of the model's wiring)."""
    if name.endswith(("query_quant", "key_quant", "value_quant")):
        return spec.qkv
    if name.endswith("probs_quant"):
        return spec.probs
    if name.startswith("bert/pooler"):
        return spec.pooler_quant.input
    if name.endswith("/output/dense/input_quant") and "/attention/" not in name:
        return spec.ffn_out_input
    return spec.linear_input


def _quantizer_outputs(preset):
    cfg = get_model_config(preset, "tiny", num_layers=2, **SMALL)
    model = BertForPreTraining(cfg)
    ids, mask = _batch()
    params = _random_calibrated(model, ids, mask, seed=3)
    _, state = model.apply(
        {"params": params}, ids, mask, capture_intermediates=True, mutable=["intermediates"]
    )
    inter = traverse_util.flatten_dict(state["intermediates"])
    flat_params = traverse_util.flatten_dict(params)
    found = {}
    for path, value in inter.items():
        module = path[:-1]
        fp_only = module[:1] != ("bert",) or set(module) & set(ESTIMATORS)  # FP heads/estimators
        if module and not fp_only and module[-1].endswith("_quant"):
            alpha = flat_params.get((*module, "alpha"))
            out = getattr(value[0], "value", value[0])  # a Quantized when the layer asks for parts
            found["/".join(module)] = (np.asarray(out), alpha)
    return cfg, params, found


@pytest.mark.parametrize("preset", ["bibert", "bit", "bipft"])
def test_binary_matmul_inputs_take_two_values(preset):
    cfg, params, found = _quantizer_outputs(preset)
    # 2 layers x (q,k,v,o,ffn-in,ffn-out inputs + q,k,v + probs) + pooler input
    assert len(found) == 2 * 10 + 1, sorted(found)
    for name, (values, alpha) in found.items():
        scale = 1.0 if alpha is None else float(alpha)
        uniq = np.unique(values)
        signed = _act_cfg(cfg.quant, name).method in ("sign", "elastic_signed")
        levels = {-scale, scale} if signed else {0.0, scale}
        np.testing.assert_allclose(
            sorted(set(uniq.tolist()) - {0.0} if signed else uniq.tolist()),
            sorted(levels - {0.0} if signed else levels),
            rtol=1e-6,
            err_msg=name,
        )
        if name.endswith("attention/output/dense/input_quant") and cfg.quant.attention == "bool":
            # BiBERT's context bool(A)·sign(V) holds integer counts; sign(0) = 0 exactly where a
            # count is 0 (the reference's ternary ties, methods.md §3.1).
            layer = name.split("/")[2]
            pb = found[f"bert/encoder/{layer}/attention/self/probs_quant"][0]
            vb = found[f"bert/encoder/{layer}/attention/self/value_quant"][0]
            b, length, _ = vb.shape
            vb = vb.reshape(b, length, cfg.num_heads, -1)
            context = np.einsum("bhqk,bkhd->bqhd", pb, vb).reshape(values.shape)
            np.testing.assert_array_equal(values == 0, context == 0)
        elif signed:  # sign(0) = 0 only at exact zeros, which random inputs do not produce
            assert np.mean(values == 0) < 0.01, name
    # weights: two values per scale (per tensor, per row of the embedding, per column for BiBERT)
    flat = traverse_util.flatten_dict(params)
    for path, w in flat.items():
        if path[-1] != "kernel" or path[0] != "bert":
            continue
        wq = np.asarray(quantize_weight(jnp.asarray(w), cfg.quant.linear_weight))
        cols = wq.T if cfg.quant.linear_weight.method == "bibert" else wq.reshape(1, -1)
        for col in cols:
            assert len(np.unique(col)) == 2 and np.allclose(np.unique(col), [-col.max(), col.max()])
    table = flat[("bert", "embeddings", "word_embeddings", "embedding")]
    tq = np.asarray(quantize_weight(jnp.asarray(table), cfg.quant.word_embedding))
    for row in tq:
        assert len(np.unique(row)) <= 2 and np.allclose(np.abs(row), np.abs(row).max())


@pytest.mark.parametrize("preset", PRESETS)
def test_gradients_reach_every_parameter(preset):
    cfg = get_model_config(preset, "tiny", num_layers=1, **SMALL)
    model = BertForPreTraining(cfg)
    ids, mask = _batch()
    params = _random_calibrated(model, ids, mask, seed=5)
    w_mlm = jax.random.normal(jax.random.key(1), (2, 7, 61))

    def loss(p):
        out = model.apply(
            {"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(2)}
        )
        return jnp.sum(out["mlm_logits"] * w_mlm) + jnp.sum(out["nsp_logits"] ** 2)

    grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(params))
    assert grads
    for path, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        if path[-2:] in (("k_p", "bias"), ("k_m", "bias")):
            # A bias on r_k or m_k adds the same m_q·c + r_q·c to every key of a query: softmax
            # is invariant to it, so its gradient is 0 up to rounding.
            kernel = np.asarray(grads[(*path[:-1], "kernel")])
            assert np.max(np.abs(g)) <= 1e-5 * np.max(np.abs(kernel)), path
            continue
        assert np.any(g != 0), f"zero gradient for {'/'.join(path)}"
    names = {"/".join(p) for p in grads}
    if preset in ("bit", "bipft"):
        assert any(n.endswith("probs_quant/alpha") for n in names)
        assert any(n.endswith("input_quant/shift/bias") for n in names)
    if preset == "bipft":
        assert sum(n.endswith(("q_p/kernel", "v_p/kernel")) for n in names) == 2


def test_classifier_and_regression_heads():
    cfg = get_model_config("bit", "tiny", num_layers=1, **SMALL)
    ids, mask = _batch()
    for labels in (3, 1):
        model = BertForSequenceClassification(cfg, num_labels=labels)
        v = model.init(jax.random.key(0), ids, mask)
        out = model.apply(v, ids, mask)
        assert out["logits"].shape == (2, labels)
        assert nn.unbox(v["params"])["classifier"]["kernel"].shape == (24, labels)


@pytest.mark.parametrize("preset", ["fp", "bipft"])
def test_scan_and_remat_match_unrolled(preset):
    base = dict(num_layers=2, **SMALL)
    cfg = get_model_config(preset, "tiny", **base)
    ids, mask = _batch()
    model = BertModel(cfg)
    params = _perturb(model.init(jax.random.key(0), ids, mask)["params"], 7)
    ref = model.apply({"params": params}, ids, mask, return_intermediates=True)
    enc = params["encoder"]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), enc["layer_0"], enc["layer_1"])
    scan_params = {**params, "encoder": {"layer": stacked}}
    scan_cfg = get_model_config(preset, "tiny", scan_layers=True, remat=True, **base)
    scan_model = BertModel(scan_cfg)
    shapes = jax.eval_shape(scan_model.init, jax.random.key(0), ids, mask)["params"]
    assert jax.tree.map(np.shape, nn.unbox(shapes)) == jax.tree.map(np.shape, scan_params)
    out = scan_model.apply({"params": scan_params}, ids, mask, return_intermediates=True)
    for key in ("last_hidden_state", "pooled"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5)
    for key in ("hidden_states", "q", "attention_probs"):
        for a, b in zip(out[key], ref[key], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert ref["q"][0].shape == (2, 3, 7, 8) and ref["attention_scores"][1].shape == (2, 3, 7, 7)


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="divisible"):
        get_model_config("fp", "tiny", num_heads=3)
    with pytest.raises(ValueError, match="quant.attention"):
        get_model_config("fp", "tiny", **{"quant.attention": "linear"})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) in 'quant.estimators'"):
        get_model_config("bipft", "tiny", **{"quant.estimators.rnk": 2})
    with pytest.raises(ValueError, match="unknown method preset"):
        get_model_config("bibit", "tiny")


def test_bf16_bert_base_forward_on_cpu():
    # scan_layers keeps the compile to one layer; init runs the (data-dependent) forward once
    cfg = get_model_config("bipft", "base", dtype="bfloat16", scan_layers=True)
    model = BertModel(cfg)
    ids = np.random.default_rng(0).integers(0, 30522, (1, 32)).astype(np.int32)
    out, variables = jax.jit(model.init_with_output)(jax.random.key(0), ids)
    leaves = jax.tree.leaves(nn.unbox(variables["params"]))
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert sum(x.size for x in leaves) == 109_613_749  # BERT-base + estimators, α, β, pooler LN
    assert out["last_hidden_state"].dtype == jnp.bfloat16
    assert out["last_hidden_state"].shape == (1, 32, 768)
    assert np.all(np.isfinite(np.asarray(out["pooled"], np.float32)))


def test_config_dict_round_trip():
    cfg = get_model_config("bipft", "mini", dtype="bfloat16", **{"quant.estimators.rank": 2})
    assert from_config_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg)["dtype"] == "bfloat16"
