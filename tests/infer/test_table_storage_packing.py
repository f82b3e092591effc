"""A model trained with ``quant.table_storage="float16"`` packs its position/type tables in fp16
by default, and the packed forward equals that model's own fake-quant forward (no rounding
error left: the model already looks the tables up rounded)."""

import jax
import numpy as np
import pytest

from bipft_jax.infer.fileformat import packed_size_bytes
from bipft_jax.infer.packed_forward import packed_forward
from bipft_jax.infer.packed_model import PackedModel, pack_model, packed_bytes_estimate
from tests.export.helpers import init_params, random_batch, tiny_config


@pytest.mark.parametrize("method", ["bibert", "bipft"])
def test_fp16_tables_are_default_and_exact(method):
    config = tiny_config(method, quant={"table_storage": "float16"})
    model, params = init_params(config, "classification", seed=11)
    params = jax.tree.map(lambda x: x * 30.0 if x.ndim == 2 else x, params)  # off the fp16 grid
    tensors, manifest = pack_model(params, config)
    assert manifest["float16"] == "pos_type"
    halves = sorted(n for n, r in manifest["tensors"].items() if r["dtype"] == "float16")
    assert halves and all("position_embeddings" in n or "token_type" in n for n in halves)
    batch = random_batch(seed=2)
    # Both sides jitted: x30 weights put some BiBERT bool-attention scores on a knife edge where
    # eager and jitted float rounding (the erf GELU) already pick different signs.
    ref = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"])  # fmt: skip
    got = jax.jit(packed_forward)(PackedModel.from_tensors(tensors, manifest), **batch)
    np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(ref["logits"]), atol=1e-4,
                               rtol=0)  # fmt: skip
    fp32 = pack_model(params, config, float16="none")[0]
    saved = packed_size_bytes(fp32) - packed_size_bytes(tensors)
    assert saved == 2 * (config.max_position + config.type_vocab_size) * config.hidden_size
    est = packed_bytes_estimate(config, "classification", 3)["total"]
    assert est == packed_size_bytes(tensors)
