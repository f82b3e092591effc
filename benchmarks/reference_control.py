"""End-to-end control: bipft_jax's BiT preset against the BiT reference code, whole training runs.

    python benchmarks/reference_control.py --bit-repo /path/to/facebookresearch-bit \\
        [--tasks rte,stsb] [--seeds 1,2,3] [--budgets study,bit] [--sides ours,reference] \\
        [--workdir workdir/reference_control]

Both sides start from the same weights: the FP MiniLM-L6-H384 fine-tuned on the task by
bipft_jax (the GLUE study's FP recipe, seed 1), exported to a Hugging Face directory that is the
teacher and the student's initialisation on both sides. Both train a W1A1 BiT student with BiT's
recipe (BertAdam, 10% warm-up, weight decay 0.01, α lr 1e-4, KD on logits + hidden states, the
teacher and the student in train mode, ReLU FFN, rows padded to max length) on the same rows in
the same order (the reference's sampler is given bipft_jax's order), and are evaluated once per
epoch and after the last step, scored by one metric function. Budgets:
- ``study``: the GLUE study's (3 epochs, batch 32, lr 2e-4, max length 128);
- ``bit``: BiT's own (`bipft_jax.glue.recipes`, e.g. RTE 20 epochs, batch 8, lr 5e-4), evaluated
  per epoch instead of every 100 steps.
The reference side runs `benchmarks/reference_bit_worker.py` (the reference's own model and
training code, imported from ``--bit-repo``; nothing of it is copied here). Every finished run is
written at once to `benchmarks/results/reference_control/` and skipped when rerun, so the control
resumes run by run; the tables (`reference_control.{md,json,png}`) are rebuilt after each run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "reference_control"
SIDES = ("ours", "reference")


def budget_recipe(budget: str, task: str) -> dict:
    """epochs, batch_size, lr, max_length of a budget (one recipe for both sides)."""
    if budget == "study":
        return dict(epochs=3, batch_size=32, lr=2e-4, max_length=128)
    if budget == "bit":
        from bipft_jax.glue.recipes import task_recipe

        r = task_recipe("bit", task)
        return dict(epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"],
                    max_length=r["max_length"])  # fmt: skip
    raise SystemExit(f"--budgets: unknown budget {budget!r} (study, bit)")


def _bipft(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "bipft_jax.cli", *args]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed (exit {done.returncode}); see {log}")


def teacher_dir(task: str, workdir: Path) -> Path:
    """The task's FP teacher as a Hugging Face directory both sides load (trained once)."""
    from bipft_jax import paths

    base = workdir / f"teacher_{task}"
    out = base / "hf"
    if (out / "pytorch_model.bin").is_file():
        return out
    if not (base / "train" / "results.json").is_file():
        _bipft("finetune", "--config", f"configs/glue/study_minilm.py:fp:{task}",
               "--workdir", str(base / "train"), "--config.seed=1", "--config.init.path=minilm",
               log=base.with_suffix(".log"))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    _bipft("export", "--format", "hf", "--checkpoint", str(base / "train" / "0_fp" / "final"),
           "--out", str(out), "--vocab", str(paths.default_vocab_file()),
           log=base.with_suffix(".log"))  # fmt: skip
    import torch
    from safetensors.torch import load_file

    state = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(f))
    torch.save(state, out / "pytorch_model.bin")  # the reference loads this name only
    shutil.copy(paths.default_vocab_file(), out / "vocab.txt")
    return out


