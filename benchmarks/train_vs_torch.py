"""Training speed of bipft_jax against Hugging Face transformers + PyTorch on this CPU.

    python benchmarks/train_vs_torch.py [--rounds 5] [--baseline-tree /path/to/older/checkout]

Side by side in one process group, 2 threads each, MiniLM-L6-H384 sizes, batch 32 x 128:
  (a) a fine-tuning step (sequence classification, dropout on, AdamW): HF BertForSequence-
      Classification vs bipft_jax FP and every binary preset;
  (b) a pretraining step with a frozen FP teacher: HF BertForPreTraining (MLM on all positions, as
      HF computes it) + a BertModel teacher under no_grad, hidden MSE + MLM + NSP, vs bipft_jax's
      BiPFT objective with the MLM head on the 20 masked positions per row (and, for the record,
      on all 128 positions: the pre-gather cost), FP and every binary preset;
  (c) one real GLUE epoch end to end (STS-B: read, tokenize, train one epoch at batch 32, evaluate
      dev), examples/s: `bipft finetune` (dynamic padding) vs a plain PyTorch loop with per-batch
      padding, and, with `--baseline-tree`, the `bipft finetune` of an older checkout ("today").
(a) and (b) run in interleaved rounds (one step of every contender per round, after compile and
warm-up) and report medians; (c) runs each contender once per round. Results:
`benchmarks/results/train_vs_torch.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import interleaved, random_pretrain_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
B, L, N_PRED = 32, 128, 20


# ----------------------------------------------------------------------------- PyTorch side


def _torch_batch() -> dict:
    import torch

    return {k: torch.as_tensor(v, dtype=torch.long)
            for k, v in random_pretrain_batch(B, L, N_PRED).items()}  # fmt: skip


def torch_finetune_step() -> Callable[[], None]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536
    )
    model = BertForSequenceClassification(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    b = _torch_batch()

    def step():
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
            labels=b["labels"],
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def torch_pretrain_step() -> Callable[[], None]:
    import torch
    from transformers import BertConfig, BertForPreTraining, BertModel

    cfg = BertConfig(
        num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536
    )
    student = BertForPreTraining(cfg).train()
    teacher = BertModel(cfg).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
    b = _torch_batch()
    mse = torch.nn.MSELoss()

    def step():
        args = dict(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
        )
        out = student(
            **args,
            labels=b["mlm_labels"],
            next_sentence_label=b["next_sentence_label"],
            output_hidden_states=True,
        )
        with torch.no_grad():
            t_hidden = teacher(**args, output_hidden_states=True).hidden_states
        hidden = sum(mse(s, t) for s, t in zip(out.hidden_states, t_hidden, strict=True)) / len(
            t_hidden
        )
        (out.loss + hidden).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# ----------------------------------------------------------------------------- bipft_jax side


def jax_finetune_step(method: str) -> Callable[[], None]:
    import jax
    import jax.numpy as jnp

    from bipft_jax.glue.kd import finetune_loss
    from bipft_jax.model.bert import BertForSequenceClassification
    from bipft_jax.model.presets import get_model_config
    from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
    from bipft_jax.train.loop import init_train_state, jit_step, make_train_step
    from bipft_jax.train.optim import make_optimizer

    model = BertForSequenceClassification(get_model_config(method, "base", **SIZES), num_labels=2)
    mesh, rules = make_mesh({"data": 1}, jax.devices()[:1]), get_rules("dp")
    host = random_pretrain_batch(B, L, N_PRED)
    ids = jnp.asarray(host["input_ids"][:1])

    def loss_fn(params, batch, rng):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return finetune_loss("none", out, None, batch["labels"], is_regression=False)

    tx = make_optimizer(
        {
            "name": "adamw",
            "lr": 5e-5,
            "weight_decay": 0.01,
            "total_steps": 1000,
            "warmup_steps": 100,
        }
    )
    state, sh = init_train_state(
        lambda r: model.init(r, ids)["params"], tx, mesh, rules, jax.random.PRNGKey(0)
    )
    step = jit_step(make_train_step(loss_fn, tx), mesh, rules, sh)
    keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
    batch = shard_host_batch({k: host[k] for k in keys}, mesh)
    box = {"state": state}

    def run():
        box["state"], m = step(box["state"], batch)
        jax.block_until_ready(m)

    return run


def jax_pretrain_step(method: str, n_pred: int) -> Callable[[], None]:
    import jax

    from bipft_jax.model.bert import BertForPreTraining
    from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
    from bipft_jax.train.loop import init_train_state, jit_step, make_train_step
    from bipft_jax.train.optim import make_optimizer
    from bipft_jax.train.pretrain import (
        build_teacher,
        default_config,
        init_from_teacher,
        make_pretrain_loss,
        student_config,
    )

    c = default_config()
    c.model.method, c.model.size = method, "base"
    c.model.overrides = tuple(f"{k}={v}" for k, v in SIZES.items())
    c.data.seq_len, c.data.global_batch_size, c.data.max_predictions = L, B, n_pred
    c.loss.update(nsp_kd=0.0, mlm_kd=0.0, hidden=1.0)  # MiniLM-like headless teacher
    mesh, rules = make_mesh({"data": 1}, jax.devices()[:1]), get_rules("dp")
    cfg = student_config(c, 30522)
    student = BertForPreTraining(cfg)
    host = random_pretrain_batch(B, L, N_PRED)
    ids = host["input_ids"][:1]
    teacher, t_params, t_sh, _ = build_teacher(c, cfg, mesh, rules, ids)
    tx = make_optimizer(
        {
            "name": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.01,
            "total_steps": 1000,
            "warmup_steps": 100,
        }
    )
    init = lambda r, tp: init_from_teacher(student.init(r, ids)["params"], tp)  # noqa: E731
    state, sh = init_train_state(init, tx, mesh, rules, jax.random.PRNGKey(0), t_params)
    step = jit_step(
        make_train_step(make_pretrain_loss(c, student, teacher), tx),
        mesh,
        rules,
        sh,
        const_shardings=(t_sh,),
    )
    keys = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label")
    batch = shard_host_batch({k: host[k] for k in keys}, mesh)
    box = {"state": state}

    def run():
        box["state"], m = step(box["state"], batch, t_params)
        jax.block_until_ready(m)

    return run


# ----------------------------------------------------------------------------- timing


def interleaved_vs_torch(contenders: dict[str, Callable[[], None]], rounds: int) -> dict:
    """Medians of interleaved rounds, each contender against the "torch" one."""
    times, first = interleaved(contenders, rounds)
    ref = statistics.median(times["torch"])
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "times_s": ts,
            "ratio_to_torch": statistics.median(ts) / ref,
            "first_call_s": first[name],
        }
        for name, ts in times.items()
    }


def glue_epoch_ours(
    tree: Path, work: Path, minilm: str, baseline: bool, extra: list[str] | None = None
) -> float:
    """Wall seconds of `bipft finetune`, 1 STS-B epoch + dev evaluation, in a fresh process."""
    if baseline:  # the older checkout: its own recipe file, same hyper-parameters
        spec = f"{tree}/configs/glue/bipft.py:stsb"
        sets = [
            "chain=fp",
            "model.size=hf",
            "init.kind=hf",
            f"init.path={minilm}",
            "train.epochs=1",
            "train.batch_size=32",
            "train.max_length=128",
            "train.lr=5e-5",
            "train.eval_every=100000",
            "train.eval_batch_size=128",
        ]
    else:
        spec = f"{tree}/configs/glue/study_minilm.py:fp:stsb"
        sets = ["train.epochs=1", *(extra or [])]
    cmd = [
        sys.executable,
        "-m",
        "bipft_jax.cli",
        "finetune",
        "--config",
        spec,
        "--workdir",
        str(work),
        *[f"--config.{s}" for s in sets],
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "XLA_FLAGS": ""}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    return seconds


def glue_epoch_torch(minilm: str) -> float:
    """Wall seconds of a plain PyTorch loop: read + tokenize STS-B, 1 epoch (per-batch padding,
    AdamW, linear warm-up/decay, clip 1.0), evaluate dev."""
    from fp_reference_torch import finetune_torch

    return finetune_torch(minilm, "stsb", seed=0, epochs=1.0, max_length=128)["wall_s"]


# ----------------------------------------------------------------------------- report


def write(res: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_vs_torch.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Training speed: bipft_jax vs Hugging Face transformers + PyTorch (CPU)",
        "",
        f"Machine: {res['machine']}; torch {res['torch']} and XLA both on 2 threads; JAX "
        f"{res['jax']}. 1-min load average before/after: {res['load']}. MiniLM-L6-H384 "
        f"sizes, batch {B} x {L}; medians of {res['rounds']} interleaved rounds. Parts run "
        f"last: {', '.join(res.get('parts_rerun', []))} (the others from an earlier run of this "
        "script on the same machine).",
        "",
    ]
    for key, title in (
        ("finetune", "(a) Fine-tuning step"),
        ("pretrain", "(b) Pretraining step with a frozen FP teacher"),
    ):
        if key not in res:
            continue
        lines += [f"## {title}", "", "| contender | median step (s) | x PyTorch |", "|---|---|---|"]
        lines += [
            f"| {k} | {v['median_s']:.3f} | {v['ratio_to_torch']:.2f} |"
            for k, v in res[key].items()
        ]
        lines.append("")
    if "glue_epoch" in res:
        g = res["glue_epoch"]
        lines += [
            "## (c) One STS-B epoch end to end (read, tokenize, train, evaluate dev)",
            "",
            "| contender | wall (s) | train examples/s |",
            "|---|---|---|",
        ]
        for k, v in g["seconds"].items():
            lines.append(f"| {k} | {v:.1f} | {g['train_rows'] / v:.1f} |")
        lines.append("")
    lines += [
        "Goals (issue #13): FP step <= 1.0x PyTorch; every binary preset <= 1.25x PyTorch FP; "
        "the GLUE epoch >= 3x faster than before (baseline tree)."
    ]
    (RESULTS / "train_vs_torch.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default="finetune,pretrain,glue")
    ap.add_argument("--baseline-tree", default="", help="an older checkout for (c)'s 'today' row")
    ap.add_argument(
        "--keep-other-parts",
        action="store_true",
        help="keep the parts not in --parts from the existing results file (from an earlier run)",
    )
    a = ap.parse_args()
    import jax
    import torch

    torch.set_num_threads(2)
    from binary_linear import cpu_info

    from bipft_jax.paths import resolve_model_dir

    parts = a.parts.split(",")
    old = RESULTS / "train_vs_torch.json"
    kept = json.loads(old.read_text()) if old.exists() and a.keep_other_parts else {}
    res: dict = {k: v for k, v in kept.items() if k in ("finetune", "pretrain", "glue_epoch")}
    res.update(
        {
            "machine": cpu_info()["model_name"],
            "torch": torch.__version__,
            "jax": jax.__version__,
            "rounds": a.rounds,
            "load": [round(os.getloadavg()[0], 2)],
            "parts_rerun": parts,
        }
    )
    methods = ("fp", "bibert", "bit", "bipft")
    if "finetune" in parts:
        contenders = {"torch": torch_finetune_step()}
        contenders.update({f"bipft_jax {m}": jax_finetune_step(m) for m in methods})
        res["finetune"] = interleaved_vs_torch(contenders, a.rounds)
        write(res)
    if "pretrain" in parts:
        contenders = {"torch": torch_pretrain_step()}
        contenders["bipft_jax fp, MLM on all 128 positions"] = jax_pretrain_step("fp", L)
        contenders.update({f"bipft_jax {m}": jax_pretrain_step(m, N_PRED) for m in methods})
        res["pretrain"] = interleaved_vs_torch(contenders, a.rounds)
        write(res)
    if "glue" in parts:
        minilm = resolve_model_dir("minilm")
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"train_vs_torch_{os.getpid()}"
        seconds = {
            "PyTorch loop": glue_epoch_torch(minilm),
            "bipft finetune": glue_epoch_ours(ROOT, work / "ours", minilm, False),
            "bipft finetune, train.group_by_length=50": glue_epoch_ours(
                ROOT, work / "grouped", minilm, False, ["train.group_by_length=50"]
            ),
        }
        if a.baseline_tree:
            tree = Path(a.baseline_tree)
            seconds["bipft finetune, baseline tree"] = glue_epoch_ours(
                tree, work / "base", minilm, True
            )
        res["glue_epoch"] = {"seconds": seconds, "train_rows": 5749}
        write(res)
    res["load"].append(round(os.getloadavg()[0], 2))
    write(res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
