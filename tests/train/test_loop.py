"""`bipft_jax.train.loop`: gradient accumulation equals one full-batch step; shardings; RNG."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bipft_jax.losses import mlm_loss, nsp_loss
from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
from bipft_jax.quant import with_numel_multiplier
from bipft_jax.train.loop import (
    init_train_state,
    jit_step,
    make_train_step,
    step_rng,
)
from bipft_jax.train.optim import make_optimizer
from tests.train.tiny import random_batch, tiny_model


def _setup(method: str, k: int, mesh_shape=None, rules="dp", tx=None):
    model = tiny_model(method)
    model = model.clone(config=with_numel_multiplier(model.config, k))
    batch = random_batch(0)

    def init(rng):
        return model.init(rng, batch["input_ids"][:2])["params"]

    def loss_fn(params, b, rng):
        out = model.apply({"params": params}, b["input_ids"], b["attention_mask"],
                          b["token_type_ids"], deterministic=True)  # fmt: skip
        mlm, acc = mlm_loss(out["mlm_logits"], b["mlm_labels"])
        nsp, _ = nsp_loss(out["nsp_logits"], b["next_sentence_label"])
        return mlm + nsp, {"mlm": mlm, "mlm_acc": acc}

    tx = tx or make_optimizer({"lr": 1e-3, "schedule": "constant", "clip_norm": 1.0})
    mesh = make_mesh(mesh_shape or {"data": 1}, jax.devices()[: 1 if mesh_shape is None else 8])
    r = get_rules(rules)
    state, sh = init_train_state(init, tx, mesh, r, jax.random.PRNGKey(1))
    step = jit_step(make_train_step(loss_fn, tx, k), mesh, r, sh)
    return state, step, batch, mesh


@pytest.mark.parametrize("method", ["fp", "bipft"])
def test_grad_accumulation_matches_full_batch(method):
    """k=4 micro-batches of 2 == one batch of 8. With SGD(lr=1) the param change IS the
    gradient, so every gradient element is compared (rtol 1e-4, atol 1e-7: float32 summation
    order is the only difference; Adam would amplify noise on near-zero gradients)."""
    runs = {}
    for k in (1, 4):
        state, step, _, mesh = _setup(method, k, tx=optax.sgd(1.0))
        state, m = step(state, shard_host_batch(random_batch(0), mesh))
        runs[k] = (jax.device_get(state.params), {kk: float(v) for kk, v in m.items()})
    p1, m1 = runs[1]
    p4, m4 = runs[4]
    # FP: only float32 summation order differs. Binary: a rounding-level difference in a
    # pre-sign activation (XLA tiles a batch-2 and a batch-8 matmul differently) can flip a
    # sign, so a few elements may differ more; we then require 99.5% of every gradient's
    # elements and the loss to agree (measured: loss rel. diff ~1e-3 at worst).
    exact = method == "fp"
    for key in ("loss", "mlm", "mlm_acc", "grad_norm"):
        np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5 if exact else 2e-3, err_msg=key)
    flat1 = jax.tree_util.tree_flatten_with_path(p1)[0]
    for (path, a), b in zip(flat1, jax.tree.leaves(p4), strict=True):
        name = jax.tree_util.keystr(path)
        if exact:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7, err_msg=name)
        else:
            close = np.isclose(b, a, rtol=1e-3, atol=1e-6)
            assert close.mean() >= 0.995, (name, close.mean())
    # the quantizer scales did move, so the alpha gradient was exercised
    if method == "bipft":
        state0, *_ = _setup(method, 1)
        alphas = [
            (jax.tree_util.keystr(p), a)
            for p, a in jax.tree_util.tree_flatten_with_path(jax.device_get(state0.params))[0]
            if "alpha" in jax.tree_util.keystr(p)
        ]
        assert alphas
        moved = [
            name for name, a in alphas
            if not np.allclose(a, _get(p1, name))
        ]  # fmt: skip
        assert moved


def _get(tree, keystr):
    for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.tree_util.keystr(p) == keystr:
            return a
    raise KeyError(keystr)


def test_without_numel_multiplier_alpha_gradient_is_off_by_sqrt_k():
    """The mean of 4 micro-batch gradients of an LSQ alpha is sqrt(4) x the full-batch one when
    numel_multiplier stays 1: the multiplier route above is what makes accumulation exact."""
    model = tiny_model("bipft")  # numel_multiplier = 1
    batch = random_batch(0)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), batch["input_ids"][:2]))
    params = params["params"]

    @jax.jit
    def grad(p, b):
        def loss(p):
            out = model.apply({"params": p}, b["input_ids"], b["attention_mask"],
                              b["token_type_ids"])  # fmt: skip
            return mlm_loss(out["mlm_logits"], b["mlm_labels"])[0]

        return jax.grad(loss)(p)

    name = "['bert']['encoder']['layer_0']['intermediate']['dense']['input_quant']['alpha']"
    full = _get(grad(params, batch), name)
    micro = [jax.tree.map(lambda x, i=i: x[2 * i : 2 * i + 2], batch) for i in range(4)]
    mean = np.mean([_get(grad(params, b), name) for b in micro], axis=0)
    np.testing.assert_allclose(mean, 2.0 * full, rtol=1e-4)


def test_step_rng_depends_only_on_seed_and_step():
    a = step_rng(3, jnp.int32(7))
    assert np.array_equal(a, step_rng(3, jnp.int32(7)))
    assert not np.array_equal(a, step_rng(3, jnp.int32(8)))
    assert not np.array_equal(a, step_rng(4, jnp.int32(7)))


def test_opt_state_sharded_like_params_under_fsdp():
    state, _, _, _ = _setup("fp", 1, {"fsdp": 8}, "fsdp")
    emb = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert "fsdp" in str(emb.sharding.spec)
    mus = [
        x for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
        if x.shape == emb.shape
    ]  # fmt: skip
    assert mus and all(m.sharding.spec == emb.sharding.spec for m in mus)


def test_indivisible_micro_batch_is_a_clear_error():
    state, step, _, mesh = _setup("fp", 3)
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        step(state, shard_host_batch(random_batch(0), mesh))


def _contiguous_split(batch, k):  # the old split: micro-batch j = rows [j·B/k, (j+1)·B/k)
    return jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)


def _dp8_step(k, tx=None):
    state, step, _, mesh = _setup("fp", k, {"data": 8}, tx=tx)
    return state, step, shard_host_batch(random_batch(0, batch=32), mesh)


def test_accumulation_moves_no_batch_rows_between_devices(monkeypatch):
    """8-way data parallel, k=2: the compiled step has no all-gather or all-to-all (only the
    gradient all-reduce); the old contiguous split, compiled the same way, has one."""
    from bipft_jax.train import loop

    def collectives(k):
        state, step, batch = _dp8_step(k)
        with jax.set_mesh(step.mesh):
            hlo = step.jitted.lower(state, batch).compile().as_text()
        return {op for op in ("all-gather", "all-to-all", "all-reduce") if f" {op}(" in hlo}

    assert collectives(1) == {"all-reduce"}
    assert collectives(2) == {"all-reduce"}
    monkeypatch.setattr(loop, "split_micro", _contiguous_split)
    assert collectives(2) & {"all-gather", "all-to-all"}


def test_accumulation_on_8_devices_matches_one_step():
    """k=2 strided micro-batches on 8 devices == one step on the whole batch (SGD lr=1: the
    param change is the gradient), to float rounding."""
    runs = {}
    for k in (1, 2):
        state, step, batch = _dp8_step(k, tx=optax.sgd(1.0))
        state, m = step(state, batch)
        runs[k] = (jax.device_get(state.params), {kk: float(v) for kk, v in m.items()})
    for key in ("loss", "mlm", "mlm_acc", "grad_norm"):
        np.testing.assert_allclose(runs[2][1][key], runs[1][1][key], rtol=1e-5, err_msg=key)
    flat = jax.tree_util.tree_flatten_with_path(runs[1][0])[0]
    for (path, a), b in zip(flat, jax.tree.leaves(runs[2][0]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path))