def _curve(side: str, run_dir: Path, per_epoch: int) -> tuple[list, dict | None]:
    """[(epoch, metrics)] at each epoch's end and the teacher's metrics, from a finished run."""
    if side == "reference":
        c = json.loads((run_dir / "curve.json").read_text())
        evals = [e for e in c["evals"] if e["who"] == "student"]
        teacher = next((e["metrics"] for e in c["evals"] if e["who"] == "teacher"), None)
        points = {e["step"] // per_epoch: e["metrics"] for e in evals
                  if e["step"] and e["step"] % per_epoch == 0}  # fmt: skip
        return sorted(points.items()), teacher
    r = json.loads((run_dir / "results.json").read_text())["result"]
    return [(h["step"] // per_epoch, h["metrics"]["dev"]) for h in r["history"]], None


def _train_losses(side: str, run_dir: Path) -> dict[str, list[float]]:
    """Per-step training losses (total and logit-KD term), step 1 first; empty when the run did
    not record every step (runs made before the control logged them)."""
    if side == "reference":
        return json.loads((run_dir / "curve.json").read_text()).get("train_losses", {})
    rows = {}
    for f in run_dir.glob("*/metrics.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if "train/loss" in r:
                rows[r["step"]] = r
    if not rows or sorted(rows) != list(range(1, max(rows) + 1)):
        return {}
    return {k: [rows[i][f"train/{k}"] for i in sorted(rows)] for k in ("loss", "logit_kd")}


def run_one(a, budget: str, task: str, seed: int, side: str, teacher: Path) -> dict:
    from bipft_jax.glue import data as glue_data

    rec = budget_recipe(budget, task)
    run_dir = a.workdir / budget / task / f"{side}_s{seed}"
    n_rows = {"rte": 2490, "stsb": 5749, "cola": 8551, "sst2": 67349}[task]
    per_epoch = glue_data.steps_per_epoch(n_rows, rec["batch_size"])
    t0 = time.time()
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if side == "ours":
        _bipft("finetune", "--config", f"configs/glue/bit_reference.py:{task}",
               "--workdir", str(run_dir), f"--config.seed={seed}",
               f"--config.init.path={teacher}", f"--config.kd.teacher_path={teacher}",
               f"--config.train.epochs={rec['epochs']}", "--config.train.max_steps=0",
               f"--config.train.batch_size={rec['batch_size']}", f"--config.train.lr={rec['lr']}",
               f"--config.train.max_length={rec['max_length']}", "--config.train.eval_every=0",
               "--config.train.log_every=1", log=log)  # fmt: skip
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "reference_bit_worker.py"),
               "--bit-repo", str(a.bit_repo), "--task", task, "--seed", str(seed),
               "--model", str(teacher), "--out", str(run_dir), "--epochs", str(rec["epochs"]),
               "--batch-size", str(rec["batch_size"]), "--lr", str(rec["lr"]),
               "--max-length", str(rec["max_length"]), "--threads", str(a.threads)]  # fmt: skip
        with log.open("a") as f:
            if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"reference run failed; see {log}")
    curve, teacher_metrics = _curve(side, run_dir, per_epoch)
    out = {"budget": budget, "task": task, "seed": seed, "side": side, **rec,
           "steps_per_epoch": per_epoch, "curve": [{"epoch": e, "metrics": m} for e, m in curve],
           "teacher_metrics": teacher_metrics, "train_losses": _train_losses(side, run_dir),
           "wall_s": round(time.time() - t0, 1)}  # fmt: skip
    if side == "reference":
        c = json.loads((run_dir / "curve.json").read_text())
        out["token_ids_equal"] = c["token_ids_equal"]
        out["torch"] = c["torch"]
    return out


# ----------------------------------------------------------------------------- tables


def welch(x: list[float], y: list[float]) -> tuple[float, float]:
    """Welch's two-sample t statistic and two-sided p (NaN with fewer than 2 per side)."""
    from scipy import stats

    if len(x) < 2 or len(y) < 2 or (np.std(x) == 0 and np.std(y) == 0):
        return float("nan"), float("nan")
    t, p = stats.ttest_ind(x, y, equal_var=False)
    return float(t), float(p)


def _fmt(vals: list[float], spec: str = ".1f") -> str:
    if not vals:
        return "—"
    return f"{statistics.median(vals):{spec}} [{min(vals):{spec}}, {max(vals):{spec}}]"


def epoch_means(losses: list[float], per_epoch: int) -> list[float]:
    """Mean training loss of each whole epoch."""
    n = len(losses) // per_epoch
    return [float(np.mean(losses[e * per_epoch : (e + 1) * per_epoch])) for e in range(n)]


