"""`quant.table_storage`: position/token-type lookups use 16-bit-rounded tables, gradients pass
straight through, and `bipft stats` counts 2 bytes per entry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.model import stats
from bipft_jax.model.bert import BertModel
from bipft_jax.model.presets import get_model_config

TABLES = ("position_embeddings", "token_type_embeddings")


def _cfg(storage: str):
    return get_model_config("bibert", "tiny", vocab_size=300, hidden_dropout=0.0,
                            attention_dropout=0.0, quant={"table_storage": storage})  # fmt: skip


def _rounded(params, dtype):
    """NumPy reference: the FP32 params with the two tables rounded to `dtype`."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    for k, v in flat.items():
        if any(t in k for t in TABLES):
            flat[k] = np.asarray(jnp.asarray(v).astype(dtype).astype(np.float32))
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_lookup_equals_fp32_model_on_rounded_tables_and_gradient_is_straight_through(storage):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 300, size=(2, 16)), jnp.int32)
    types = jnp.asarray(rng.integers(0, 2, size=(2, 16)), jnp.int32)
    m16, m32 = BertModel(_cfg(storage)), BertModel(_cfg("float32"))
    params = nn.unbox(m32.init(jax.random.key(1), ids)["params"])
    params = jax.tree.map(lambda x: x * 37.0 if x.ndim == 2 else x, params)  # tables off the grid
    ref_params = _rounded(params, storage)
    changed = traverse_util.flatten_dict(params)[("embeddings", "position_embeddings", "embedding")]
    assert not np.array_equal(
        np.asarray(changed), ref_params["embeddings"]["position_embeddings"]["embedding"]
    )

    def loss(model, p):
        out = model.apply({"params": p}, ids, token_type_ids=types)["last_hidden_state"]
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    np.testing.assert_array_equal(
        np.asarray(m16.apply({"params": params}, ids, token_type_ids=types)["last_hidden_state"]),
        np.asarray(
            m32.apply({"params": ref_params}, ids, token_type_ids=types)["last_hidden_state"]
        ),
    )
    g16 = traverse_util.flatten_dict(jax.grad(lambda p: loss(m16, p))(params))
    g32 = traverse_util.flatten_dict(jax.grad(lambda p: loss(m32, p))(ref_params))
    for k in g16:
        np.testing.assert_allclose(np.asarray(g16[k]), np.asarray(g32[k]), rtol=1e-6, atol=1e-7)


def test_stats_count_two_bytes_per_table_entry_and_bad_value_is_named():
    r32 = stats.size_report(get_model_config("bibert", "base"))
    r16 = stats.size_report(get_model_config("bibert", "base", quant={"table_storage": "float16"}))
    entries = (512 + 2) * 768
    assert (r32["packed_mib"] - r16["packed_mib"]) * stats.MIB == pytest.approx(2 * entries)
    with pytest.raises(ValueError, match="quant.table_storage"):
        get_model_config("bibert", "tiny", quant={"table_storage": "int8"})
