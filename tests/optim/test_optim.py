"""Optimizers against NumPy re-implementations (BertAdam per TinyBERT/BiT, AdamW) and torch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bipft_jax.train import optim


def _params(rng):
    return {
        "encoder": {
            "dense": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))},
            "LayerNorm": {"scale": rng.normal(size=(3,)), "bias": rng.normal(size=(3,))},
            "act_quant": {"alpha": np.array(0.7)},
        },
        "emb": {"embedding": rng.normal(size=(5, 3))},
    }


def _grads(rng, step):
    # Alternate big and small gradients so per-tensor clipping both fires and does not.
    scale = 3.0 if step % 2 == 0 else 0.05
    return {
        "encoder": {
            "dense": {"kernel": scale * rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))},
            "LayerNorm": {"scale": 0.1 * rng.normal(size=(3,)), "bias": rng.normal(size=(3,))},
            "act_quant": {"alpha": np.array(scale * rng.normal())},
        },
        "emb": {"embedding": 0.3 * rng.normal(size=(5, 3))},
    }


def _flat(tree):
    return {
        jax.tree_util.keystr(k): np.asarray(v, np.float64)
        for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def _group(key):
    if "alpha" in key:
        return "alpha"
    return "no_decay" if ("bias" in key or "LayerNorm" in key) else "decay"


def numpy_bertadam(
    params, grads_seq, lr, alpha_lr, warmup_frac, t_total, wd, b1=0.9, b2=0.999, eps=1e-6
):
    """BertAdam.step (transformer/optimization.py) re-implemented per tensor in NumPy."""
    p = _flat(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g_all = _flat(grads)
        progress = step / t_total
        mult = (
            progress / warmup_frac
            if progress < warmup_frac
            else max((progress - 1) / (warmup_frac - 1), 0)
        )
        for k in p:
            g = g_all[k].copy()
            norm = np.sqrt((g**2).sum())
            g *= min(1.0, 1.0 / (norm + 1e-6))  # clip_grad_norm_(p, 1.0)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            update = m[k] / (np.sqrt(v[k]) + eps)
            group = _group(k)
            if group == "decay":
                update = update + wd * p[k]
            p[k] = p[k] - (alpha_lr if group == "alpha" else lr) * mult * update
    return p


def numpy_adamw(
    params, grads_seq, lr, alpha_lr, warmup, total, wd, clip, b1=0.9, b2=0.999, eps=1e-8
):
    p = _flat(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g_all = _flat(grads)
        gnorm = np.sqrt(sum((g**2).sum() for g in g_all.values()))
        factor = min(1.0, clip / gnorm)
        mult = step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))
        t = step + 1
        for k in p:
            g = g_all[k] * factor
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            update = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            group = _group(k)
            if group == "decay":
                update = update + wd * p[k]
            p[k] = p[k] - (alpha_lr if group == "alpha" else lr) * mult * update
    return p


def _run(tx, params, grads_seq, jit=True):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for grads in grads_seq:
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _assert_close(got_tree, want_flat):
    got = _flat(got_tree)
    assert got.keys() == want_flat.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want_flat[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_bertadam_groups_match_numpy_reference():
    rng = np.random.default_rng(0)
    params = _params(rng)
    grads_seq = [_grads(rng, s) for s in range(6)]
    cfg = {
        "name": "bertadam",
        "lr": 0.05,
        "alpha_lr": 0.02,
        "warmup_steps": 0.2 * 10,
        "total_steps": 10,
        "weight_decay": 0.1,
    }
    got = _run(optim.make_optimizer(cfg), params, grads_seq)
    want = numpy_bertadam(params, grads_seq, 0.05, 0.02, 0.2, 10, 0.1)
    _assert_close(got, want)
    # Sanity: parity needs the missing bias correction — a bias-corrected run differs clearly.
    adamw_like = _run(
        optim.make_optimizer({**cfg, "name": "adamw", "eps": 1e-6, "per_tensor_clip": 1.0}),
        params,
        grads_seq,
    )
    diff = max(np.abs(_flat(adamw_like)[k] - want[k]).max() for k in want)
    assert diff > 1e-3


def test_adamw_groups_match_numpy_reference():
    rng = np.random.default_rng(2)
    params = _params(rng)
    grads_seq = [_grads(rng, s) for s in range(6)]
    cfg = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "lr": 0.03,
            "alpha_lr": 1e-4,
            "weight_decay": 0.2,
            "warmup_steps": 2,
            "total_steps": 8,
            "clip_norm": 1.5,
        }
    )
    got = _run(optim.make_optimizer(cfg), params, grads_seq)
    _assert_close(got, numpy_adamw(params, grads_seq, 0.03, 1e-4, 2, 8, 0.2, 1.5))


def test_adamw_constant_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(4)]
    tw = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    topt = torch.optim.AdamW([tw], lr=0.01, weight_decay=0.1, eps=1e-8)
    for g in grads:
        tw.grad = torch.tensor(g)
        topt.step()
    cfg = {"lr": 0.01, "weight_decay": 0.1, "schedule": "constant"}
    got = _run(optim.make_optimizer(cfg), {"kernel": w0}, [{"kernel": g} for g in grads])
    np.testing.assert_allclose(got["kernel"], tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_per_tensor_clip_matches_torch_and_handles_stacked_layers():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    g = rng.normal(size=(3, 4, 5)) * np.array([2.0, 0.01, 0.5])[:, None, None]
    clip = optim.per_tensor_clip(0.7, scanned_prefix="enc/layer")
    grads = {"enc": {"layer": {"kernel": g}}, "other": g}
    out, _ = clip.update(jax.tree.map(jnp.asarray, grads), clip.init(grads))
    t = torch.tensor(g.copy())
    t.grad = torch.tensor(g.copy())
    torch.nn.utils.clip_grad_norm_(t, 0.7)
    np.testing.assert_allclose(out["other"], t.grad.numpy(), rtol=1e-5)
    for i in range(3):  # stacked: each layer slice clipped on its own
        ti = torch.tensor(g[i].copy())
        ti.grad = torch.tensor(g[i].copy())
        torch.nn.utils.clip_grad_norm_(ti, 0.7)
        np.testing.assert_allclose(out["enc"]["layer"]["kernel"][i], ti.grad.numpy(), rtol=1e-5)


def test_param_labels_on_flax_params():
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(
                3,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("a", "b")
                ),
                name="dense",
            )(x)
            x = nn.LayerNorm(name="LayerNorm")(x)
            alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.ones, ()), ())
            return x * alpha

    params = Tiny().init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    labels = optim.param_labels(params)
    assert labels["dense"]["kernel"].value == "decay"  # boxed leaves keep their box
    assert labels["dense"]["bias"] == "no_decay"
    assert labels["LayerNorm"] == {"scale": "no_decay", "bias": "no_decay"}
    assert labels["alpha"].value == "alpha"
    # The optimizer works on the unboxed tree.
    tx = optim.make_optimizer({"lr": 1e-3, "schedule": "constant"})
    plain = nn.meta.unbox(params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, plain), tx.init(plain), plain)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_state_is_fp32_for_bf16_params():
    params = {"kernel": jnp.ones((3, 2), jnp.bfloat16), "alpha": jnp.ones((), jnp.bfloat16)}
    for name in ("adamw", "bertadam"):
        tx = optim.make_optimizer({"name": name, "lr": 1e-2, "schedule": "constant"})
        state = tx.init(params)
        float_leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert float_leaves and all(x.dtype == jnp.float32 for x in float_leaves), name
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"lr": 1e-3, "schedule": "constant", "lrr": 1}, r"unknown key\(s\) \['lrr'\]"),
        ({"schedule": "constant"}, "'lr' is required"),
        ({"name": "sgd", "lr": 1e-3}, "'name'"),
        ({"lr": 1e-3, "b2": 1.0, "schedule": "constant"}, "'b2'"),
        ({"lr": -1.0, "schedule": "constant"}, "'lr'"),
        ({"lr": 1e-3}, "optimizer config: schedule 'linear': total_steps"),
        ({"lr": 1e-3, "schedule": "poly", "total_steps": 5}, "schedule must be one of"),
    ],
)
def test_config_errors_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(cfg)