def loss_comparison(cell: list[dict]) -> dict:
    """The training-loss control of one (budget, task): per seed with per-step losses on both
    sides, each epoch's mean total loss per side and their paired difference (same rows, same
    order, same start: the sides differ only in dropout draws and rounding), and Welch's test
    on the last epoch's mean over seeds."""
    by_seed: dict[int, dict] = {}
    for r in cell:
        if r.get("train_losses", {}).get("loss"):
            by_seed.setdefault(r["seed"], {})[r["side"]] = r
    seeds = sorted(s for s, sides in by_seed.items() if len(sides) == len(SIDES))
    out: dict = {"seeds": seeds, "per_seed": {}}
    last = {side: [] for side in SIDES}
    for seed in seeds:
        means = {side: epoch_means(by_seed[seed][side]["train_losses"]["loss"],
                                   by_seed[seed][side]["steps_per_epoch"])
                 for side in SIDES}  # fmt: skip
        diff = [o - f for o, f in zip(means["ours"], means["reference"], strict=False)]
        out["per_seed"][seed] = {**means, "ours_minus_reference": diff}
        for side in SIDES:
            last[side].append(means[side][-1])
    t, p = welch(last["ours"], last["reference"])
    out.update(last_epoch=last, welch_t=t, welch_p=p)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (budget, task): both sides' final/best dev score ×100 over seeds, the
    per-epoch median curve, and the verdict of Welch's test on the final scores."""
    rows = []
    for budget, task in sorted({(r["budget"], r["task"]) for r in runs}):
        cell = [r for r in runs if r["budget"] == budget and r["task"] == task]
        row: dict = {"budget": budget, "task": task, "sides": {}}
        for side in SIDES:
            rs = sorted((r for r in cell if r["side"] == side), key=lambda r: r["seed"])
            final = [100 * r["curve"][-1]["metrics"]["main"] for r in rs]
            best = [100 * max(p["metrics"]["main"] for p in r["curve"]) for r in rs]
            epochs = sorted({p["epoch"] for r in rs for p in r["curve"]})
            curve = {e: statistics.median(100 * p["metrics"]["main"] for r in rs
                                          for p in r["curve"] if p["epoch"] == e)
                     for e in epochs}  # fmt: skip
            one_class = [r["seed"] for r in rs if r["curve"][-1]["metrics"].get("one_class")]
            row["sides"][side] = {"seeds": [r["seed"] for r in rs], "final": final, "best": best,
                                  "curve": curve, "one_class_final": one_class,
                                  "wall_s": [r["wall_s"] for r in rs]}  # fmt: skip
        row["train_loss"] = loss_comparison(cell)
        o, f = row["sides"]["ours"]["final"], row["sides"]["reference"]["final"]
        t, p = welch(o, f)
        row["welch_t"], row["welch_p"] = t, p
        if math.isnan(p):
            row["verdict"] = "not enough seeds on both sides for a test"
        elif p < 0.05:
            row["verdict"] = f"differ (p = {p:.3f}): find the cause"
        else:
            row["verdict"] = f"not distinguishable from seed noise (p = {p:.2f})"
        rows.append(row)
    return rows


