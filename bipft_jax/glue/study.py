"""`bipft study`: the GLUE study of the three papers, one resumable command.

    bipft study --config configs/study/minilm.py --workdir workdir/study [--commit] [--dry-run]

The config lists tasks, seeds, rows and the binary-pretraining runs (see `configs/study/`). The
driver turns them into jobs (`bipft pretrain` / `bipft finetune` subprocesses, their commands
recorded) and runs the unfinished ones in dependency order, one seed of every row before the next
seed: FP first (its final models are the KD teachers and the students' initialisation), then
the binary rows in config order, each BiPFT row's pretraining just before its first fine-tuning
(the task-specific baselines land before the long pretraining runs); the BiPFT-B curve last.
After every finished run it writes the run's record to `<results>/<run>.json` and rebuilds
`<results>.{md,json,png}`.
A rerun skips finished runs and resumes an interrupted one mid-run (each command resumes from its
own checkpoints). SIGTERM is passed to the running job, which saves; the study then stops with
exit code 0. `--commit` commits each run's record and the tables as they land.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bipft_jax.errors import CommandParser
from bipft_jax.glue.study_table import build_tables
from bipft_jax.train.config_io import ConfigDict, parse_command_line
from bipft_jax.train.pretrain_eval import read_summary

FINETUNE_RESULTS = "results.json"


@dataclasses.dataclass(frozen=True)
class Job:
    """One `bipft pretrain` or `bipft finetune` run of the study."""

    kind: str  # "pretrain" | "finetune"
    row: str  # study row (pretrain: the row it serves)
    task: str = ""
    seed: int = 0
    fraction: float = 1.0  # share of the pretraining budget the init comes from (curve)
    prefix: str = ""  # names the binary runs of a study variant apart ("paper-bit__rte__s1")

    @property
    def name(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain__{self.row}"
        row = self.row if self.fraction == 1.0 else f"{self.row}@{self.fraction:g}"
        return f"{self.prefix}{row}__{self.task}__s{self.seed}"

    def workdir(self, root: Path) -> Path:
        return root / "runs" / self.name


def pretrain_row(cfg: ConfigDict, row: str) -> str:
    """The row whose binary pretraining initialises ``row`` (``cfg.pretrain_of``: rows that
    share another row's pretraining, e.g. the same BiPFT-B at another fine-tuning lr)."""
    return dict(cfg.get("pretrain_of", {})).get(row, row)


def task_seeds(cfg: ConfigDict, task: str) -> tuple[int, ...]:
    """The seeds a task runs (``cfg.task_seeds`` narrows a costly task, e.g. SST-2 to one)."""
    return tuple(dict(cfg.get("task_seeds", {})).get(task, cfg.seeds))


def jobs(cfg: ConfigDict) -> list[Job]:
    """Every job, in the order they run (dependencies first)."""
    binary = [r for r in cfg.rows if r != "fp"]
    prefix = cfg.get("run_prefix", "")
    out = []
    for i, s in enumerate(cfg.seeds):  # every row's first seed before any row's second
        tasks = [t for t in cfg.tasks if s in task_seeds(cfg, t)]
        out += [Job("finetune", "fp", t, s) for t in tasks]
        for r in binary:  # a pretraining runs just before the first row that needs it
            out += [Job("pretrain", r)] if i == 0 and r in cfg.pretrain else []
            out += [Job("finetune", r, t, s, prefix=prefix) for t in tasks]
    if "bipft_b" in cfg.rows:
        out += [Job("finetune", "bipft_b", t, s, f) for f in cfg.curve_fractions
                for s in cfg.curve_seeds for t in cfg.tasks]  # fmt: skip
    return out


def pretrain_steps_at(cfg: ConfigDict, fraction: float) -> int:
    return round(cfg.pretrain_steps * fraction)


def _save_every(cfg: ConfigDict) -> int:
    steps = [pretrain_steps_at(cfg, f) for f in (*cfg.curve_fractions, 1.0)]
    return math.gcd(*[s for s in steps if s > 0])


def command(job: Job, cfg: ConfigDict, root: Path) -> list[str]:
    """The exact `bipft` command line of a job."""
    work = str(job.workdir(root))
    if job.kind == "pretrain":
        spec = f"{cfg.pretrain_config}:{cfg.pretrain[job.row]}"
        sets = [f"train.total_steps={cfg.pretrain_steps}", f"train.save_every={_save_every(cfg)}",
                "train.keep_checkpoints=100", *cfg.pretrain_overrides]  # fmt: skip
        return ["bipft", "pretrain", "--config", spec, "--workdir", work,
                *[f"--config.{s}" for s in sets]]  # fmt: skip
    row = job.row
    sets = [f"seed={job.seed}", *cfg.finetune_overrides]
    if row.startswith(("bibert", "bit")):  # task-specific students of the FP run
        fp = Job("finetune", "fp", job.task, job.seed).workdir(root) / "0_fp" / "final"
        sets += [f"init.path={fp}", f"kd.teacher_path={fp}"]
    elif row.startswith("bipft") and job.fraction == 0.0:
        row = "bipft_b0"  # MiniLM binarized without pretraining
    elif row.startswith("bipft"):
        pre = Job("pretrain", pretrain_row(cfg, row)).workdir(root)
        sets += [f"init.path={pre}", f"init.step={pretrain_steps_at(cfg, job.fraction)}"]
    spec = f"{cfg.finetune_config}:{row}:{job.task}"
    return ["bipft", "finetune", "--config", spec, "--workdir", work,
            *[f"--config.{s}" for s in sets]]  # fmt: skip


def is_done(job: Job, cfg: ConfigDict, root: Path) -> bool:
    work = job.workdir(root)
    if job.kind == "pretrain":
        final = read_summary(work).get("final", {})
        return final.get("step") == cfg.pretrain_steps
    f = work / FINETUNE_RESULTS
    return f.is_file() and json.loads(f.read_text()).get("status") == "done"


# ----------------------------------------------------------------------------- records


def machine() -> dict:
    """What the runs ran on (CPU model, cores, accelerator, versions)."""
    import jax

    cpu = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "device": f"{dev.platform}:{dev.device_kind}",
            "jax": jax.__version__, "python": platform.python_version()}  # fmt: skip


