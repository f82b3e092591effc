"""Forward+backward step time of each model preset relative to FP (BertForPreTraining, MLM+NSP).

Fake-quantized training: the binary presets run float matmuls on ±α tensors plus the binarizer
overhead, so ratios > 1 are expected. One jitted `value_and_grad` per preset; after a warm-up
step the presets are timed interleaved (round-robin) and the median per preset is reported.

    python benchmarks/model_step_time.py [--sizes mini base] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bipft_jax.model.bert import BertForPreTraining
from bipft_jax.model.presets import METHODS, get_model_config

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = {"tiny": 9, "mini": 9, "small": 5, "base": 3, "large": 2}


def make_step(preset: str, size: str, batch: int, seq: int, scan: bool):
    cfg = get_model_config(preset, size, scan_layers=scan)
    model = BertForPreTraining(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.int32)
    mlm_labels = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    nsp_labels = jnp.asarray(rng.integers(0, 2, (batch,)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]

    def loss_fn(p, key):
        out = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": key})
        mlm = optax.softmax_cross_entropy_with_integer_labels(out["mlm_logits"], mlm_labels)
        nsp = optax.softmax_cross_entropy_with_integer_labels(out["nsp_logits"], nsp_labels)
        return mlm.mean() + nsp.mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.key(1)

    def run() -> float:
        t0 = time.perf_counter()
        loss, grads = step(params, key)
        jax.block_until_ready((loss, grads))
        return time.perf_counter() - t0

    return run


def bench_size(size: str, batch: int, seq: int, scan: bool, repeats: int) -> dict:
    runs, compile_s = {}, {}
    for preset in METHODS:
        runs[preset] = make_step(preset, size, batch, seq, scan)
        compile_s[preset] = runs[preset]()  # compile + first step (warm-up)
    times: dict[str, list[float]] = {p: [] for p in METHODS}
    for _ in range(repeats):
        for preset in METHODS:
            times[preset].append(runs[preset]())
    med = {p: statistics.median(t) for p, t in times.items()}
    return {
        "batch": batch,
        "seq": seq,
        "scan_layers": scan,
        "repeats": repeats,
        "compile_and_first_step_s": compile_s,
        "times_s": times,
        "median_s": med,
        "ratio_vs_fp": {p: med[p] / med["fp"] for p in METHODS},
    }


def cpu_info() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", platform.processor()).strip(),
        "cpus": os.cpu_count(),
        "isa_flags": [f for f in flags if f.startswith(("avx", "fma", "sse4"))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["mini", "base"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-scan", action="store_true", help="unroll layers (slower compile)")
    parser.add_argument("--name", default="model_step_time")
    parser.add_argument("--markdown-only", action="store_true", help="re-render the .md from .json")
    args = parser.parse_args()
    if args.markdown_only:
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
        (RESULTS / f"{args.name}.md").write_text(to_markdown(result))
        return
    result = {
        "what": "jit(value_and_grad(MLM+NSP loss)) of BertForPreTraining, fp32, dropout on",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu": cpu_info(),
        "load_average_before": os.getloadavg(),
        "sizes": {},
    }
    for size in args.sizes:
        result["sizes"][size] = bench_size(
            size, args.batch, args.seq, not args.no_scan, REPEATS.get(size, 3)
        )
        print(size, json.dumps(result["sizes"][size]["median_s"]), flush=True)
    result["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.name}.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(result: dict) -> str:
    lines = [
        "# Model step time: forward+backward per preset, relative to FP",
        "",
        f"{result['what']}; jax {result['jax']} on {result['backend']} "
        f"({result['cpu']['model']}, {result['cpu']['cpus']} CPUs). Median of interleaved "
        f"repeats after one warm-up step. Load average before/after: "
        f"{result['load_average_before'][0]:.1f} / {result['load_average_after'][0]:.1f} "
        "(the machine is shared; absolute times are noisy, ratios are taken side by side).",
        "",
        "| size | batch x seq | repeats | " + " | ".join(METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for size, r in result["sizes"].items():
        cells = [
            f"{r['median_s'][p]:.2f} s ({r['ratio_vs_fp'][p]:.2f}x; "
            f"{min(r['times_s'][p]):.2f}-{max(r['times_s'][p]):.2f})"
            for p in METHODS
        ]
        lines.append(
            f"| {size} | {r['batch']} x {r['seq']} | {r['repeats']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Cells: median (ratio to FP; min-max of the timed repeats). The binary presets are "
        "fake-quantized (float matmuls on ±α values plus binarizer and STE work), so their "
        "extra cost is elementwise; where the min-max ranges overlap, the ratio is within the "
        "noise of this shared machine. Real 1-bit speed is an inference matter (packed "
        "XNOR-popcount, `benchmarks/binary_linear.py`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
