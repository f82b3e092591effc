"""Native FFI XNOR GEMM: exact vs NumPy on every ISA path this CPU has, and the XLA fallback."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bipft_jax.infer import native
from bipft_jax.infer.kernels import binary_linear
from bipft_jax.infer.packing import pack_matrix

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("BIPFT_CACHE_DIR")
    os.environ["BIPFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("native_cache"))
    yield
    if old is None:
        os.environ.pop("BIPFT_CACHE_DIR")
    else:
        os.environ["BIPFT_CACHE_DIR"] = old


def _pm1(rng, shape):
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)


# K values hit: tail only (< 8 words), vectors + tail, exact 256/512-bit vectors, > 31 vectors.
CASES = [
    (5, 70, 3),
    (4, 300, 8),
    (7, 256, 9),
    (3, 512, 5),
    (9, 1000, 6),
    (2, 8320, 5),
    (130, 768, 17),
    (203, 1000, 300),  # enough work for several row chunks on the caller + XLA's pool
]


@needs_cxx
@pytest.mark.parametrize("m,k,n", CASES)
def test_native_matches_numpy(m, k, n):
    assert native.native_available(), "g++ exists but the kernel did not build"
    rng = np.random.default_rng(m + k + n)
    a, b = _pm1(rng, (m, k)), _pm1(rng, (k, n))
    got = jax.jit(native.xnor_matmul_native)(pack_matrix(a), pack_matrix(b, axis=0))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(got), (a @ b).astype(np.int32))


@needs_cxx
@pytest.mark.parametrize("m,k,n", CASES)
def test_native_and_gemm_matches_numpy(m, k, n):
    rng = np.random.default_rng(m * k + n)
    u = (rng.random((m, k)) < 0.4).astype(np.float32)
    b = _pm1(rng, (k, n))
    pu = pack_matrix(u, with_mask=False)
    got = jax.jit(native.and_matmul_native)(pu, pack_matrix(b, axis=0))
    np.testing.assert_array_equal(np.asarray(got), (u @ b).astype(np.int32))


@needs_cxx
@pytest.mark.parametrize("shape", [(5, 70), (3, 4, 1000), (1, 31), (7, 32), (203, 3072)])
def test_sign_pack_matches_xla_packing(shape):
    """Both planes, including exact zeros, negative zeros, NaN (nonzero, not positive), tails."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.1] = 0.0
    x[rng.random(shape) < 0.05] = -0.0
    x.reshape(-1)[rng.integers(0, x.size, 3)] = np.nan
    got = jax.jit(native.sign_pack_native)(x)
    want = pack_matrix(x, with_mask=True)
    assert got.k == want.k == shape[-1]
    np.testing.assert_array_equal(np.asarray(got.signs), want.signs)
    np.testing.assert_array_equal(np.asarray(got.mask), want.mask)
    bits = np.asarray(got.unpack(np.float32))
    np.testing.assert_array_equal(bits, np.sign(np.nan_to_num(x, nan=-1.0)))


@needs_cxx
@pytest.mark.parametrize("k", [20, 32, 64, 100, 128, 500])  # 1, 2 and 4 words: short-row path
@pytest.mark.parametrize("n", [13, 64])  # 13: columns left over after full vectors
def test_per_batch_operands_match_numpy(k, n):
    """Attention-style products: ``a [B, H, M, Kw]`` against ``b [B, H, N, Kw]``."""
    rng = np.random.default_rng(k + n)
    a, b = _pm1(rng, (2, 3, 17, k)), _pm1(rng, (2, 3, n, k))
    u = (rng.random((2, 3, 17, k)) < 0.5).astype(np.float32)
    pa, pb = pack_matrix(a), pack_matrix(b)
    assert "bipft_xnor_gemm" in str(jax.make_jaxpr(native.xnor_matmul_native)(pa, pb))
    got = jax.jit(native.xnor_matmul_native)(pa, pb)
    np.testing.assert_array_equal(np.asarray(got), np.einsum("bhmk,bhnk->bhmn", a, b))
    got = jax.jit(native.and_matmul_native)(pack_matrix(u, with_mask=False), pb)
    np.testing.assert_array_equal(np.asarray(got), np.einsum("bhmk,bhnk->bhmn", u, b))


@needs_cxx
def test_native_batched_and_binary_linear():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 100)).astype(np.float32)
    w = rng.standard_normal((100, 7)).astype(np.float32)
    scale = rng.random(7).astype(np.float32)
    pw = pack_matrix(w, axis=0)
    got = native.xnor_matmul_native(pack_matrix(x), pw)
    np.testing.assert_array_equal(np.asarray(got), np.sign(x) @ np.sign(w))
    fn = jax.jit(lambda x, pw, s: binary_linear(x, pw, s, exact_zeros=False, kernel="native"))
    want = scale * (np.sign(x) @ np.sign(w))
    np.testing.assert_allclose(np.asarray(fn(x, pw, scale)), want, rtol=1e-6)
    unsigned = jax.jit(lambda x, pw, s: binary_linear(x, pw, s, unsigned=True, kernel="native"))
    want = scale * ((x > 0) @ np.sign(w))
    np.testing.assert_allclose(np.asarray(unsigned(x, pw, scale)), want, rtol=1e-6)


@needs_cxx
def test_forced_lower_isa_paths_are_exact():
    """Each lower path runs in a fresh process (the ISA is chosen once per process)."""
    code = (
        "import numpy as np; from bipft_jax.infer import native as n; "
        "from bipft_jax.infer.packing import pack_matrix as p; "
        "r = np.random.default_rng(0); a = r.choice([-1., 1.], (9, 1000)); "
        "b = r.choice([-1., 1.], (1000, 6)); "
        "assert (np.asarray(n.xnor_matmul_native(p(a), p(b, axis=0))) == a @ b).all(); "
        "print(n.native_isa())"
    )
    for isa in ("avx2", "scalar"):
        env = dict(os.environ, BIPFT_XNOR_ISA=isa, JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ran = proc.stdout.strip().splitlines()[-1]
        assert ran == isa or (isa == "avx2" and ran == "scalar"), ran


def test_no_compiler_means_no_build(monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler-bipft")
    assert native.build(force=True) is None
    assert "no C++ compiler" in caplog.text


def test_masked_operands_fall_back_to_xla():
    rng = np.random.default_rng(5)
    a = _pm1(rng, (4, 50))
    a[1, 3] = 0.0
    b = _pm1(rng, (50, 3))
    got = native.xnor_matmul_native(pack_matrix(a), pack_matrix(b, axis=0))
    np.testing.assert_array_equal(np.asarray(got), a @ b)
    with pytest.raises(ValueError, match="a.k=50, b.k=49"):
        native.xnor_matmul_native(pack_matrix(a), pack_matrix(b[:49], axis=0))


def test_unloadable_library_falls_back(monkeypatch, tmp_path, caplog):
    bogus = tmp_path / "not_a_library.so"
    bogus.write_text("not an ELF file")
    monkeypatch.setattr(native, "build", lambda force=False: bogus)
    native._load.cache_clear()
    try:
        assert not native.native_available()
        assert "cannot load" in caplog.text
        x = np.array([[1.0, -1.0, 1.0]], np.float32)
        a = pack_matrix(x)
        np.testing.assert_array_equal(np.asarray(native.xnor_matmul_native(a, a)), [[3]])
        u = pack_matrix(x > 0, with_mask=False)
        np.testing.assert_array_equal(np.asarray(native.and_matmul_native(u, a)), [[2]])
        packed = native.sign_pack_native(x)
        np.testing.assert_array_equal(np.asarray(packed.signs), a.signs)
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
