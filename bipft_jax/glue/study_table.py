"""Tables of the GLUE study: `<results>.{json,md,png}` from the per-run records.

Scores are ×100. Every cell is the median over seeds with [min, max], for the final and the
best-on-dev checkpoint. Averages over the study's tasks, computed per seed then summarised:
  avg (paper)  one number per task, the first metric of the papers' tables: CoLA MCC, SST-2 and
               RTE accuracy, STS-B Pearson;
  avg (GLUE)   the GLUE-server task score: STS-B (Pearson + Spearman)/2, the others as above.
(The other split between the papers' averages, MNLI-m/-mm counted once or twice, does not arise:
MNLI is not in this study.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bipft_jax.glue import study_targets

# task -> (column title, metric keys shown)
TASKS = {
    "cola": ("CoLA MCC", ("mcc",)),
    "sst2": ("SST-2 acc", ("accuracy",)),
    "stsb": ("STS-B P/S", ("pearson", "spearman")),
    "rte": ("RTE acc", ("accuracy",)),
    "mrpc": ("MRPC acc/F1", ("accuracy", "f1")),
    "qnli": ("QNLI acc", ("accuracy",)),
}
PAPER_METRIC = {"cola": "mcc", "stsb": "pearson", "mrpc": "accuracy", "qqp": "accuracy"}
GLUE_METRIC = {"cola": "mcc", "stsb": "combined", "mrpc": "combined", "qqp": "combined"}
ROW_TITLES = {
    "fp": "FP MiniLM (fine-tuned)",
    "bibert": "BiBERT task-specific (FP teacher, DMD)",
    "bit": "BiT task-specific (FP teacher, BiT KD)",
    "bipft_a": "BiPFT-A (binary-pretrained, no estimators)",
    "bipft_b": "BiPFT-B (binary-pretrained, estimators)",
    "bipft_a_hi": "BiPFT-A at the study's lr 2e-4",
    "bipft_b_hi": "BiPFT-B at the study's lr 2e-4",
}
# The PyTorch reference measurement of the FP recipe on this machine kind (environment.md).
FP_REFERENCE = {"cola": {"mcc": 25.6}, "sst2": {"accuracy": 87.0},
                "stsb": {"pearson": 84.7, "spearman": 85.0}, "rte": {"accuracy": 58.1}}  # fmt: skip


def _dev(rec: dict, which: str) -> dict[str, float]:
    return next(iter(rec[which]["metrics"].values()))


def task_score(task: str, metrics: dict[str, float], convention: str) -> float:
    table = PAPER_METRIC if convention == "paper" else GLUE_METRIC
    return 100.0 * metrics[table.get(task, "accuracy")]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "n": len(v), "values": [float(x) for x in v]}  # fmt: skip


def summarise(records: list[dict], tasks: Sequence[str]) -> dict:
    """{row: {which: {task/metric or avg: stats}}} over seeds, for final and best checkpoints."""
    out: dict[str, Any] = {}
    main = [r for r in records if r.get("pretrain_fraction") in (None, 1.0)]
    for row in sorted({r["row"] for r in main}, key=lambda x: list(ROW_TITLES).index(x)):
        recs = [r for r in main if r["row"] == row]
        out[row] = {}
        for which in ("final", "best"):
            cells: dict[str, Any] = {}
            for task in tasks:
                got = [r for r in recs if r["task"] == task]
                for m in TASKS[task][1]:
                    if got:
                        cells[f"{task}/{m}"] = _stats([100 * _dev(r, which)[m] for r in got])
            for conv in ("paper", "glue"):
                per_seed = _seed_averages(recs, tasks, which, conv)
                if per_seed:
                    cells[f"avg_{conv}"] = _stats(per_seed)
            out[row][which] = cells
        out[row]["cost"] = _cost(recs)
    return out


def _seed_averages(recs: list[dict], tasks: Sequence[str], which: str, conv: str) -> list[float]:
    """One task average per seed that finished every task."""
    avgs = []
    for seed in sorted({r["seed"] for r in recs}):
        by_task = {r["task"]: r for r in recs if r["seed"] == seed}
        if all(t in by_task for t in tasks):
            avgs.append(float(np.mean([task_score(t, _dev(by_task[t], which), conv)
                                       for t in tasks])))  # fmt: skip
    return avgs


def _cost(recs: list[dict]) -> dict:
    steps = {r["task"]: r["steps"] for r in recs}
    seconds = [r["finetune_seconds"] for r in recs]
    return {"pretrain_tokens": max((r["pretrain_tokens"] for r in recs), default=0),
            "pretrain_seconds": max((r["pretrain_seconds"] for r in recs), default=0.0),
            "finetune_steps": steps, "finetune_seconds_total": round(sum(seconds), 1),
            "runs": len(recs), "lr": sorted({r["lr"] for r in recs})}  # fmt: skip


def curve(records: list[dict], tasks: Sequence[str]) -> list[dict]:
    """BiPFT-B against its pretraining tokens: final checkpoints, paper convention.

    Every point uses only the seeds that finished every task at every point (the curve seeds),
    so the points compare like for like; the full bipft_b row is in the main table.
    """
    rows = [r for r in records if r["row"] == "bipft_b" and r["pretrain_fraction"] is not None]
    fractions = sorted({r["pretrain_fraction"] for r in rows})
    by_point = {f: [r for r in rows if r["pretrain_fraction"] == f] for f in fractions}
    complete = {f: {s for s in {r["seed"] for r in recs}
                    if all(any(r["seed"] == s and r["task"] == t for r in recs) for t in tasks)}
                for f, recs in by_point.items()}  # fmt: skip
    done = [f for f in fractions if complete[f]]  # a point still running is left out
    seeds = set.intersection(*(complete[f] for f in done)) if len(done) > 1 else set()
    pts = []
    for f in done if seeds else []:
        recs = [r for r in by_point[f] if r["seed"] in seeds]
        per_task = {t: _stats([task_score(t, _dev(r, "final"), "paper") for r in recs
                               if r["task"] == t]) for t in tasks}  # fmt: skip
        avg = _stats(_seed_averages(recs, tasks, "final", "paper"))
        pts.append({"fraction": f, "tokens": max(r["pretrain_tokens"] for r in recs),
                    "seeds": sorted(seeds), "tasks": per_task, "avg_paper": avg})  # fmt: skip
    return pts


def curve_sentence(pts: list[dict]) -> str:
    """One line on the trend: the task average at each share of the pretraining budget."""
    if len(pts) < 2:
        return ""
    steps = " → ".join(f"{p['avg_paper']['median']:.1f} ({p['fraction']:g})" for p in pts)
    gain = pts[-1]["avg_paper"]["median"] - pts[0]["avg_paper"]["median"]
    seeds = ("seeds " if len(pts[0]["seeds"]) > 1 else "seed ") + ", ".join(
        str(s) for s in pts[0]["seeds"]
    )
    return (
        f"BiPFT-B's task average against its share of the pretraining budget: {steps}; "
        f"{gain:+.1f} from {pts[0]['fraction']:g} to {pts[-1]['fraction']:g} "
        f"({seeds}, final checkpoints, paper convention)."
    )


def _cell(s: dict | None) -> str:
    if not s:
        return "—"
    if s["n"] == 1:
        return f"{s['median']:.1f} (1 seed)"
    return f"{s['median']:.1f} [{s['min']:.1f}, {s['max']:.1f}]"


# BiPFT's claims over task-specific binarization (GLUE average, methods.md): pretraining alone
# (BiPFT-A), and the whole method with the residual estimators (BiPFT-B).
PAPER_GAINS = {"bipft_a": 13.9, "bipft_b": 15.4}


def _avg(summary: dict, row: str) -> dict | None:
    return summary.get(row, {}).get("final", {}).get("avg_paper")


def verdict(summary: dict) -> str:
    """Honest sentences on each BiPFT row against the best task-specific binary row."""
    rivals = {r: s for r in ("bibert", "bit") if (s := _avg(summary, r))}
    rows = {r: s for r in PAPER_GAINS if (s := _avg(summary, r))}
    if not rivals or not rows:
        return "Not enough finished runs yet to compare BiPFT with task-specific binarization."
    best = max(rivals, key=lambda r: rivals[r]["median"])
    rival = rivals[best]
    out = []
    for row, own in rows.items():
        gap = own["median"] - rival["median"]
        word = "beats" if gap > 0 else "does not beat"
        overlap = own["min"] <= rival["max"] and rival["min"] <= own["max"]
        spread = " (the seed ranges overlap)" if overlap and min(own["n"], rival["n"]) > 1 else ""
        seeds = min(own["n"], rival["n"])
        note = " — one seed, preliminary" if seeds == 1 else f" — {seeds} seeds"
        out.append(
            f"At this scale {ROW_TITLES[row].split(' (')[0]} {word} the best task-specific binary "
            f"row ({ROW_TITLES[best]}): median task average {own['median']:.1f} vs "
            f"{rival['median']:.1f}, {gap:+.1f}{spread} (paper: +{PAPER_GAINS[row]:.1f}; final "
            f"checkpoints, paper convention{note})."
        )
    return " ".join(out)


def to_markdown(
    summary: dict, pts: list[dict], tasks: Sequence[str], info: dict, judged: Sequence[str] = ()
) -> str:
    cols = [TASKS[t][0] for t in tasks] + ["avg (paper)", "avg (GLUE)"]
    title = "# GLUE study: FP MiniLM vs BiBERT, BiT and BiPFT (W1A1), from the real MiniLM-L6-H384"
    if info.get("budget"):
        title += f" — {info['budget']}"
    lines = [title, "", info.get("about", ""), "", f"**Verdict.** {verdict(summary)}", ""]
    for which, title in (("final", "Final checkpoint"), ("best", "Best dev checkpoint")):
        lines += [f"## {title} (median [min, max] over seeds, ×100)", "",
                  "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]  # fmt: skip
        for row, data in summary.items():
            cells = []
            for t in tasks:
                ms = TASKS[t][1]
                cells.append(" / ".join(_cell(data[which].get(f"{t}/{m}")) for m in ms))
            cells += [_cell(data[which].get("avg_paper")), _cell(data[which].get("avg_glue"))]
            lines.append(f"| {ROW_TITLES.get(row, row)} | " + " | ".join(cells) + " |")
        lines.append("")
    head = (
        "| row | pretraining tokens | pretraining wall | fine-tuning steps per task "
        "| fine-tuning wall (all runs) | runs | lr |"
    )
    lines += ["## Cost per row", "", head, "|---" * 7 + "|"]
    for row, data in summary.items():
        c = data["cost"]
        steps = ", ".join(f"{t} {n}" for t, n in c["finetune_steps"].items())
        lines.append(f"| {ROW_TITLES.get(row, row)} | {c['pretrain_tokens']:,} | "
                     f"{c['pretrain_seconds'] / 3600:.2f} h | {steps} | "
                     f"{c['finetune_seconds_total'] / 3600:.2f} h | {c['runs']} | "
                     f"{', '.join(f'{x:g}' for x in c['lr'])} |")  # fmt: skip
    if pts:
        lines += ["", "## BiPFT-B against pretraining tokens (final checkpoints, paper convention)",
                  "", curve_sentence(pts), ""]  # fmt: skip
        names = [TASKS[t][0].split(" ")[0] for t in tasks]
        lines += ["| pretraining tokens | share of budget | seeds used | " + " | ".join(names)
                  + " | avg (paper) |", "|---" * (len(tasks) + 4) + "|"]  # fmt: skip
        for p in pts:
            cells = [_cell(p["tasks"][t]) for t in tasks] + [_cell(p["avg_paper"])]
            seeds = ", ".join(str(s) for s in p["seeds"])
            lines.append(f"| {p['tokens']:,} | {p['fraction']:g} | {seeds} | " + " | ".join(cells)
                         + " |")  # fmt: skip
    if "fp" in summary:
        lines += ["", "## FP sanity anchor (final, vs the PyTorch reference on this machine kind)",
                  "", "| metric | ours: median [min, max] | PyTorch reference (1 seed) |",
                  "|---|---|---|"]  # fmt: skip
        for t in tasks:
            for m, ref in FP_REFERENCE.get(t, {}).items():
                ours = summary["fp"]["final"].get(f"{t}/{m}")
                lines.append(f"| {t} {m} | {_cell(ours)} | {ref:.1f} |")
        spread = (
            "The reference's own spread over seeds (the same recipe in HF transformers + "
            "PyTorch): `fp_reference_torch.md`, from `benchmarks/fp_reference_torch.py`."
        )
        lines += ["", spread]
    lines += ["", *judged]
    lines += ["## How it was run", "", f"Machine: {json.dumps(info.get('machine', {}))}", ""]
    lines += ["```", info.get("command", ""), "```", "", "One command per row (first seed):", ""]
    lines += ["```"]
    lines += info.get("examples", [])
    lines += ["```", ""]
    return "\n".join(lines)


def plot(summary: dict, pts: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2 if pts else 1, figsize=(11 if pts else 6, 4), squeeze=False)
    ax = axes[0][0]
    rows = [r for r in summary if "avg_paper" in summary[r]["final"]]
    for i, which in enumerate(("final", "best")):
        med = [summary[r][which]["avg_paper"]["median"] for r in rows]
        lo = [m - summary[r][which]["avg_paper"]["min"] for m, r in zip(med, rows, strict=True)]
        hi = [summary[r][which]["avg_paper"]["max"] - m for m, r in zip(med, rows, strict=True)]
        x = np.arange(len(rows)) + (i - 0.5) * 0.35
        ax.bar(x, med, 0.35, yerr=[lo, hi], capsize=3, label=which)
    ax.set_xticks(np.arange(len(rows)), rows)
    ax.set_ylabel("task average (paper convention)")
    ax.set_title("GLUE study: median [min, max] over seeds")
    ax.legend()
    if pts:
        ax2 = axes[0][1]
        t = [p["tokens"] / 1e6 for p in pts]
        for task in pts[0]["tasks"]:
            ax2.plot(t, [p["tasks"][task]["median"] for p in pts], ".--", lw=1, label=task)
        ax2.plot(t, [p["avg_paper"]["median"] for p in pts], "o-k", lw=2, label="average")
        ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax2.set_xlabel("binary pretraining tokens (M)")
        ax2.set_ylabel("BiPFT-B score (paper metric)")
        ax2.set_title("BiPFT-B against pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_tables(results: str | Path, cfg: Any) -> list[Path]:
    """Rebuild `<results>.{json,md,png}` from the run records in the folder `<results>/`."""
    folder = Path(results)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return []
    tasks = [t for t in cfg.tasks if any(r["task"] == t for r in records)]
    summary = summarise(records, tasks)
    pts = curve(records, tasks)
    first: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["seed"], r["run"])):
        first.setdefault(r["row"] if r.get("pretrain_fraction") in (None, 1.0) else r["run"],
                         r["command"])  # fmt: skip
    info = {
        "about": (f"Tasks: {', '.join(tasks)}; seeds per row: {list(cfg.seeds)}; "
                  f"{len(records)} finished fine-tuning runs. Recipe: `{cfg.finetune_config}`; "
                  f"binary pretraining: `{cfg.pretrain_config}` for {cfg.pretrain_steps} steps."),
        "machine": records[-1].get("machine", {}),
        "command": "bipft study --config configs/study/minilm.py"
        + (":paper" if "compare_with" in cfg else "") + " --workdir workdir/study --commit",
        "examples": list(first.values()),
        "budget": "each paper's own fine-tuning budget" if "compare_with" in cfg else "",
    }  # fmt: skip
    paper = "compare_with" in cfg  # the paper-budget study: judged against the target
    other = study_targets.compare_summary(cfg.get("compare_with", ""))
    judged = study_targets.markdown(summary, records, other, ROW_TITLES, target=paper)
    data = {"tasks": tasks, "summary": summary, "curve": pts, "verdict": verdict(summary),
            "one_class": study_targets.one_class_runs(records),
            "target": study_targets.target_check(summary, records) if paper else None,
            "runs": records, **info}  # fmt: skip
    base = folder.parent / folder.name
    out = [base.with_suffix(".json"), base.with_suffix(".md")]
    out[0].write_text(json.dumps(data, indent=2))
    out[1].write_text(to_markdown(summary, pts, tasks, info, judged))
    png = plot(summary, pts, base.with_suffix(".png"))
    return out + ([png] if png else [])
