"""Paper objectives (BiBERT L_pred, BiT KD, BiPFT pretraining) against NumPy compositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax import losses
from tests.losses import np_reference as ref

B, L, V, H, D, HEADS, N_LAYERS = 2, 6, 13, 8, 4, 2, 2


@pytest.fixture
def rng():
    return np.random.default_rng(2)


def _outputs(rng):
    mk = lambda *s: rng.normal(size=s).astype(np.float32)
    return {
        "mlm_logits": mk(B, L, V) * 2,
        "nsp_logits": mk(B, 2) * 2,
        "hidden_states": [mk(B, L, H) for _ in range(N_LAYERS + 1)],
        "attention_scores": [mk(B, HEADS, L, L) for _ in range(N_LAYERS)],
        "q": [mk(B, HEADS, L, D) for _ in range(N_LAYERS)],
        "k": [mk(B, HEADS, L, D) for _ in range(N_LAYERS)],
        "v": [mk(B, HEADS, L, D) for _ in range(N_LAYERS)],
    }


def _batch(rng):
    labels = rng.integers(0, V, (B, L))
    labels[rng.random((B, L)) < 0.5] = -100
    labels[0, 0] = 3
    mask = np.ones((B, L), np.int32)
    mask[1, 4:] = 0
    return {
        "mlm_labels": labels,
        "next_sentence_label": rng.integers(0, 2, B),
        "attention_mask": mask,
    }


def test_bibert_pred_loss(rng):
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    y = rng.integers(0, 3, 5)
    want = ref.soft_ce(s, t) + 0.5 * ref.ce_ignore(s, y)[0]
    np.testing.assert_allclose(losses.bibert_pred_loss(s, t, jnp.asarray(y)), want, rtol=1e-5)
    sr, tr = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    got = losses.bibert_pred_loss(sr, tr, is_regression=True)
    np.testing.assert_allclose(got, ref.mse(sr, tr), rtol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        losses.bibert_pred_loss(s, t)


def test_bit_kd_loss_classification_and_regression(rng):
    hs = [rng.normal(size=(3, 4, 5)) for _ in range(3)]
    ht = [rng.normal(size=(3, 4, 5)) for _ in range(3)]
    rep = sum(ref.mse(a, b) for a, b in zip(hs, ht, strict=True))  # BiT sums over the 13 layers
    s, t = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    total, parts = losses.bit_kd_loss(s, t, hs, ht, temperature=2.0)
    np.testing.assert_allclose(total, ref.soft_ce(s, t, 2.0) + rep, rtol=1e-5)
    np.testing.assert_allclose(parts["hidden_mse"], rep, rtol=1e-5)
    sr, tr = rng.normal(size=(3, 1)), rng.normal(size=(3, 1))
    total_r, _ = losses.bit_kd_loss(sr, tr, hs, ht, is_regression=True)
    np.testing.assert_allclose(total_r, ref.mse(sr, tr) + rep, rtol=1e-5)
    # Reference parity on STS-B: the logit term is exactly zero, only hidden MSE remains.
    total_p, parts_p = losses.bit_kd_loss(
        sr, tr, hs, ht, is_regression=True, regression_logit_mse=False
    )
    assert float(parts_p["logit_kd"]) == 0.0
    np.testing.assert_allclose(total_p, rep, rtol=1e-5)


def test_bipft_pretrain_loss_reference_weights(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    total, parts = losses.bipft_pretrain_loss(so, to, batch)
    mlm, _ = ref.ce_ignore(so["mlm_logits"], batch["mlm_labels"])
    nsp, _ = ref.ce_ignore(so["nsp_logits"], batch["next_sentence_label"])
    kd = ref.soft_ce(so["nsp_logits"], to["nsp_logits"])
    hid = np.mean(
        [ref.mse(a, b) for a, b in zip(so["hidden_states"], to["hidden_states"], strict=True)]
    )
    np.testing.assert_allclose(total, mlm + nsp + kd + hid, rtol=1e-5)
    for name, want in {"mlm": mlm, "nsp": nsp, "nsp_kd": kd, "hidden": hid}.items():
        np.testing.assert_allclose(parts[name], want, rtol=1e-5)
    assert {"mlm_acc", "nsp_acc", "total"} <= set(parts)
    assert "dmd" not in parts and "attn" not in parts


def test_bipft_pretrain_loss_all_terms_weighted(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    w = {
        "mlm": 0.5,
        "nsp": 2.0,
        "nsp_kd": 0.3,
        "hidden": 1.5,
        "mlm_kd": 0.7,
        "attn": 0.2,
        "dmd": 0.1,
    }
    total, parts = losses.bipft_pretrain_loss(
        so, to, batch, w, temperature=2.0, mask_hidden=True, dmd_per_example=False
    )
    mask = batch["attention_mask"].astype(np.float64)
    pair = mask[:, None, :, None] * mask[:, None, None, :]
    want = {
        "mlm": ref.ce_ignore(so["mlm_logits"], batch["mlm_labels"])[0],
        "nsp": ref.ce_ignore(so["nsp_logits"], batch["next_sentence_label"])[0],
        "nsp_kd": ref.soft_ce(so["nsp_logits"], to["nsp_logits"], 2.0),
        "hidden": np.mean(
            [
                ref.mse(a, b, mask[..., None])
                for a, b in zip(so["hidden_states"], to["hidden_states"], strict=True)
            ]
        ),
        "mlm_kd": ref.masked_soft_ce_sum_vocab(
            so["mlm_logits"], to["mlm_logits"], batch["mlm_labels"], 2.0
        ),
        "attn": np.mean(
            [
                ref.mse(a, b, pair)
                for a, b in zip(so["attention_scores"], to["attention_scores"], strict=True)
            ]
        ),
        "dmd": sum(
            ref.dmd_ref(ref.sim(so[n][i]), ref.sim(to[n][i]))
            for i in range(N_LAYERS)
            for n in "qkv"
        )
        + sum(
            ref.dmd_ref(a, b) for a, b in zip(so["hidden_states"], to["hidden_states"], strict=True)
        ),
    }
    for name, value in want.items():
        np.testing.assert_allclose(parts[name], value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(total, sum(w[k] * want[k] for k in w), rtol=1e-5)


def test_bipft_pretrain_loss_errors_and_skipped_terms(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    with pytest.raises(KeyError, match="unknown loss weight 'mlmkd'"):
        losses.bipft_pretrain_loss(so, to, batch, {"mlmkd": 1.0})
    with pytest.raises(KeyError, match="batch has no 'next_sentence_label'"):
        losses.bipft_pretrain_loss(so, to, {"mlm_labels": batch["mlm_labels"]})
    bare_teacher = {"nsp_logits": to["nsp_logits"], "hidden_states": to["hidden_states"]}
    with pytest.raises(KeyError, match="teacher_out has no 'q'"):
        losses.bipft_pretrain_loss(so, bare_teacher, batch, {"dmd": 1.0})
    # Zero-weight terms are skipped, so their outputs need not exist.
    total, parts = losses.bipft_pretrain_loss(so, bare_teacher, batch, {"mlm": 0.0})
    assert "mlm" not in parts and np.isfinite(float(total))


def test_bipft_pretrain_loss_jits_and_gradients_are_finite(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    so = jax.tree.map(jnp.asarray, so)
    to_same = jax.tree.map(jnp.asarray, dict(so))  # zero distances: the worst case for norms
    w = {"mlm_kd": 1.0, "attn": 1.0, "dmd": 1.0}

    @jax.jit
    def f(student, teacher):
        return losses.bipft_pretrain_loss(student, teacher, batch, w)[0]

    for teacher in (jax.tree.map(jnp.asarray, to), to_same):
        value, grads = jax.value_and_grad(f)(so, teacher)
        assert np.isfinite(float(value))
        leaves = jax.tree.leaves(grads)
        assert all(np.all(np.isfinite(g)) for g in leaves)
        assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    np.testing.assert_allclose(
        f(so, jax.tree.map(jnp.asarray, to)),
        losses.bipft_pretrain_loss(so, to, batch, w)[0],
        rtol=1e-5,
    )


def test_bipft_pretrain_loss_accepts_traced_weights(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    _, parts = losses.bipft_pretrain_loss(so, to, batch, {"attn": 1.0})

    @jax.jit
    def f(w_hidden, w_attn):
        return losses.bipft_pretrain_loss(so, to, batch, {"hidden": w_hidden, "attn": w_attn})[0]

    base = parts["mlm"] + parts["nsp"] + parts["nsp_kd"]
    np.testing.assert_allclose(
        f(0.5, 2.0), base + 0.5 * parts["hidden"] + 2.0 * parts["attn"], rtol=1e-5
    )
    np.testing.assert_allclose(f(0.0, 0.0), base, rtol=1e-5)


def test_pretrain_contract_follows_the_weights():
    c = losses.pretrain_contract()  # the reference: MLM, NSP, NSP-KD, hidden MSE
    assert c.batch_keys == ("mlm_labels", "next_sentence_label")
    assert c.needs_teacher and c.needs_intermediates
    c = losses.pretrain_contract({"nsp_kd": 0, "hidden": 0.0})
    assert not c.needs_teacher and not c.needs_intermediates
    c = losses.pretrain_contract({"nsp": 0, "nsp_kd": 0, "hidden": 0, "mlm_kd": 0.5})
    assert c == losses.DataContract(("mlm_labels",), True, False)
    assert "attention_mask" in losses.pretrain_contract(mask_hidden=True).batch_keys
    traced = losses.pretrain_contract({k: jnp.float32(0) for k in losses.PRETRAIN_TERMS})
    assert traced.needs_teacher and traced.needs_intermediates  # arrays may be scheduled
    assert {
        k: t.default for k, t in losses.PRETRAIN_TERMS.items()
    } == losses.DEFAULT_PRETRAIN_WEIGHTS
    with pytest.raises(KeyError, match="unknown loss weight 'mlmkd'"):
        losses.pretrain_contract({"mlmkd": 1.0})


@pytest.mark.parametrize("term", sorted(losses.PRETRAIN_TERMS))
def test_each_term_reads_only_what_its_contract_declares(rng, term):
    """Given only the declared batch keys, a teacher only if needed and intermediates only if
    needed, every term alone computes (so the trainer can trust the contract)."""
    weights = {k: (1.0 if k == term else 0.0) for k in losses.PRETRAIN_TERMS}
    c = losses.pretrain_contract(weights)
    full = _batch(rng)
    batch = {k: full[k] for k in c.batch_keys}
    heads = ("mlm_logits", "nsp_logits")
    so, to = _outputs(rng), _outputs(rng)
    if not c.needs_intermediates:
        so, to = ({k: o[k] for k in heads} for o in (so, to))
    total, parts = losses.bipft_pretrain_loss(so, to if c.needs_teacher else {}, batch, weights)
    assert term in parts and np.isfinite(float(total))


def test_mlm_on_gathered_positions_equals_all_positions(rng):
    so, to, batch = _outputs(rng), _outputs(rng), _batch(rng)
    batch["mlm_labels"][:, 5:] = -100  # at most 5 predictions per row
    n = 5
    positions, labels = losses.mlm_targets(batch, n)
    gather = lambda x: np.take_along_axis(x, np.asarray(positions)[..., None], 1)  # noqa: E731
    w = {"mlm": 1.0, "mlm_kd": 1.0}
    full, _ = losses.bipft_pretrain_loss(so, to, batch, w)
    so_g = {**so, "mlm_logits": gather(so["mlm_logits"])}
    to_g = {**to, "mlm_logits": gather(to["mlm_logits"])}
    got, _ = losses.bipft_pretrain_loss(so_g, to_g, batch, w, max_predictions=n)
    np.testing.assert_allclose(got, full, rtol=1e-5)
    assert labels.shape == (B, n)
