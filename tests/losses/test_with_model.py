"""On the real model: BiPFT student vs FP teacher, every loss term, one optimizer step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import bipft_jax.presets.bipft as bipft_preset
from bipft_jax.losses import bipft_pretrain_loss
from bipft_jax.model.bert import BertForPreTraining
from bipft_jax.model.config import BertConfig, from_config_dict
from bipft_jax.train.optim import make_optimizer, param_labels

SIZES = dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_pretrain_loss_and_step_on_tiny_bipft_model():
    preset = bipft_preset.get_config()
    preset.update(SIZES)
    student, teacher = (
        BertForPreTraining(from_config_dict(preset)),
        BertForPreTraining(BertConfig(**SIZES)),
    )
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 64, (2, 8)))
    mask = jnp.ones((2, 8), jnp.int32).at[1, 5:].set(0)
    labels = np.full((2, 8), -100)
    labels[0, 2], labels[1, 1] = 7, 9
    batch = {
        "mlm_labels": jnp.asarray(labels),
        "next_sentence_label": jnp.array([0, 1]),
        "attention_mask": mask,
    }
    params = nn.meta.unbox(student.init(jax.random.key(0), ids, mask)["params"])
    t_out = teacher.apply(
        teacher.init(jax.random.key(1), ids, mask), ids, mask, return_intermediates=True
    )
    weights = {"mlm_kd": 1.0, "attn": 1.0, "dmd": 1.0}

    @jax.jit
    def loss_fn(p):
        s_out = student.apply({"params": p}, ids, mask, return_intermediates=True)
        return bipft_pretrain_loss(s_out, t_out, batch, weights)

    (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    assert set(weights) | {"mlm", "nsp", "nsp_kd", "hidden"} <= set(parts)
    assert all(np.isfinite(float(v)) for v in parts.values())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

    labels_tree = param_labels(params)
    flat_labels = dict(jax.tree_util.tree_leaves_with_path(labels_tree))
    assert "alpha" in flat_labels.values() and "no_decay" in flat_labels.values()
    tx = make_optimizer(
        {"lr": 1e-3, "alpha_lr": 1e-4, "schedule": "constant", "weight_decay": 0.01}
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # Adam's first step moves every leaf with a nonzero grad by ≈ its group's lr.
    flat_grads = dict(jax.tree_util.tree_leaves_with_path(grads))
    n_alpha = 0
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        if flat_labels[path] == "alpha" and float(jnp.abs(flat_grads[path]).max()) > 1e-6:
            np.testing.assert_allclose(jnp.abs(u), 1e-4, rtol=1e-2)
            n_alpha += 1
    assert n_alpha > 0