def record(job: Job, cfg: ConfigDict, root: Path, cmd: list[str], where: dict) -> dict:
    """The study's record of a finished fine-tuning run."""
    res = json.loads((job.workdir(root) / FINETUNE_RESULTS).read_text())
    stage = res["result"]
    tokens, pre_seconds = 0, 0.0
    if job.row.startswith("bipft") and job.fraction > 0:
        pre = Job("pretrain", pretrain_row(cfg, job.row)).workdir(root)
        pcfg = json.loads((pre / "config.json").read_text())
        d = pcfg["data"]
        tokens = pretrain_steps_at(cfg, job.fraction) * d["global_batch_size"] * d["seq_len"]
        pre_seconds = _pretrain_seconds(pre) * job.fraction
    return {
        "run": job.name, "row": job.row, "task": job.task, "seed": job.seed,
        "pretrain_fraction": job.fraction if job.row.startswith("bipft") else None,
        "pretrain_tokens": tokens, "pretrain_seconds": round(pre_seconds, 1),
        "best": stage["best"], "final": stage["final"], "steps": stage["steps"],
        "train_rows": stage["train_rows"], "lr": stage["lr"], "kd": stage["kd"],
        "init": stage["init"], "teacher": stage.get("teacher"),
        "finetune_seconds": stage["seconds"], "command": shlex.join(cmd), "machine": where,
    }  # fmt: skip


def _pretrain_seconds(workdir: Path) -> float:
    """Wall seconds of a pretraining run: the sum of its logged step times."""
    f = workdir / "metrics.jsonl"
    if not f.is_file():
        return 0.0
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "step_time_s" in r]
    total, last = 0.0, 0
    for r in steps:
        total += r["step_time_s"] * (r["step"] - last)
        last = r["step"]
    return total


