"""Native CPU XNOR-popcount GEMM (``xnor_gemm.cc``) through ``jax.ffi``, built on first use.

The C++ source is compiled with the system ``g++`` (or ``$CXX``) into a cache directory
(``$BIPFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bipft_jax``, else ``~/.cache/bipft_jax``), keyed by
a hash of the source, compiler and flags, and registered as the XLA CPU custom call
``bipft_xnor_gemm``. The kernel picks AVX-512 VPOPCNTDQ, AVX2 or scalar popcount at run time
(``$BIPFT_XNOR_ISA`` = ``avx2``/``scalar`` forces a lower one) and splits rows over up to
``$BIPFT_XNOR_THREADS`` threads (default: all hardware threads). With no compiler, or when the
build fails, :func:`xnor_matmul_native` falls back to the pure-XLA :func:`~..xnor.xnor_matmul`.
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

from bipft_jax.infer.packing import PackedSigns
from bipft_jax.infer.xnor import DEFAULT_CHUNK, xnor_matmul

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("xnor_gemm.cc")
TARGET = "bipft_xnor_gemm"
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
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.BipftXnorGemm), platform="cpu")
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


def xnor_matmul_native(a: PackedSigns, b: PackedSigns, chunk: int = DEFAULT_CHUNK) -> Any:
    """Exact int32 ``a @ b.T`` like :func:`xnor_matmul`, on the native kernel when it applies.

    The native path covers the one-plane case (no mask planes) with ``b`` of shape ``[N, Kw]``
    and ``a`` of shape ``[..., M, Kw]``; anything else, or no compiler, uses the XLA kernel
    (``chunk`` is passed to it).
    """
    if a.k != b.k:
        raise ValueError(f"contracting lengths differ: a.k={a.k}, b.k={b.k}")
    if a.mask is not None or b.mask is not None or b.signs.ndim != 2 or _load() is None:
        return xnor_matmul(a, b, chunk)
    lead = a.signs.shape[:-1]
    a2 = a.signs.reshape(-1, a.signs.shape[-1])
    n = b.signs.shape[0]
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct((a2.shape[0], n), jnp.int32), vmap_method="sequential"
    )
    out = call(a2, b.signs, k=int(a.k))
    return out.reshape(lead + (n,))
