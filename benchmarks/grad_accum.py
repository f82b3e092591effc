"""Gradient accumulation cost: k micro-steps of B/k rows vs one step of B rows, data parallel.

On ``--devices`` simulated CPU devices (data parallel), the jitted train step of a tiny FP BERT
is timed (interleaved rounds, median) for: one step on B rows; k strided micro-steps on the same
B rows (``loop.split_micro``: each device keeps its rows); the old contiguous split (each
micro-batch gathered onto every device); and one step on B/k rows. The strided step should cost
about one B-row step (ratio ~1), the contiguous one more.

    python benchmarks/grad_accum.py [--devices 8] [--batch 64] [--seq 64] [--k 4] [--rounds 5]

Writes ``benchmarks/results/grad_accum.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import jax
    import optax

    from benchmarks.common import interleaved, random_pretrain_batch
    from bipft_jax.losses import mlm_loss, nsp_loss
    from bipft_jax.model.bert import BertForPreTraining
    from bipft_jax.model.presets import get_model_config
    from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
    from bipft_jax.train import loop

    cfg = get_model_config("fp", "tiny", hidden_dropout=0.0, attention_dropout=0.0)
    model = BertForPreTraining(cfg)
    mesh, rules, tx = make_mesh({"data": -1}), get_rules("dp"), optax.adamw(1e-4)

    def loss_fn(params, b, rng):
        out = model.apply({"params": params}, b["input_ids"], b["attention_mask"],
                          b["token_type_ids"], deterministic=True)  # fmt: skip
        mlm, _ = mlm_loss(out["mlm_logits"], b["mlm_labels"])
        return mlm + nsp_loss(out["nsp_logits"], b["next_sentence_label"])[0], {}

    def contender(batch_rows: int, k: int, contiguous: bool = False):
        def init(rng):
            return model.init(rng, random_pretrain_batch(1, a.seq, 8)["input_ids"])["params"]

        state, sh = loop.init_train_state(init, tx, mesh, rules, jax.random.PRNGKey(0))
        split = loop.split_micro
        if contiguous:
            loop.split_micro = (
                lambda b, k: jax.tree.map(  # the old split
                    lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), b
                )
            )
        try:
            step = loop.jit_step(loop.make_train_step(loss_fn, tx, k), mesh, rules, sh)
            raw = random_pretrain_batch(batch_rows, a.seq, 8)
            raw.pop("labels")
            batch = shard_host_batch(raw, mesh)
            jax.block_until_ready(step(state, batch))  # compile while the split is patched
        finally:
            loop.split_micro = split
        holder = {"s": state}

        def run():
            holder["s"], m = step(holder["s"], batch)
            jax.block_until_ready(m["loss"])

        return run

    k, b = a.k, a.batch
    contenders = {
        f"1 step, {b} rows": contender(b, 1),
        f"{k} strided micro-steps, {b} rows": contender(b, k),
        f"{k} contiguous micro-steps, {b} rows (old)": contender(b, k, contiguous=True),
        f"1 step, {b // k} rows": contender(b // k, 1),
    }
    times, _ = interleaved(contenders, a.rounds)
    med = {n: statistics.median(t) for n, t in times.items()}
    base = med[f"1 step, {b} rows"]
    rows = [{"variant": n, "median_s": s, "vs_one_step": s / base} for n, s in med.items()]
    info = {"devices": a.devices, "batch": b, "seq": a.seq, "k": k, "rounds": a.rounds,
            "model": "fp tiny", "cpu_count": os.cpu_count()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grad_accum.json").write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    md = [f"# Gradient accumulation cost ({info})", "", "| variant | median s | vs 1 step |",
          "|---|---|---|"] + [f"| {r['variant']} | {r['median_s']:.4f} | {r['vs_one_step']:.2f} |"
                              for r in rows]  # fmt: skip
    (RESULTS / "grad_accum.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
