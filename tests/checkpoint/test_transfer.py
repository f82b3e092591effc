"""`transfer_params`: the one policy for initialising one parameter tree from another."""

import flax.linen as nn
import numpy as np
import pytest

from bipft_jax.checkpoint import ParamsMismatchError, transfer_params


def _trees():
    rng = np.random.default_rng(0)
    student = {
        "a": {"kernel": nn.Partitioned(np.zeros((3, 4), np.float32), ("embed", "mlp"))},
        "b": {"alpha": np.zeros((), np.float32)},  # student-only: kept
        "h": {"kernel": np.zeros((2, 2), np.float32)},
    }
    teacher = {
        "a": {"kernel": rng.normal(size=(3, 4)).astype(np.float64)},
        "h": {"kernel": rng.normal(size=(2, 2)).astype(np.float32)},
        "d": {"extra": np.ones(2)},  # teacher-only: unused
    }
    return student, teacher


def test_copies_shared_leaves_keeps_boxes_and_reports_the_rest():
    student, teacher = _trees()
    out, report = transfer_params(student, teacher, skip=("h",))
    assert isinstance(out["a"]["kernel"], nn.Partitioned)
    assert out["a"]["kernel"].names == ("embed", "mlp")
    assert out["a"]["kernel"].value.dtype == np.float32  # cast to the target's dtype
    np.testing.assert_allclose(out["a"]["kernel"].value, teacher["a"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(out["b"]["alpha"], 0.0)
    np.testing.assert_array_equal(out["h"]["kernel"], np.zeros((2, 2)))  # skipped subtree
    assert report.copied == ("a/kernel",)
    assert set(report.kept) == {"b/alpha", "h/kernel"} and report.unused == ("d/extra",)
    assert report.summary() == "copied 1, kept at init 2 (e.g. b/alpha), unused 1 (e.g. d/extra)"
    out, _ = transfer_params(student, teacher)
    np.testing.assert_array_equal(out["h"]["kernel"], teacher["h"]["kernel"])


def test_every_shape_mismatch_is_an_error_never_skipped():
    student = {"c": {"kernel": np.zeros((2, 2))}, "e": {"bias": np.zeros(3)}, "f": np.zeros(1)}
    teacher = {"c": {"kernel": np.zeros((3, 3))}, "e": {"bias": np.zeros(4)}, "f": np.ones(1)}
    with pytest.raises(ParamsMismatchError) as e:
        transfer_params(student, teacher, what="the teacher", names=("student", "teacher"))
    msg = str(e.value)
    assert msg.startswith("the teacher does not fit the student (2 shape mismatches")
    assert "c/kernel: teacher (3, 3) vs student (2, 2)" in msg and "e/bias: teacher (4,)" in msg
    out, _ = transfer_params(student, teacher, skip=("c", "e"))  # an explicit choice only
    np.testing.assert_array_equal(out["f"], 1.0)


def test_strict_also_refuses_missing_and_unused_leaves():
    student, teacher = _trees()
    with pytest.raises(ParamsMismatchError, match=r"1 model arrays not in the source: b/alpha"):
        transfer_params(student, teacher, strict=True)
    with pytest.raises(ParamsMismatchError, match=r"1 source arrays not in the model: d/extra"):
        transfer_params(student, {**teacher, "b": {"alpha": 1.0}}, strict=True)
    full = {**teacher, "b": {"alpha": np.float32(2.0)}}
    del full["d"]
    out, report = transfer_params(student, full, strict=True)
    assert not report.kept and not report.unused and float(out["b"]["alpha"]) == 2.0


def test_works_under_jit_tracing():
    import jax

    student, teacher = _trees()
    del teacher["d"]
    fn = jax.jit(lambda t: nn.unbox(transfer_params(student, t)[0]))
    out = fn({k: v for k, v in teacher.items()})
    np.testing.assert_allclose(out["a"]["kernel"], teacher["a"]["kernel"], rtol=1e-6)
