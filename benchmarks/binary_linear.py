"""Packed XNOR-popcount linear vs XLA FP32 ``jnp.dot`` on BERT-base linear shapes (CPU).

Run: ``python benchmarks/binary_linear.py [--repeats 25] [--chunks 4,8,12,16,24]``.
Writes ``benchmarks/results/binary_linear.{json,md}``.

Protocol: every variant is jitted and warmed up, then timed in interleaved rounds (one call of
each variant per round, so load changes on the shared machine hit all variants alike); the
median over rounds is reported. Each variant's output is checked against the FP32 result of the
same ±1 matmul before timing. The K-chunk and word width (32/64-bit popcount) are tuned per
shape on the packing-excluded kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax.infer import native
from bipft_jax.infer.kernels import binary_linear
from bipft_jax.infer.packing import pack_matrix
from bipft_jax.infer.xnor import xnor_matmul

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (512, 768, 3072)]
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_info() -> dict[str, object]:
    """Model name and the ISA flags that decide popcount codegen, from lscpu."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    keep = [f for f in flags if f.startswith(("avx", "popcnt", "fma", "bmi", "sse4"))]
    return {
        "model_name": fields.get("Model name", platform.processor()),
        "cpu_family": fields.get("CPU family"),
        "model": fields.get("Model"),
        "cpus": fields.get("CPU(s)"),
        "isa_flags": keep,
        "avx512_vpopcntdq": "avx512_vpopcntdq" in flags,
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(median, minimum) milliseconds per variant over ``rounds`` interleaved rounds, after 2
    warm-up calls each."""
    for fn in fns.values():
        for _ in range(2):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    return med, {name: float(np.min(ts)) for name, ts in times.items()}


def time_blocked(
    fns: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Like :func:`time_interleaved`, but each variant runs its ``rounds`` calls back to back: no
    interference from the previous variant (XLA's FP32 dot leaves its threads busy for a while,
    which delays the next op's pool tasks)."""
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        for _ in range(2):
            jax.block_until_ready(fn())
        times[name] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    return med, {name: float(np.min(ts)) for name, ts in times.items()}


def _name(cfg: tuple[bool, int]) -> str:
    return f"{'u64' if cfg[0] else 'u32'}/chunk{cfg[1]}"


def bench_shape(m: int, k: int, n: int, chunks: list[int], rounds: int) -> dict[str, object]:
    rng = np.random.default_rng(m + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    scale = np.abs(w).mean(0).astype(np.float32)
    # On the device once, like the FP operands: NumPy arguments would be copied in every call.
    pa = jax.device_put(pack_matrix(x, with_mask=False))
    pw = jax.device_put(pack_matrix(w, axis=0, with_mask=False))
    xd, wd, sd = jax.device_put(x), jax.device_put(w), jax.device_put(scale)
    ref = np.sign(x).astype(np.float64) @ np.sign(w)

    fp = jax.jit(jnp.dot)
    configs = [(wide, c) for wide in (True, False) for c in chunks]
    kernels = {
        cfg: jax.jit(lambda a, b, c=cfg[1], wd=cfg[0]: xnor_matmul(a, b, c, wd)) for cfg in configs
    }
    for cfg, f in kernels.items():
        np.testing.assert_array_equal(np.asarray(f(pa, pw)), ref, err_msg=f"config {cfg}")
    tune, _ = time_interleaved(
        {_name(c): (lambda f=f: f(pa, pw)) for c, f in kernels.items()}, rounds
    )
    best = min(configs, key=lambda c: tune[_name(c)])
    best32 = min([c for c in configs if not c[0]], key=lambda c: tune[_name(c)])

    def linear(exact: bool):
        wide, c = best
        return jax.jit(
            lambda x, w, s: binary_linear(x, w, s, exact_zeros=exact, chunk=c, wide=wide)
        )

    lin_fast, lin_exact = linear(False), linear(True)
    want = ref * scale
    for f in (lin_fast, lin_exact):
        np.testing.assert_allclose(np.asarray(f(xd, pw, sd)), want, rtol=1e-5, atol=1e-4)
    variants = {
        "fp32_dot": lambda: fp(xd, wd),
        "packed_excl_packing": lambda: kernels[best](pa, pw),
        "packed_excl_packing_32bit_words": lambda: kernels[best32](pa, pw),
        "packed_incl_packing": lambda: lin_fast(xd, pw, sd),
        "packed_incl_packing_exact_zeros": lambda: lin_exact(xd, pw, sd),
    }
    if native.native_available():
        nat = jax.jit(native.xnor_matmul_native)
        nat_lin = jax.jit(
            lambda x, w, s: binary_linear(x, w, s, exact_zeros=False, kernel="native")
        )
        np.testing.assert_array_equal(np.asarray(nat(pa, pw)), ref)
        np.testing.assert_allclose(np.asarray(nat_lin(xd, pw, sd)), want, rtol=1e-5, atol=1e-4)
        variants["native_excl_packing"] = lambda: nat(pa, pw)
        variants["native_incl_packing"] = lambda: nat_lin(xd, pw, sd)
    times, mins = time_interleaved(variants, rounds)
    speedup = {k: times["fp32_dot"] / v for k, v in times.items() if k != "fp32_dot"}
    speedup_min = {k: mins["fp32_dot"] / v for k, v in mins.items() if k != "fp32_dot"}
    blocked, _ = time_blocked(variants, rounds)
    speedup_blocked = {k: blocked["fp32_dot"] / v for k, v in blocked.items() if k != "fp32_dot"}
    return {
        "shape_MxKxN": [m, k, n],
        "best_config": _name(best),
        "best_32bit_config": _name(best32),
        "tuning_ms": tune,
        "median_ms": times,
        "speedup_vs_fp32": speedup,
        "min_ms": mins,
        "speedup_vs_fp32_of_minima": speedup_min,
        "blocked_median_ms": blocked,
        "speedup_vs_fp32_blocked": speedup_blocked,
    }


COLUMNS = (
    ("packed_excl_packing", "XLA packed, packing excluded"),
    ("packed_excl_packing_32bit_words", "same, best 32-bit-word config"),
    ("packed_incl_packing", "XLA packed + packing"),
    ("packed_incl_packing_exact_zeros", "XLA packed + packing, exact zeros"),
    ("native_excl_packing", "native FFI, packing excluded"),
    ("native_incl_packing", "native FFI + packing"),
)


def _table(res: dict, times_key: str, speed_key: str) -> list[str]:
    head = ["M×K×N", "FP32 dot ms", *(title for _, title in COLUMNS), "best XLA config"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["results"]:
        t, s = r[times_key], r[speed_key]
        cells = [f"{t[k]:.3f} ms ({s[k]:.2f}x)" if k in t else "n/a" for k, _ in COLUMNS]
        shape = "×".join(map(str, r["shape_MxKxN"]))
        row = [shape, f"{t['fp32_dot']:.3f}", *cells, r["best_config"]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_markdown(res: dict, path: Path) -> None:
    cpu = res["cpu"]
    lines = [
        "# Packed binary linear vs XLA FP32 `jnp.dot`",
        "",
        f"CPU: {cpu['model_name']} (family {cpu['cpu_family']}, model {cpu['model']}, "
        f"{cpu['cpus']} CPUs); avx512_vpopcntdq: {cpu['avx512_vpopcntdq']}; jax "
        f"{res['jax_version']}; {res['rounds']} interleaved rounds after warm-up; native kernel "
        f"ISA path: {res['native_isa']}; 1-min load average before/after: "
        f"{res['loadavg_before']} / {res['loadavg_after']} (the machine is shared: absolute "
        "times are noisy, ratios are measured side by side). Outputs are checked exact first.",
        "",
        "## Median of rounds",
        "",
        *_table(res, "median_ms", "speedup_vs_fp32"),
        "",
        "## Minimum of rounds (less sensitive to other processes on the machine)",
        "",
        *_table(res, "min_ms", "speedup_vs_fp32_of_minima"),
        "",
        "## Median of blocked rounds (each variant's calls back to back, same run)",
        "",
        "Interleaved, a small native product right after XLA's FP32 dot waits for a core: the "
        "dot's threads stay busy for a while after it returns. Back to back, it does not.",
        "",
        *_table(res, "blocked_median_ms", "speedup_vs_fp32_blocked"),
        "",
        f"ISA flags: {' '.join(cpu['isa_flags'])}",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=25, help="timed rounds per variant (>= 20)")
    p.add_argument("--chunks", default="4,8,12,24", help="K-chunk sizes (words) to tune over")
    p.add_argument("--out", type=Path, default=RESULTS / "binary_linear")
    args = p.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]
    res = {
        "benchmark": "binary_linear",
        "cpu": cpu_info(),
        "jax_version": jax.__version__,
        "rounds": args.repeats,
        "native_isa": native.native_isa(),
        "loadavg_before": round(os.getloadavg()[0], 2),
        "results": [],
    }
    for m, k, n in SHAPES:
        r = bench_shape(m, k, n, chunks, args.repeats)
        print(json.dumps(r), flush=True)
        res["results"].append(r)
    res["loadavg_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
