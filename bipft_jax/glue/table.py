"""Aggregate sweep results into the papers' table: Markdown, CSV and a PNG bar plot.

Per preset and score column (MNLI gives `mnli_m` and `mnli_mm`): the learning rate with the
best median over seeds, then the median and best over seeds, for the best-dev checkpoint and
the final one. Scores are ×100. The GLUE averages follow both conventions of
`glue_metrics.CONVENTIONS`, each labelled, and say how many of their columns were present.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bipft_jax.data.glue_metrics import CONVENTIONS

CKPTS = ("best", "final")


def score_columns(task: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """{column: main metric ×100} of one checkpoint's metrics (per dev split)."""
    if task == "mnli":
        return {
            "mnli_m": 100 * metrics["dev_matched"]["main"],
            "mnli_mm": 100 * metrics["dev_mismatched"]["main"],
        }
    return {task: 100 * next(iter(metrics.values()))["main"]}


def collect(runs: Sequence[tuple[Any, Path]]) -> dict:
    """{(preset, column, ckpt): {lr: [score per seed]}} from finished runs' results.json."""
    table: dict = defaultdict(lambda: defaultdict(list))
    for run, path in runs:
        if not path.is_file():
            continue
        result = json.loads(path.read_text())["result"]
        for ckpt in CKPTS:
            for col, value in score_columns(run.task, result[ckpt]["metrics"]).items():
                table[(run.preset, col, ckpt)][result["lr"]].append(value)
    return table


def summarize(table: dict) -> list[dict]:
    """One row per (preset, column, ckpt): chosen lr (best median), seeds, median, best."""
    rows = []
    for (preset, col, ckpt), by_lr in sorted(table.items()):
        lr, scores = max(by_lr.items(), key=lambda kv: statistics.median(kv[1]))
        rows.append(dict(preset=preset, column=col, checkpoint=ckpt, lr=lr, seeds=len(scores),
                         median=statistics.median(scores), best=max(scores)))  # fmt: skip
    return rows


def averages(rows: list[dict]) -> list[dict]:
    """GLUE averages of the medians and bests, per preset, checkpoint and convention."""
    out = []
    for preset in sorted({r["preset"] for r in rows}):
        for ckpt in CKPTS:
            have = {
                r["column"]: r for r in rows if r["preset"] == preset and r["checkpoint"] == ckpt
            }
            for name, (keys, label) in CONVENTIONS.items():
                present = [k for k in keys if k in have]
                if not present:
                    continue
                note = "" if len(present) == len(keys) else f" [{len(present)}/{len(keys)} present]"
                med = statistics.mean(have[k]["median"] for k in present)
                top = statistics.mean(have[k]["best"] for k in present)
                out.append(dict(preset=preset, column=f"avg_{name}", checkpoint=ckpt, lr="",
                                seeds="", label=label + note, median=med, best=top))  # fmt: skip
    return out


def markdown(rows: list[dict], avgs: list[dict]) -> str:
    cols = sorted({r["column"] for r in rows})
    conv = sorted({a["column"] for a in avgs})
    index = {(r["preset"], r["column"], r["checkpoint"]): r for r in [*rows, *avgs]}
    lines = []
    for ckpt in CKPTS:
        lines += [f"### {ckpt} checkpoint: median / best over seeds (×100)", ""]
        head = ["preset", *cols, *conv]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for preset in sorted({r["preset"] for r in rows}):
            cells = [preset]
            for c in [*cols, *conv]:
                r = index.get((preset, c, ckpt))
                cells.append("–" if r is None else f"{r['median']:.1f} / {r['best']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Averages:")
    for a in {a["column"]: a for a in avgs}.values():
        lines.append(f"- `{a['column']}`: {a['label']}")
    lrs = [f"{r['preset']}/{r['column']}: lr {r['lr']:g} ({r['seeds']} seeds)"
           for r in rows if r["checkpoint"] == "best"]  # fmt: skip
    lines += ["", "Chosen learning rate (best median over seeds): " + "; ".join(lrs), ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path | None:
    """Grouped bars (median of the best checkpoint) with a marker at the best seed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sweep: matplotlib is not installed (pip install matplotlib, see "
              "requirements-test.txt); the PNG plot is skipped")  # fmt: skip
        return None
    best = [r for r in rows if r["checkpoint"] == "best"]
    cols = sorted({r["column"] for r in best})
    presets = sorted({r["preset"] for r in best})
    width = 0.8 / len(presets)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(cols), 4))
    for i, preset in enumerate(presets):
        by_col = {r["column"]: r for r in best if r["preset"] == preset}
        xs = [j + i * width for j, c in enumerate(cols) if c in by_col]
        ax.bar(xs, [by_col[c]["median"] for c in cols if c in by_col], width, label=preset)
        ax.scatter(xs, [by_col[c]["best"] for c in cols if c in by_col], color="k", s=8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols)
    ax.set_ylabel("dev score ×100 (bar: median, dot: best seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def aggregate(root: Path, runs: Sequence[tuple[Any, Path]], output: str) -> dict:
    """Write `<root>/<output>.{md,csv,png}`; returns their paths (png None without matplotlib)."""
    rows = summarize(collect(runs))
    if not rows:
        return {"markdown": None, "csv": None, "png": None}
    avgs = averages(rows)
    root.mkdir(parents=True, exist_ok=True)
    md, csv_path = root / f"{output}.md", root / f"{output}.csv"
    md.write_text(markdown(rows, avgs))
    fields = ["preset", "column", "checkpoint", "lr", "seeds", "median", "best", "label"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in [*rows, *avgs]:
            writer.writerow({k: r.get(k, "") for k in fields})
    png = plot(rows, root / f"{output}.png")
    return {"markdown": str(md), "csv": str(csv_path), "png": None if png is None else str(png)}