def write_tables(results_dir: Path, meta: dict) -> None:
    """Rebuild `<results>/reference_control.{md,json,png}` from every run file in ``results_dir``
    (so several control processes, e.g. one per side, can share it)."""
    runs = [json.loads(f.read_text()) for f in sorted(results_dir.glob("*.json"))]
    if not runs:
        return
    results = results_dir.parent
    meta = {**meta, "torch": next((r["torch"] for r in runs if "torch" in r), "?")}
    rows = summarise(runs)
    (results / f"{NAME}.json").write_text(json.dumps({**meta, "rows": rows, "runs": runs},
                                                     indent=2) + "\n")  # fmt: skip
    lines = [
        "# End-to-end control: bipft_jax BiT vs the BiT reference code",
        "",
        "`benchmarks/reference_control.py`: the same FP MiniLM teacher/initialisation, the same "
        "rows in the same order, BiT's recipe on both sides (BertAdam, KD on logits + hidden "
        "states, W1A1, ReLU FFN, rows padded to max length); dev score ×100 (RTE accuracy, "
        "STS-B Pearson), median [min, max] over seeds, final = after the last step, best = best "
        "per-epoch evaluation. Verdict: Welch's two-sample t-test on the final scores.",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']} (reference side), "
        f"jax {meta['jax']}. Walls are not comparable between sides: the two sides of a "
        "control may run at once, each pinned to one core, beside other work.",
        "",
        "| budget | task | side | seeds | final | best | per-epoch median | one-class (final) "
        "| wall per run | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for side in SIDES:
            s = row["sides"][side]
            curve = " → ".join(f"{v:.1f}" for v in s["curve"].values()) or "—"
            wall = f"{statistics.median(s['wall_s']):.0f} s" if s["wall_s"] else "—"
            verdict = row["verdict"] if side == "ours" else ""
            lines.append(
                f"| {row['budget']} | {row['task']} | {side} | "
                f"{','.join(map(str, s['seeds'])) or '—'} | {_fmt(s['final'])} | "
                f"{_fmt(s['best'])} | {curve} | {','.join(map(str, s['one_class_final'])) or '—'} "
                f"| {wall} | {verdict} |"
            )
    lines += ["", "## Training loss, step by step", "",
              "Mean total training loss (logit KD + hidden-state MSE) per epoch, both sides "
              "on the same rows in the same order from the same weights; the difference is "
              "paired by seed. Welch's test on the last epoch's mean over seeds. Runs made "
              "before the control recorded every step's loss are left out.", "",
              "| budget | task | seed | ours per epoch | reference per epoch | ours − reference |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        tl = row["train_loss"]
        for seed, m in tl["per_seed"].items():
            lines.append(f"| {row['budget']} | {row['task']} | {seed} | "
                         + " | ".join(" → ".join(f"{v:.4f}" for v in m[k])
                                      for k in ("ours", "reference", "ours_minus_reference"))
                         + " |")  # fmt: skip
        if tl["seeds"]:
            p = tl["welch_p"]
            lines.append(f"| {row['budget']} | {row['task']} | last epoch, Welch | "
                         f"{_fmt(tl['last_epoch']['ours'], '.4f')} | "
                         f"{_fmt(tl['last_epoch']['reference'], '.4f')}"
                         f" | p = {p:.2f} |")  # fmt: skip
    toks = [r["token_ids_equal"] for r in runs if "token_ids_equal" in r]
    if toks:
        lines += ["", f"Training rows whose token ids equal on both sides: "
                      f"{100 * min(toks):.2f}% (lowest over reference runs)."]  # fmt: skip
    (results / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, results / f"{NAME}.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(4.5 * max(len(rows), 1), 3.4),
                             squeeze=False)  # fmt: skip
    for ax, row in zip(axes[0], rows, strict=False):
        for side, style in zip(SIDES, ("-o", "--s"), strict=True):
            c = row["sides"][side]["curve"]
            if c:
                ax.plot(list(c), list(c.values()), style, label=side)
        ax.set_title(f"{row['task']} ({row['budget']} budget)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev ×100 (median over seeds)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bit-repo", type=Path, required=True, help="facebookresearch/bit checkout")
    ap.add_argument("--tasks", default="rte,stsb")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--budgets", default="study,bit")
    ap.add_argument("--sides", default="ours,reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=ROOT / "workdir" / NAME)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    import jax
    from binary_linear import cpu_info

    a.workdir = a.workdir.resolve()
    results_dir = a.results / NAME
    results_dir.mkdir(parents=True, exist_ok=True)
    meta = {"machine": cpu_info()["model_name"], "jax": jax.__version__}
    for budget in a.budgets.split(","):
        for task in a.tasks.split(","):
            teacher = teacher_dir(task, a.workdir)
            for seed in (int(s) for s in a.seeds.split(",")):
                for side in a.sides.split(","):
                    if side not in SIDES:
                        raise SystemExit(f"--sides: unknown side {side!r} ({', '.join(SIDES)})")
                    f = results_dir / f"{budget}__{task}__{side}__s{seed}.json"
                    if f.is_file():
                        continue
                    print(f"[control] {budget} {task} {side} seed {seed} ...", flush=True)
                    run = run_one(a, budget, task, seed, side, teacher)
                    f.write_text(json.dumps(run, indent=2) + "\n")
                    write_tables(results_dir, meta)  # every run on disk (other processes' too)
                    print(f"[control] done {f.name}: final "
                          f"{100 * run['curve'][-1]['metrics']['main']:.1f} in "
                          f"{run['wall_s']:.0f} s", flush=True)  # fmt: skip
    write_tables(results_dir, meta)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
