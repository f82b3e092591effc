"""MLM on gathered masked positions equals the loss over all positions."""

import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax.losses import mlm_loss
from bipft_jax.losses.core import IGNORE_INDEX, select_masked
from bipft_jax.model.bert import BertForPreTraining
from bipft_jax.model.presets import get_model_config


def _labels(rng, b, length, vocab, counts):
    labels = np.full((b, length), IGNORE_INDEX, np.int32)
    for row, k in enumerate(counts):
        pos = rng.choice(length, size=k, replace=False)
        labels[row, pos] = rng.integers(0, vocab, size=k)
    return labels


def test_select_masked_positions_in_order_and_padding():
    rng = np.random.default_rng(0)
    labels = _labels(rng, 4, 32, 100, [5, 0, 3, 7])
    pos, picked = select_masked(jnp.asarray(labels), 7)
    pos, picked = np.asarray(pos), np.asarray(picked)
    for row in range(4):
        want = np.flatnonzero(labels[row] != IGNORE_INDEX)
        np.testing.assert_array_equal(pos[row, : len(want)], want)
        np.testing.assert_array_equal(picked[row, : len(want)], labels[row, want])
        assert (picked[row, len(want) :] == IGNORE_INDEX).all()
        assert (pos[row, len(want) :] == 0).all()


def test_gathered_mlm_loss_equals_all_positions_loss():
    cfg = get_model_config("bipft", "tiny", vocab_size=200)
    model = BertForPreTraining(cfg)
    rng = np.random.default_rng(1)
    b, length = 3, 24
    ids = jnp.asarray(rng.integers(1, 200, (b, length)), jnp.int32)
    mask = jnp.ones((b, length), jnp.int32).at[2, 18:].set(0)
    labels = jnp.asarray(_labels(rng, b, length, 200, [4, 1, 3]))
    params = model.init(jax.random.key(0), ids, mask)["params"]
    full = model.apply({"params": params}, ids, mask)
    ref_loss, ref_acc = mlm_loss(full["mlm_logits"], labels)
    pos, picked = select_masked(labels, 5)
    part = model.apply({"params": params}, ids, mask, masked_positions=pos)
    assert part["mlm_logits"].shape == (b, 5, 200)
    loss, acc = mlm_loss(part["mlm_logits"], picked)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(float(acc), float(ref_acc), rtol=1e-6)

    # Gradients agree too.
    def f(p, gather):
        if gather:
            out = model.apply({"params": p}, ids, mask, masked_positions=pos)
            return mlm_loss(out["mlm_logits"], picked)[0]
        return mlm_loss(model.apply({"params": p}, ids, mask)["mlm_logits"], labels)[0]

    g1, g2 = jax.grad(f)(params, True), jax.grad(f)(params, False)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-7)
