"""`model/params.py` against the trees the model really builds, for every preset."""

import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.model import params as P
from bipft_jax.model.presets import METHODS, get_model_config

LINEARS = ("attention/self/query", "attention/self/key", "attention/self/value",
           "attention/output/dense", "intermediate/dense", "output/dense")  # fmt: skip


def _names(config, head="pretraining"):
    flat = traverse_util.flatten_dict(P.abstract_params(config, head))
    return ["/".join(p) for p in P.unstack_layers(flat, config.num_layers)]


def _tiny(method, **kw):
    return get_model_config(method, "tiny", vocab_size=64, num_layers=2, **kw)


@pytest.mark.parametrize("method", METHODS)
def test_latent_weights_are_the_binarized_matrices(method):
    """Independent listing: word table (if binarized), the six linears per layer, pooler dense."""
    config = _tiny(method)
    q = config.quant
    want = set()
    if q.word_embedding.enabled:
        want.add("bert/embeddings/word_embeddings/embedding")
    if q.linear_weight.enabled:
        want |= {f"bert/encoder/layer_{i}/{m}/kernel" for i in range(2) for m in LINEARS}
    if q.pooler_quant.weight.enabled:
        want.add("bert/pooler/dense/kernel")
    names = _names(config)
    got = {n for n in names if P.tensor_role(n, config) == "latent_weight"}
    assert got == want
    assert all(P.tensor_role(n, config) in P.ROLES for n in names)
    assert all(P.param_kind(n) in P.KINDS for n in names)


def test_estimator_names_match_the_model():
    """ESTIMATORS are exactly the extra modules BiPFT adds next to query/key/value."""
    names = _names(_tiny("bipft"))
    modules = {n.split("/")[5] for n in names if "/attention/self/" in n}
    extra = {m for m in modules if m not in ("query", "key", "value") and "_quant" not in m}
    assert extra == set(P.ESTIMATORS)
    roles = {n: P.tensor_role(n, _tiny("bipft")) for n in names}
    assert {r for n, r in roles.items() if "/q_p/" in n} == {"estimator"}
    assert roles["bert/encoder/layer_0/attention/self/query_quant/alpha"] == "alpha"
    assert roles["bert/encoder/layer_0/attention/output/dense/input_quant/shift/bias"] == "beta"
    assert roles["predictions/transform_dense/kernel"] == "fp"


@pytest.mark.parametrize("method", ("bibert", "bit", "bipft"))
def test_student_only_is_what_the_fp_model_lacks(method):
    fp, student = set(_names(_tiny("fp"))), _names(_tiny(method))
    assert {n for n in student if P.student_only(n)} == set(student) - fp
    assert not any(P.student_only(n) for n in fp)


def test_ffn_out_uses_its_own_input_binarizer():
    config = _tiny("bit")  # unsigned FFN-out input, signed elsewhere
    assert P.dense_quant("bert/encoder/layer_1/output/dense/kernel", config) == config.quant.ffn_out
    for m in LINEARS[:-1]:
        assert P.dense_quant(f"encoder/layer/{m}/kernel", config) == config.quant.linear
    assert P.dense_quant("pooler/dense/kernel", config) == config.quant.pooler_quant
    with pytest.raises(P.ParamsError, match="not a binarizable linear"):
        P.dense_quant("encoder/layer_0/attention/self/q_p/kernel", config)


def test_stack_unstack_round_trip_and_shape_check():
    config = _tiny("bipft", scan_layers=True)
    flat = traverse_util.flatten_dict(P.abstract_params(config))
    arrays = {p: np.random.default_rng(0).normal(size=v.shape) for p, v in flat.items()}
    split = P.unstack_layers(arrays, 2)
    assert ("encoder", "layer_1", "output", "dense", "kernel") in split
    back = P.stack_layers(split, 2)
    assert back.keys() == arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    with pytest.raises(P.ParamsError, match="leading layer axis of 3"):
        P.unstack_layers(arrays, 3)
