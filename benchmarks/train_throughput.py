"""Training throughput (tokens/s) of the FP preset vs each binary preset (CPU, fake quantization).

Run: ``python benchmarks/train_throughput.py [--sizes mini,base] [--rounds 5] [--batch 8]``.
Writes ``benchmarks/results/train_throughput.{json,md}``.

What is timed: one jitted, donated student train step (MLM + NSP loss, AdamW with the project's
parameter groups, dropout on) at seq 128; the teacher is not included (it is the same FP forward
for every preset). Protocol: every preset is compiled and warmed up, then timed in interleaved
rounds (one step of each preset per round) so load on the shared machine hits all alike; the
median over rounds is reported with the ratio to FP. Target: binary step time <= 1.3x FP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binary_linear import cpu_info  # noqa: E402
from common import interleaved, random_pretrain_batch  # noqa: E402

from bipft_jax.losses import mlm_loss, nsp_loss  # noqa: E402
from bipft_jax.model.bert import BertForPreTraining  # noqa: E402
from bipft_jax.model.presets import METHODS, get_model_config  # noqa: E402
from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch  # noqa: E402
from bipft_jax.train.loop import init_train_state, jit_step, make_train_step  # noqa: E402
from bipft_jax.train.optim import make_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def build(method: str, size: str, batch: dict):
    """(step, state, sharded batch) for one preset on one device."""
    model = BertForPreTraining(get_model_config(method, size))
    mesh, rules = make_mesh({"data": 1}, jax.devices()[:1]), get_rules("dp")

    def loss_fn(params, b, rng):
        out = model.apply(
            {"params": params}, b["input_ids"], b["attention_mask"], b["token_type_ids"],
            deterministic=False, rngs={"dropout": rng},
        )  # fmt: skip
        mlm, acc = mlm_loss(out["mlm_logits"], b["mlm_labels"])
        nsp, _ = nsp_loss(out["nsp_logits"], b["next_sentence_label"])
        return mlm + nsp, {"mlm_acc": acc}

    init = lambda rng: model.init(rng, jnp.asarray(batch["input_ids"][:1]))["params"]  # noqa: E731
    tx = make_optimizer({"lr": 1e-4, "schedule": "constant", "clip_norm": 1.0})
    state, sh = init_train_state(init, tx, mesh, rules, jax.random.PRNGKey(0))
    step = jit_step(make_train_step(loss_fn, tx), mesh, rules, sh)
    return step, state, shard_host_batch(batch, mesh)


def bench_size(size: str, batch_size: int, seq: int, rounds: int) -> dict:
    batch = random_pretrain_batch(batch_size, seq, max(1, round(0.15 * seq)))
    calls = {}
    for method in METHODS:
        step, state, b = build(method, size, batch)
        run = {"state": state}

        def call(step=step, b=b, run=run) -> None:
            run["state"], m = step(run["state"], b)
            jax.block_until_ready(m)

        calls[method] = call
    times, first = interleaved(calls, rounds)
    fp = float(np.median(times["fp"]))
    out = {}
    for method, ts in times.items():
        med = float(np.median(ts))
        out[method] = {
            "median_step_s": med,
            "min_step_s": float(np.min(ts)),
            "tokens_per_s": batch_size * seq / med,
            "ratio_to_fp": med / fp,
            "compile_plus_first_step_s": first[method],
        }
    del calls
    return out


def write(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Train-step throughput: FP vs binary presets (CPU, fake quantization)",
        "",
        f"Machine: {results['cpu']['model_name']} ({results['cpu']['cpus']} CPUs, shared with "
        "other jobs), JAX " + results["jax"] + f". Batch {results['batch']} x seq "
        f"{results['seq']}, one device, fp32, student step only (MLM+NSP, AdamW), median of "
        f"{results['rounds']} interleaved rounds. Target: binary <= 1.3x FP step time.",
        "1-min load average before/after each size: "
        + ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in results["load_avg_1min"].items()),
        "",
        "| size | preset | median step (s) | tokens/s | x FP | compile+1st step (s) |",
        "|---|---|---|---|---|---|",
    ]
    for size, per in results["sizes"].items():
        for method, r in per.items():
            lines.append(
                f"| {size} | {method} | {r['median_step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                f"{r['ratio_to_fp']:.2f} | {r['compile_plus_first_step_s']:.1f} |"
            )
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="mini")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    results = {"cpu": cpu_info(), "jax": jax.__version__, "batch": a.batch, "seq": a.seq,
               "rounds": a.rounds, "sizes": {}, "load_avg_1min": {}}  # fmt: skip
    for size in a.sizes.split(","):
        load_before = os.getloadavg()[0]
        results["sizes"][size] = bench_size(size, a.batch, a.seq, a.rounds)
        results["load_avg_1min"][size] = [load_before, os.getloadavg()[0]]
        print(json.dumps({size: results["sizes"][size]}, indent=1), flush=True)
        write(results)


if __name__ == "__main__":
    main()