# ----------------------------------------------------------------------------- driver

_STOP: dict[str, Any] = {"flag": False, "child": None}


def _on_sigterm(signum, frame) -> None:
    _STOP["flag"] = True
    child = _STOP["child"]
    if child is not None and child.poll() is None:
        child.send_signal(signal.SIGTERM)


def _run(cmd: list[str], log: Path) -> int:
    """Run a job as `python -m bipft_jax.cli ...`, its output appended to `log`."""
    argv = [sys.executable, "-m", "bipft_jax.cli", *cmd[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _STOP["child"] = child
        rc = child.wait()
        _STOP["child"] = None
    return rc


def _commit(paths: list[Path], message: str, attempts: int = 5) -> bool:
    """`git add` + `git commit` of only the given files (the study's results as they land).

    Retries while another git process holds the index; a failure is reported, never fatal (the
    files stay on disk and the next commit takes them along)."""
    files = [str(p) for p in paths if p.exists()]
    for attempt in range(attempts):
        add = subprocess.run(["git", "add", *files], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *files], capture_output=True, text=True
        ).returncode in (0, 1)  # 1: nothing changed
        if done:
            return True
        time.sleep(2.0 * (attempt + 1))
    print(f"study: warning: could not commit {files}", file=sys.stderr, flush=True)
    return False


def _run_job(job: Job, position: str, cfg: ConfigDict, root: Path, commit: bool,
             where: dict) -> bool:  # fmt: skip
    """Run one job and write (and commit) its record and the tables. False when a SIGTERM
    interrupted it (it saved its checkpoint; its exit code is not a failure)."""
    cmd = command(job, cfg, root)
    print(f"study: job {position} {job.name}: {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    rc = _run(cmd, root / "logs" / f"{job.name}.log")
    if _STOP["flag"]:
        return False
    if rc != 0 or not is_done(job, cfg, root):
        raise RuntimeError(
            f"study job {job.name} failed (exit code {rc}); see {root}/logs/{job.name}.log"
        )
    print(f"study: {job.name} done in {time.time() - t0:.0f} s", flush=True)
    results = Path(cfg.results)
    files = []
    if job.kind == "finetune":
        path = results / f"{job.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record(job, cfg, root, cmd, where), indent=2))
        files.append(path)
    files += build_tables(results, cfg)
    if commit:
        _commit(files, f"study: {job.name} finished")
    return True


def run_study(cfg: ConfigDict, workdir: str | Path, *, commit: bool = False,
              dry_run: bool = False, limit: int = 0) -> dict:  # fmt: skip
    """Run every unfinished job (at most ``limit`` when > 0); returns a summary."""
    root = Path(workdir)
    all_jobs = jobs(cfg)
    todo = [j for j in all_jobs if not is_done(j, cfg, root)]
    if dry_run:
        for j in todo:
            print(shlex.join(command(j, cfg, root)))
        return {"jobs": len(all_jobs), "todo": len(todo)}
    root.mkdir(parents=True, exist_ok=True)
    _STOP["flag"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    where, ran, status = machine(), [], "done"
    try:
        for i, job in enumerate(todo):
            # SIGTERM between two jobs: do not start the next; during one: it saved and exited
            if _STOP["flag"] or not _run_job(job, f"{i + 1}/{len(todo)}", cfg, root, commit, where):
                status = "preempted"
                break
            ran.append(job.name)
            if limit and len(ran) >= limit:
                status = "limit"
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = {"status": status, "jobs": len(all_jobs), "ran": ran,
               "todo": len(todo) - len(ran)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(prog="bipft study", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="runs, logs and checkpoints")
    parser.add_argument("--commit", action="store_true", help="git-commit each run's results")
    parser.add_argument("--dry-run", action="store_true", help="print the unfinished commands")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many jobs")
    cfg, args = parse_command_line(parser, list(sys.argv[1:] if argv is None else argv))
    run_study(cfg, args.workdir, commit=args.commit, dry_run=args.dry_run, limit=args.limit)
    return 0
