"""`padding_idx`: the [PAD] row of the word embedding gets no gradient from lookups (torch)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax.model.bert import BertForPreTraining, BertModel
from bipft_jax.model.embeddings import stop_pad_gradient
from bipft_jax.model.presets import get_model_config

torch = pytest.importorskip("torch")
SIZES = dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def _ids(seed=0):
    ids = np.random.default_rng(seed).integers(1, 50, (2, 7)).astype(np.int32)
    ids[:, 5:] = 0  # padding
    ids[0, 2] = 0
    return ids


@pytest.mark.parametrize("pad", [0, 3])
def test_lookup_gradient_matches_torch_padding_idx(pad):
    rng = np.random.default_rng(1)
    table, ids = rng.normal(size=(50, 4)).astype(np.float32), _ids()
    ids[1, 1] = 3
    upstream = rng.normal(size=(*ids.shape, 4)).astype(np.float32)
    ours = jax.grad(
        lambda w: jnp.sum(upstream * stop_pad_gradient(jnp.take(w, ids, axis=0), ids, pad))
    )(jnp.asarray(table))
    w = torch.tensor(table, requires_grad=True)
    emb = torch.nn.functional.embedding(torch.tensor(ids, dtype=torch.long), w, padding_idx=pad)
    (emb * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(np.asarray(ours), w.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert not np.any(np.asarray(ours)[pad]) and np.any(np.asarray(ours)[ids[0, 0]])


@pytest.mark.parametrize("method", ["fp", "bit", "bibert"])
def test_model_pad_row_frozen_forward_unchanged(method):
    ids = jnp.asarray(_ids(2))
    mask = (ids != 0).astype(jnp.int32).at[0, 2].set(1)
    on = get_model_config(method, "tiny", **SIZES)
    assert on.padding_idx == 0  # the default is the references' behaviour
    off = dataclasses.replace(on, padding_idx=None)
    params = BertModel(on).init(jax.random.PRNGKey(0), ids)["params"]

    def grads(cfg):
        def loss(p):
            out = BertModel(cfg).apply({"params": p}, ids, mask)
            return jnp.sum(out["last_hidden_state"] ** 2), out["last_hidden_state"]

        return jax.grad(loss, has_aux=True)(params)

    (g_on, h_on), (g_off, h_off) = grads(on), grads(off)
    np.testing.assert_array_equal(np.asarray(h_on), np.asarray(h_off))
    table_on = np.asarray(jax.tree.leaves(g_on["embeddings"]["word_embeddings"])[0])
    table_off = np.asarray(jax.tree.leaves(g_off["embeddings"]["word_embeddings"])[0])
    assert not np.any(table_on[0]) and np.any(table_off[0])
    np.testing.assert_allclose(table_on[1:], table_off[1:], rtol=1e-6, atol=1e-7)


def test_tied_mlm_decoder_still_trains_the_pad_row():
    cfg = get_model_config("bipft", "tiny", **SIZES)
    ids = jnp.asarray(_ids(3))
    model = BertForPreTraining(cfg)
    params = model.init(jax.random.PRNGKey(1), ids)["params"]
    g = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids)["mlm_logits"][..., 0]))(params)
    table = np.asarray(jax.tree.leaves(g["bert"]["embeddings"]["word_embeddings"])[0])
    assert np.any(table[0])  # as torch: padding_idx only affects the lookup


def test_bad_padding_idx():
    with pytest.raises(ValueError, match="padding_idx"):
        get_model_config("fp", "tiny", padding_idx=30522)
