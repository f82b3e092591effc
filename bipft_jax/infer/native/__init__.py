"""Native CPU 1-bit kernels (``xnor_gemm.cc``) through ``jax.ffi``, built on first use.

The C++ source is compiled with the system ``g++`` (or ``$CXX``) into a cache directory
(``$BIPFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bipft_jax``, else ``~/.cache/bipft_jax``), keyed by
a hash of the source, compiler and flags, and registered as the XLA CPU custom calls
``bipft_xnor_gemm`` (XNOR-popcount), ``bipft_and_gemm`` (AND-popcount) and ``bipft_sign_pack``
(float32 -> sign and nonzero planes). The GEMMs pick AVX-512 VPOPCNTDQ, AVX2 or scalar popcount at
run time (``$BIPFT_XNOR_ISA`` = ``avx2``/``scalar`` forces a lower one) and split rows between the
calling thread and XLA's intra-op pool, up to ``$BIPFT_XNOR_THREADS`` threads (default: all
hardware threads). With no compiler, or when the build fails, every function here falls back to
its pure-XLA twin (:func:`~..xnor.xnor_matmul`, :func:`~..xnor.and_matmul`,
:func:`~..packing.pack_matrix`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from bipft_jax.infer.packing import PackedSigns, num_words, pack_matrix, row_popcount
from bipft_jax.infer.xnor import DEFAULT_CHUNK, and_matmul, xnor_matmul

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("xnor_gemm.cc")
TARGETS = {  # XLA custom-call target -> handler symbol in the library
    "bipft_xnor_gemm": "BipftXnorGemm",
    "bipft_and_gemm": "BipftAndGemm",
    "bipft_sign_pack": "BipftSignPack",
}
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", "-w"]
_REGISTERED: list[ctypes.CDLL] = []  # the library whose handler XLA holds for this process


def cache_dir() -> Path:
    """Where built libraries live (created on demand)."""
    env = os.environ.get("BIPFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bipft_jax"


def build(force: bool = False) -> Path | None:
    """Compile the kernel if needed; return the library path, or ``None`` (reason logged)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        log.warning("no C++ compiler found (set $CXX); using the pure-XLA XNOR kernel")
        return None
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), version, include, *FLAGS]).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir()
    lib = out_dir / f"xnor_gemm-{key}.so"
    if lib.is_file() and not force:
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{include}", str(SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        log.warning("building %s failed (%s):\n%s", SOURCE, " ".join(cmd), proc.stderr[-2000:])
        return None
    os.replace(tmp, lib)  # atomic: concurrent builders all end with a complete file
    return lib


@functools.cache
def _load() -> ctypes.CDLL | None:
    path = build()
    if path is None:
        return None
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        log.warning("cannot load %s (%s); using the pure-XLA XNOR kernel", path, e)
        return None
    if _REGISTERED:  # XLA refuses a second handler for the target (e.g. after cache_clear)
        return _REGISTERED[0]
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    lib.BipftXnorIsa.restype = ctypes.c_char_p
    _REGISTERED.append(lib)
    return lib


def native_available() -> bool:
    """Whether the native kernel is built and registered (builds it on first call)."""
    return _load() is not None


def native_isa() -> str | None:
    """The instruction path the kernel runs on this CPU, or ``None`` when unavailable."""
    lib = _load()
    return None if lib is None else lib.BipftXnorIsa().decode()


def _native_shapes(a: PackedSigns, b: PackedSigns) -> bool:
    """Whether the native GEMM takes these operands: no mask planes, ``a [..., M, Kw]`` against
    one ``b [N, Kw]`` or a ``b [..., N, Kw]`` with the same leading dims."""
    if a.mask is not None or b.mask is not None or a.signs.ndim < 2 or b.signs.ndim < 2:
        return False
    same_lead = b.signs.shape[:-2] == a.signs.shape[:-2]
    return (b.signs.ndim == 2 or same_lead) and _load() is not None


def _gemm(target: str, a: PackedSigns, b: PackedSigns) -> Any:
    lead, (m, kw), n = a.signs.shape[:-2], a.signs.shape[-2:], b.signs.shape[-2]
    a3 = a.signs.reshape(-1, m, kw)
    b_ = b.signs if b.signs.ndim == 2 else b.signs.reshape(-1, n, kw)
    out = jax.ShapeDtypeStruct((a3.shape[0], m, n), jnp.int32)
    call = jax.ffi.ffi_call(target, out, vmap_method="sequential")
    return call(a3, b_, k=int(a.k)).reshape(lead + (m, n))


def xnor_matmul_native(a: PackedSigns, b: PackedSigns, chunk: int = DEFAULT_CHUNK) -> Any:
    """Exact int32 ``a @ b.T`` like :func:`xnor_matmul`, on the native kernel when it applies.

    The native path covers the one-plane case (no mask planes) with ``a`` of shape
    ``[..., M, Kw]`` and ``b`` of shape ``[N, Kw]`` or ``[..., N, Kw]`` (the same leading dims,
    e.g. attention heads); anything else, or no compiler, uses the XLA kernel (``chunk`` is
    passed to it).
    """
    if a.k != b.k:
        raise ValueError(f"contracting lengths differ: a.k={a.k}, b.k={b.k}")
    if not _native_shapes(a, b):
        return xnor_matmul(a, b, chunk)
    return _gemm("bipft_xnor_gemm", a, b)


def and_matmul_native(u: PackedSigns, b: PackedSigns, chunk: int = DEFAULT_CHUNK) -> Any:
    """Exact int32 ``u @ b.T`` for unsigned ``u`` like :func:`and_matmul`: ``2 popc(u & s_b) -
    popc(u)`` on the native kernel for the shapes :func:`xnor_matmul_native` takes, else on XLA."""
    if u.k != b.k:
        raise ValueError(f"contracting lengths differ: u.k={u.k}, b.k={b.k}")
    if not _native_shapes(u, b):
        return and_matmul(u, b, chunk)
    return 2 * _gemm("bipft_and_gemm", u, b) - row_popcount(u.signs)[..., None]


def sign_pack_native(x: Any) -> PackedSigns:
    """``pack_matrix(x, with_mask=True)`` of float32 ``x [..., K]`` in one native pass (AVX2
    compare + movemask); XLA's packing when the kernel is unavailable or ``x`` is not float32."""
    if x.dtype != jnp.float32 or x.ndim < 1 or x.size == 0 or _load() is None:
        return pack_matrix(x, with_mask=True)
    k = x.shape[-1]
    lead, kw = x.shape[:-1], num_words(k)
    rows = x.reshape(-1, k)
    plane = jax.ShapeDtypeStruct((rows.shape[0], kw), jnp.uint32)
    call = jax.ffi.ffi_call("bipft_sign_pack", (plane, plane), vmap_method="sequential")
    signs, mask = call(rows)
    return PackedSigns(signs.reshape(lead + (kw,)), mask.reshape(lead + (kw,)), k)
