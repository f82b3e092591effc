"""The table of ``benchmarks/faults.py``: one markdown row per fault, from its JSON fields."""

from __future__ import annotations

import json
from pathlib import Path


def _final(row: dict) -> str:
    f = row.get("final_vs_reference")
    if not f:
        return "-"
    return "bit-exact" if f["bit_exact"] else f"max abs diff {f['max_abs_diff']:.2e}"


def _lines(n: int) -> str:
    return f"{n} stderr line{'' if n == 1 else 's'}"


def _resumed(row: dict) -> tuple[str, str, str]:
    """A run interrupted or damaged, then rerun with the same command."""
    final = _final(row)
    if "eight_devices_throughout_vs_reference" in row:
        control = row["eight_devices_throughout_vs_reference"]["max_abs_diff"]
        same = row["final_vs_eight_devices_throughout"]
        same_text = "bit-exact" if same["bit_exact"] else f"{same['max_abs_diff']:.2e}"
        final += (f" (an uninterrupted 8-device run differs by {control:.2e}; this run vs "
                  f"that one: {same_text})")  # fmt: skip
    first = f"exit {row['first_exit']}" + (" (SIGKILL)" if row["killed"] else "")
    if "first_stderr_lines" in row:
        first += f", {_lines(row['first_stderr_lines'])}"
    said = [m for m in (row["first_message"], row["rerun_message"]) if m]
    start = row["resumed_from"]
    resumed = (
        "started over (no committed checkpoint)" if start is None else f"resumed from step {start}"
    )
    happened = (f"first run: {first} after step {row['first_last_step']}; rerun: exit "
                f"{row['rerun_exit']}, {resumed}")  # fmt: skip
    if row.get("checkpoints_after_first"):
        happened = happened.replace("; rerun", f", checkpoints {row['checkpoints_after_first']}; "
                                    "rerun", 1)  # fmt: skip
    if said:
        happened += "; said: " + " / ".join(f"`{m}`" for m in said)
    n = row.get("steps_redone", "?")
    lost = f"{n} step{'' if n == 1 else 's'} redone; no data lost"
    if "mismatch_message" in row:
        happened += (f"; rerun with model.size=mini: exit {row['mismatch_exit']}, "
                     f"`{row['mismatch_message']}`")  # fmt: skip
    return happened, lost, final


def _refused(name: str, row: dict) -> tuple[str, str, str]:
    """A fault refused before anything ran (or anything was overwritten)."""
    if name == "edited_packed_manifest":
        happened = (f"intact file loads: {row['intact_loads']}; "
                    + "; ".join(f"{k} edited: exit {r['exit']}, {_lines(r['stderr_lines'])}: "
                                f"`{r['message']}`" for k, r in row["edits"].items()))  # fmt: skip
        return happened, "nothing: the edited model is not loaded", "-"
    happened = (f"exit {row['first_exit']}, {_lines(row['stderr_lines'])}: "
                f"`{row['first_message']}`")  # fmt: skip
    if name == "malformed_glue_rows":
        happened += (f"; with data/glue skip_bad_rows=True: {row['skip_bad_rows_kept']} "
                     "kept")  # fmt: skip
    if name == "refused_rerun":
        happened += (f"; record unchanged: {row['record_unchanged']}; `bipft export "
                     f"--checkpoint` on the run afterwards: exit {row['export_exit']}")  # fmt: skip
        return happened, "nothing (the finished run's record and checkpoints are intact)", "-"
    files = row.get("workdir_files")
    left = "no workdir" if files is None else f"workdir holds {files}"
    return happened, f"no training started ({left})", "-"


def _nan_steps(name: str, row: dict) -> tuple[str, str, str]:
    happened = (f"exit {row['first_exit']}; {len(row['warnings'])} warning line(s), first: "
                f"`{row['warnings'][0] if row['warnings'] else ''}`")  # fmt: skip
    if row.get("first_message"):
        happened += f"; `{row['first_message']}`"
    happened += (f"; checkpoints {row['checkpoints']}, all finite: "
                 f"{row['checkpoints_finite']}")  # fmt: skip
    if name == "nan_batch":
        lost = f"{row['batches_dropped']} batch dropped (its update skipped); no checkpoint lost"
    else:
        lost = ("the NaN steps' updates (none applied); the run stops, its checkpoints hold the "
                "last good params")  # fmt: skip
    return happened, lost, _final(row)


def summarize(name: str, row: dict) -> tuple[str, str, str]:
    """(what happened, what was lost, final params vs reference) of one row, from its fields."""
    if "resumed_from" in row:
        happened, lost, final = _resumed(row)
        if "second_interrupt" in row:
            s = row["second_interrupt"]
            happened = (f"second Ctrl-C {s['seconds_after_first']} s after the first: exit "
                        f"{s['exit']} {s['seconds_to_exit']} s later; " + happened)  # fmt: skip
            if not row["checkpoints_after_first"]:  # quitting at once abandons a save in flight
                lost = lost.replace("redone", "redone (the async save of step 4, still in "
                                    "flight, was abandoned too)", 1)  # fmt: skip
        return happened, lost, final
    if "stderr_lines" in row or "edits" in row:
        return _refused(name, row)
    return _nan_steps(name, row)


def write(results: dict, out_dir: Path, total: int, every: int) -> None:
    out_dir.mkdir(exist_ok=True)
    (out_dir / "faults.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    dates = sorted({row.get("date", results["date"]) for row in results["faults"].values()})
    lines = [
        "# Faults tried on tiny runs: what happened, what was lost",
        "",
        f"Produced by `python benchmarks/faults.py` on {m['cpu']} ({m['cpus']} CPUs), JAX "
        f"{m['jax']}, rows run on {', '.join(dates)} (each row's date is in `faults.json`). "
        f"Pretraining: `configs/pretrain/tiny.py`, seq 32, batch 8, {total} steps, a checkpoint "
        f"every {every}; the reference run took {results['reference']['seconds']} s. Steps "
        "redone = last step the faulted process finished - the step the rerun resumed from. "
        "Goal: nothing lost beyond the steps since the last good checkpoint, and every refusal "
        "one line on stderr that names the problem."
        + (f" {results['note']}" if results.get("note") else ""),
        "",
        "| fault | what was done | what happened | work / data lost | final params vs reference |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["faults"].items():
        happened, lost, final = summarize(name, row)
        lines.append(f"| {name} | {row['what']} | {happened} | {lost} | {final} |")
    lines += ["", "Raw fields of every row: `faults.json`."]
    (out_dir / "faults.md").write_text("\n".join(lines) + "\n")
