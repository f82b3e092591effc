"""A packed model closed over by the caller's ``jit`` (its tensors compile-time constants) still
gives the fake-quant model's logits bit for bit.

With α_q, α_k constant, XLA folded the scores' ``(n·α_qα_k)·(1/√d)`` into ``n·(α_qα_k/√d)``:
one rounding instead of the fake-quant model's two (its α are runtime params), so the softmax
moved by an ulp and a probability next to ``α_p/2`` binarized differently (a trained BiT model
flipped a dev prediction). Here α_p is set so that the two roundings of one probability fall on
either side of the threshold.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.infer.packed_forward import packed_forward
from bipft_jax.infer.packed_model import PackedModel, pack_model
from bipft_jax.model.attention import mask_bias
from bipft_jax.quant import ALPHA_MIN
from bipft_jax.quant.product import combined_scale
from tests.export.helpers import init_params, random_batch, tiny_config


def _folded_probs(q, k, alpha_q, alpha_k, bias, head_dim):
    """Layer-0 softmax with α_q α_k as compile-time constants (the folding the packed path was
    exposed to); ``q``, ``k`` [B, heads, L, d] pre-sign."""
    dots = jnp.einsum("bhqd,bhkd->bhqk", jnp.sign(q), jnp.sign(k))  # small integers: exact
    scale = combined_scale([alpha_q, alpha_k])
    fn = lambda n, b: jax.nn.softmax(n * scale / math.sqrt(head_dim) + b, axis=-1)
    return np.asarray(jax.jit(fn)(dots, bias))


def _alpha_between(lo: np.float32, hi: np.float32) -> np.float32 | None:
    """An α with ``round(lo/α) = 0`` and ``round(hi/α) = 1``, whether the quotient is a true
    division or (as XLA:CPU computes it) a multiply by ``1/α``."""
    alpha = np.float32(lo + hi)
    for step in range(-64, 65):
        a = alpha
        for _ in range(abs(step)):
            a = np.nextafter(a, np.float32(np.sign(step) * np.inf), dtype=np.float32)
        r = np.float32(1) / a
        if (
            np.round(lo / a) == 0
            and np.round(lo * r) == 0
            and np.round(hi / a) == 1
            and np.round(hi * r) == 1
        ):
            return a
    return None


def test_closed_over_packed_model_equals_fake_quant_at_a_probability_tie():
    config = tiny_config("bit", hidden_size=64, num_heads=2, intermediate_size=128)
    model, params = init_params(config, "classification", seed=2)
    batch = {k: jnp.asarray(v) for k, v in random_batch(seed=4).items()}
    fake = jax.jit(lambda p, b: model.apply({"params": p}, **b, return_intermediates=True))
    inter = fake(params, batch)
    attn = params["bert"]["encoder"]["layer_0"]["attention"]["self"]
    a_q, a_k = (np.maximum(attn[f"{n}_quant"]["alpha"], ALPHA_MIN) for n in ("query", "key"))
    bias = mask_bias(batch["attention_mask"])
    p_fake = np.asarray(inter["attention_probs"][0])
    p_fold = _folded_probs(inter["q"][0], inter["k"][0], a_q, a_k, bias, config.head_dim)
    differ = np.argwhere((p_fake != p_fold) & (np.asarray(bias) == 0))
    if not len(differ):
        pytest.skip("this XLA does not fold constant scales into the 1/sqrt(d) multiply")
    alpha_p = None
    for idx in map(tuple, differ):
        lo, hi = sorted((p_fake[idx], p_fold[idx]))
        alpha_p = _alpha_between(lo, hi)
        if alpha_p is not None:
            break
    assert alpha_p is not None
    attn["probs_quant"]["alpha"] = np.asarray(alpha_p, np.float32)

    ref = jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch)
    packed = PackedModel.from_tensors(*pack_model(params, config))
    closed = jax.jit(lambda b: packed_forward(packed, **b))(batch)  # tensors are constants
    passed = jax.jit(lambda m, b: packed_forward(m, **b))(packed, batch)
    for out in (closed, passed):
        for key in ("last_hidden_state", "pooled", "logits"):
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]), err_msg=key)
