"""Sections of the study tables that judge binary runs: one-class runs, the paper-budget target,
and the study-budget numbers beside another study's (`study_table.to_markdown` adds them).

A run "predicts one class" when every dev row gets the same label (`one_class` of
`data.glue_metrics.collapse_metrics`); its `margin_auc` tells whether the logits still rank the
rows (AUC > 0.5: signal below the threshold) or not (≈ 0.5: nothing learned).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The paper-budget target (issue #25): the papers' binary/FP retention applied to our FP row.
TARGET = {"stsb/pearson": 50.0, "rte/accuracy": 52.0}
CLASSIFICATION = ("cola", "sst2", "rte", "mrpc", "qnli", "qqp", "mnli")


def _dev(rec: dict, which: str) -> dict[str, float]:
    return next(iter(rec[which]["metrics"].values()))


def one_class_runs(records: list[dict]) -> dict[str, Any]:
    """Classification runs whose final checkpoint predicts one class, and those that predate
    the record (no `one_class` key: scored before the collapse diagnostics existed)."""
    flagged, unknown = [], []
    for r in records:
        if r["task"] not in CLASSIFICATION or r["row"] == "fp":
            continue
        m = _dev(r, "final")
        if "one_class" not in m:
            unknown.append(r["run"])
        elif m["one_class"]:
            flagged.append({"run": r["run"], "margin_auc": m.get("margin_auc")})
    return {"one_class": flagged, "not_recorded": unknown}


def target_check(summary: dict, records: list[dict]) -> dict[str, Any]:
    """Whether the best binary row reaches each `TARGET` (final checkpoint, median over seeds)
    and no binary CoLA run predicts one class."""
    binary = {row: d for row, d in summary.items() if row != "fp"}
    parts: dict[str, Any] = {}
    for key, want in TARGET.items():
        got = {row: d["final"][key]["median"] for row, d in binary.items() if key in d["final"]}
        if got:
            best = max(got, key=got.__getitem__)
            parts[key] = {"want": want, "best_row": best, "best": got[best],
                          "met": got[best] >= want}  # fmt: skip
    cola = [r for r in records if r["task"] == "cola" and r["row"] != "fp"]
    if cola:
        flat = [r["run"] for r in cola if _dev(r, "final").get("one_class", 1.0)]
        parts["cola/no_one_class"] = {"runs": len(cola), "one_class": flat, "met": not flat}
    met = all(p["met"] for p in parts.values()) if parts else None
    return {"parts": parts, "met": met}


def diagnosis(tc: dict, records: list[dict], oc: dict) -> str:
    """Why the target was missed, from the records: for each missed score, how many of the best
    row's runs were still improving at their last evaluation; for one-class runs, whether the
    logits still rank the rows (margin AUC > 0.55) or carry no signal."""
    out = []
    for key, p in tc["parts"].items():
        if p["met"] or key == "cola/no_one_class":
            continue
        task = key.split("/")[0]
        runs = [r for r in records if r["row"] == p["best_row"] and r["task"] == task]
        late = sum(r["best"]["step"] == r["steps"] for r in runs)
        out.append(f"{key} reached {p['best']:.1f} (< {p['want']:g}); in {late} of {len(runs)} "
                   "of the best row's runs the best checkpoint is the last one (still learning "
                   "when the budget ran out)")  # fmt: skip
    flat = oc["one_class"]
    if flat:
        ranked = sum((x["margin_auc"] or 0.0) > 0.55 for x in flat)
        out.append(f"{len(flat)} binary runs predict one class; in {ranked} of them the margin "
                   "AUC is above 0.55 (the logits rank the rows, the threshold sits outside "
                   "them), in the others there is no signal")  # fmt: skip
    return "; ".join(out) + "." if out else "see the tables above."


def compare_summary(path: str) -> dict | None:
    """The `summary` of another study's results json (the study budget beside the paper's)."""
    f = Path(path)
    return json.loads(f.read_text())["summary"] if path and f.is_file() else None


def markdown(
    summary: dict, records: list[dict], other: dict | None, titles: dict, target: bool = False
) -> list[str]:
    """The judging sections as Markdown lines: one-class runs always; the target when
    ``target``; the other study's numbers beside when ``other`` is given."""
    lines: list[str] = []
    oc = one_class_runs(records)
    lines += ["## One-class runs (final checkpoint, binary rows)", ""]
    if oc["one_class"]:
        runs = [f"{x['run']} (margin AUC {x['margin_auc']:.2f})" for x in oc["one_class"]]
        lines.append("Every dev row gets the same label in: " + ", ".join(runs) + ".")
    else:
        lines.append("No recorded binary classification run predicts a single class.")
    if oc["not_recorded"]:
        lines.append(f"{len(oc['not_recorded'])} runs predate the collapse record (scored "
                     "before 2026-12-07): their class shares are not known here.")  # fmt: skip
    lines.append("")
    if target:
        tc = target_check(summary, records)
        lines += ["## Target (best binary row, final checkpoint, median over seeds)", ""]
        for key, p in tc["parts"].items():
            if key == "cola/no_one_class":
                lines.append(f"- no binary CoLA run predicts one class: {len(p['one_class'])} of "
                             f"{p['runs']} do — {'met' if p['met'] else 'not met'}")  # fmt: skip
            else:
                lines.append(f"- {key} ≥ {p['want']:g}: best {p['best']:.1f} "
                             f"({titles.get(p['best_row'], p['best_row'])}) — "
                             f"{'met' if p['met'] else 'not met'}")  # fmt: skip
        verdict = {True: "met", False: "not met", None: "no finished runs yet"}[tc["met"]]
        lines += ["", f"Target: **{verdict}**."]
        if tc["met"] is False:
            lines += ["", "Diagnosis: " + diagnosis(tc, records, oc)]
        lines.append("")
    if other is not None:
        lines += ["## Beside the study budget (final, median ×100; paper budget / study budget)",
                  ""]  # fmt: skip
        keys = sorted({k for d in summary.values() for k in d["final"] if "/" in k})
        lines += ["| row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row, d in summary.items():
            base = row.removesuffix("_hi")
            cells = []
            for k in keys:
                ours = d["final"].get(k, {}).get("median")
                theirs = other.get(base, {}).get("final", {}).get(k, {}).get("median")
                cells.append(f"{'—' if ours is None else f'{ours:.1f}'} / "
                             f"{'—' if theirs is None else f'{theirs:.1f}'}")  # fmt: skip
            lines.append(f"| {titles.get(row, row)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
