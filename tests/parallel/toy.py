"""A toy Flax Linen model whose params carry logical axis names (stand-in for BERT)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bipft_jax.parallel import state_shardings

VOCAB, EMBED, MLP, HEADS, KV = 32, 16, 32, 4, 4


def _init(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(0.3), axes)


class ToyMLP(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        emb = self.param("embedding", _init(("vocab", "embed")), (VOCAB, EMBED))
        x = jnp.take(emb, tokens, axis=0)
        wq = self.param("q", _init(("embed", "heads", None)), (EMBED, HEADS, KV))
        wo = self.param("o", _init(("heads", None, "embed")), (HEADS, KV, EMBED))
        h = jnp.tanh(jnp.einsum("ble,ehk->blhk", x, wq))
        x = x + jnp.einsum("blhk,hke->ble", h, wo)
        h = nn.Dense(
            MLP,
            kernel_init=_init(("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1), ("mlp",)),
        )(x)
        x = x + nn.Dense(EMBED, kernel_init=_init(("mlp", "embed")), use_bias=False)(nn.gelu(h))
        return x @ emb.T  # tied output layer -> (batch, length, vocab)


def loss_fn(params, batch):
    logits = ToyMLP().apply({"params": params}, batch["tokens"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def init_params(rng, tokens):
    return ToyMLP().init(rng, tokens)["params"]


def make_batch(seed: int, batch: int = 16, length: int = 8):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "tokens": jax.random.randint(k1, (batch, length), 0, VOCAB),
        "labels": jax.random.randint(k2, (batch, length), 0, VOCAB),
    }


def born_sharded(init_fn, mesh, rules, *args):
    """``init_fn(*args)`` jitted straight into the shardings its logical names give (boxed)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = state_shardings(jax.eval_shape(init_fn, *args), mesh, rules)
        return jax.jit(init_fn, out_shardings=shardings)(*args)
