"""Pretraining throughput and MFU on an accelerator: FP vs binary BERT-base, bf16, seq 128.

    python benchmarks/train_throughput_accel.py [--batch 256] [--steps 10] [--out DIR]

What is timed: the real pretraining train step of `bipft pretrain` (`make_pretrain_loss` +
`make_train_step`, AdamW with the project's parameter groups, dropout on, MLM head on the
gathered masked positions, 20 per row) with bf16 activations and matmuls (fp32 params), on one
device, on random token batches. Rows: every preset without a teacher (MLM + NSP only), and
BiPFT with its frozen FP teacher (hidden-state KD + NSP KD, the BiPFT objective). Each config is
compiled, warmed up twice, then `--steps` steps are timed one by one (block_until_ready); the
median is reported. MFU = student model FLOPs (`metrics.bert_flops_per_token`: encoder and
attention matmuls forward+backward, the MLM head on the masked positions) x tokens/s / the
device's dense bf16 peak (989 TFLOP/s for H100 SXM / H200). The measured bf16 matmul ceiling
(8192^3, jnp.dot) is recorded beside it. Goals (issue #13): FP >= 40% MFU; binary >= 0.85x FP.
Writes `train_throughput_accel.{json,md}` to `--out` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from common import random_pretrain_batch

from bipft_jax.model.bert import BertForPreTraining
from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
from bipft_jax.train.loop import init_train_state, jit_step, make_train_step
from bipft_jax.train.metrics import bert_flops_per_token, peak_flops_per_device
from bipft_jax.train.optim import make_optimizer
from bipft_jax.train.pretrain import (
    build_teacher,
    default_config,
    init_from_teacher,
    make_pretrain_loss,
    student_config,
)

CONFIGS = [("fp", False), ("bibert", False), ("bit", False), ("bipft", False), ("bipft", True)]


def config(
    method: str, teacher: bool, batch: int, seq: int, size: str
) -> ml_collections.ConfigDict:
    c = default_config()
    c.model.method, c.model.size, c.model.dtype = method, size, "bfloat16"
    c.data.seq_len, c.data.global_batch_size, c.data.max_predictions = seq, batch, 20
    weights = dict(mlm=1.0, nsp=1.0, nsp_kd=1.0 if teacher else 0.0, hidden=1.0 if teacher else 0.0)
    c.loss.update(weights)
    return c


def bench(method: str, teacher: bool, batch: int, seq: int, steps: int, size: str) -> dict:
    c = config(method, teacher, batch, seq, size)
    mesh, rules = make_mesh({"data": 1}, jax.devices()[:1]), get_rules("dp")
    cfg = student_config(c, 30522)
    student = BertForPreTraining(cfg)
    host = random_pretrain_batch(batch, seq, 20)
    ids = jnp.asarray(host["input_ids"][:1])
    t_model, t_params, t_sh, _ = build_teacher(c, cfg, mesh, rules, ids)

    def init(rng, tp):
        return init_from_teacher(student.init(rng, ids)["params"], tp)

    tx = make_optimizer({"lr": 1e-4, "schedule": "constant", "clip_norm": 1.0})
    state, sh = init_train_state(init, tx, mesh, rules, jax.random.PRNGKey(0), t_params)
    step = jit_step(
        make_train_step(make_pretrain_loss(c, student, t_model), tx),
        mesh,
        rules,
        sh,
        const_shardings=(t_sh,),
    )
    b = shard_host_batch(host, mesh)
    t0 = time.perf_counter()
    state, m = step(state, b, t_params)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, m = step(state, b, t_params)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, b, t_params)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tok_s = batch * seq / med
    flops = bert_flops_per_token(
        cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size, seq, 20
    )
    peak = peak_flops_per_device(jax.devices()[0].device_kind) or float("nan")
    return {
        "method": method,
        "teacher": teacher,
        "median_step_s": med,
        "min_step_s": min(times),
        "tokens_per_s": tok_s,
        "model_tflops_per_s": flops * tok_s / 1e12,
        "mfu": flops * tok_s / peak,
        "compile_plus_first_step_s": compile_s,
        "loss": float(np.asarray(m["loss"])),
        "steps_timed": steps,
    }


def matmul_ceiling(n: int = 8192, reps: int = 10) -> float:
    """Achieved bf16 TFLOP/s of one n^3 jnp.dot (random data), median of `reps`."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e12


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput_accel.json").write_text(json.dumps(results, indent=2) + "\n")
    fp = next((r for r in results["rows"] if r["method"] == "fp"), None)
    lines = [
        "# Pretraining throughput on an accelerator: FP vs binary BERT (bf16)",
        "",
        f"Model size {results['size']}. Device: {results['device']} (1 device), JAX "
        f"{results['jax']}, flax {results['flax']}. Global batch {results['batch']} x "
        f"{results['seq']} tokens, bf16 activations/matmuls, fp32 params, AdamW, dropout on, MLM "
        "head on 20 gathered masked positions per row. Median of "
        f"{results['steps']} timed steps after compile + 2 warm-up steps. MFU = student model "
        f"FLOPs / {results['peak_tflops']:.0f} TFLOP/s dense bf16 peak; measured bf16 matmul "
        f"ceiling (8192^3 jnp.dot): {results['matmul_tflops']:.0f} TFLOP/s.",
        "",
        "| preset | teacher | step (ms) | tokens/s | model TFLOP/s | MFU | x FP tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratio = r["tokens_per_s"] / fp["tokens_per_s"] if fp else float("nan")
        who = "FP teacher (hidden+NSP KD)" if r["teacher"] else "—"
        lines.append(
            f"| {r['method']} | {who} | {1e3 * r['median_step_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.0f} | {100 * r['mfu']:.1f}% | "
            f"{ratio:.2f} |"
        )
    lines += ["", "Failures: " + (json.dumps(results["errors"]) if results["errors"] else "none")]
    (out / "train_throughput_accel.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    import flax

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--only", default="", help="comma list of preset[+t] to run")
    ap.add_argument("--size", default="base", help="model size preset (tiny for a smoke run)")
    ap.add_argument("--matmul", type=int, default=8192, help="side of the bf16 matmul probe")
    a = ap.parse_args()
    dev = jax.devices()[0]
    results = {
        "device": dev.device_kind,
        "platform": dev.platform,
        "num_devices": 1,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "size": a.size,
        "matmul_tflops": matmul_ceiling(a.matmul),
        "peak_tflops": (peak_flops_per_device(dev.device_kind) or float("nan")) / 1e12,
        "rows": [],
        "errors": {},
    }
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}), flush=True)
    for method, teacher in CONFIGS:
        name = method + ("+t" if teacher else "")
        if a.only and name not in a.only.split(","):
            continue
        try:
            row = bench(method, teacher, a.batch, a.seq, a.steps, a.size)
        except Exception as e:  # keep the other rows (a benchmark, not a library)
            results["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            print(f"{name} failed: {e}", flush=True)
            continue
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        write(results, Path(a.out))
    write(results, Path(a.out))


if __name__ == "__main__":
    main()
