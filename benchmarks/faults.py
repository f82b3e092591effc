"""Fault injection on tiny `bipft pretrain` / `bipft finetune` runs: what happens, what is lost.

Run: ``python benchmarks/faults.py [--only kill_during_step,nan_batch,...]``.
Writes ``benchmarks/results/faults.{json,md}``.

Every pretraining run is the real CLI in a subprocess: ``configs/pretrain/tiny.py`` at seq 32,
batch 8, 12 steps, a checkpoint every 4 (keep 3). A reference run goes uninterrupted. Each fault
run is interrupted or damaged as its row says, then (where the fault allows) rerun with the same
command, and its final parameters are compared with the reference's. Faults that need to act
inside the process (a hung commit, a refused write, a NaN batch) are injected by this script's
``--child`` mode, which patches one function and then calls ``bipft_jax.cli.main``. "Steps
redone" = the last step the faulted process had finished minus the step the rerun resumed from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = (
    "integrity.json"  # = bipft_jax.checkpoint.integrity.MANIFEST; a step is committed with it
)
RESULTS = ROOT / "benchmarks" / "results"
TOTAL, EVERY = 12, 4
PRETRAIN = [
    "--config", "configs/pretrain/tiny.py", "--config.data.seq_len=32",
    "--config.data.global_batch_size=8", "--config.data.max_docs=150",
    "--config.data.eval_fraction=0.0", "--config.train.eval_every=0", "--config.train.log_every=1",
    "--config.optim.warmup_steps=2", f"--config.train.total_steps={TOTAL}",
    f"--config.train.save_every={EVERY}", "--config.train.keep_checkpoints=3",
]  # fmt: skip


# ----------------------------------------------------------------------------- child (injection)


def _inject(fault: str) -> None:
    """Patch one function of the package for ``fault`` = ``kind:step``."""
    kind, _, at = fault.partition(":")
    step = int(at or 0)
    if kind == "hang_commit":  # all data of `step` written, then hang right before the commit
        from bipft_jax.checkpoint import integrity

        seal = integrity.write_manifest

        def hang(step_dir):
            seal(step_dir)
            if Path(step_dir).name.startswith(f"{step}."):
                print(f"fault: committing step {step}", flush=True)
                time.sleep(3600)

        integrity.write_manifest = hang  # type: ignore[assignment]
    elif kind == "disk_full":  # from the save of `step` on, the kernel refuses files > 1 MiB
        import resource

        from bipft_jax.checkpoint import CheckpointManager

        save = CheckpointManager.save

        def full(self, s, *a, **kw):
            if s >= step and s % self.save_every == 0:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
            return save(self, s, *a, **kw)

        CheckpointManager.save = full  # type: ignore[method-assign]
    elif kind in ("nan", "nan_from"):  # the loss (and gradients) of training step(s) are NaN
        _inject_nan(step, streak=kind == "nan_from")
    elif kind:
        raise SystemExit(f"unknown fault {fault!r}")


def _inject_nan(step: int, streak: bool) -> None:
    import jax.numpy as jnp
    import numpy as np

    from bipft_jax.train import pretrain

    shard, make_loss, calls = pretrain.shard_host_batch, pretrain.make_pretrain_loss, [0]

    def poisoned(batch, mesh):  # call 0 is the calibration batch, call i is training step i
        i, calls[0] = calls[0], calls[0] + 1
        bad = i == step or (streak and i >= step)
        rows = len(batch["input_ids"])
        return shard({**batch, "poison": np.full(rows, np.nan if bad else 0.0, np.float32)}, mesh)

    def loss_maker(*args):
        loss_fn = make_loss(*args)

        def fn(params, batch, rng, teacher):  # total * (1 + 0) is exact; * NaN poisons grads
            clean = {k: v for k, v in batch.items() if k != "poison"}
            total, parts = loss_fn(params, clean, rng, teacher)
            return total * (1.0 + jnp.mean(batch["poison"])), parts

        return fn

    pretrain.shard_host_batch = poisoned
    pretrain.make_pretrain_loss = loss_maker


def child(fault: str, argv: list[str]) -> int:
    _inject(fault)
    from bipft_jax import cli

    return cli.main(argv)


# ----------------------------------------------------------------------------- parent (runs)


@dataclass
class Run:
    rc: int
    out: list[str]
    err: list[str]
    killed: bool = False
    seconds: float = 0.0

    def last_step(self) -> int:
        done = [int(ln.split()[1].split("/")[0]) for ln in self.out if ln.startswith("step ")]
        return max(done, default=0)

    def resumed_from(self) -> int | None:
        hit = [ln for ln in self.out if ln.startswith("resumed from step ")]
        return int(hit[0].split()[3]) if hit else None

    def lines(self, prefix: str) -> list[str]:
        return [ln for ln in self.err if ln.startswith(prefix)]


@dataclass
class Lab:
    tmp: Path
    cache: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cache = self.tmp / "jax_cache"

    def run(self, argv: list[str], fault: str = "", devices: int = 1,
            kill_when: Callable[[Run], bool] | None = None) -> Run:  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_COMPILATION_CACHE_DIR=str(self.cache))  # fmt: skip
        env.pop("BIPFT_DEBUG", None)
        cmd = [sys.executable, __file__, "--child", fault, "--", *argv]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        run = Run(0, [], [])
        readers = [threading.Thread(target=lambda s=s, d=d: d.extend(x.rstrip("\n") for x in s))
                   for s, d in ((p.stdout, run.out), (p.stderr, run.err))]  # fmt: skip
        for t in readers:
            t.start()
        while p.poll() is None:
            if kill_when is not None and kill_when(run):
                p.send_signal(signal.SIGKILL)
                run.killed = True
                break
            time.sleep(0.02)
        run.rc = p.wait(timeout=600)
        for t in readers:
            t.join()
        run.seconds = round(time.perf_counter() - t0, 1)
        return run

    def pretrain(self, workdir: Path, *extra: str, **kw) -> Run:
        return self.run(["pretrain", *PRETRAIN, "--workdir", str(workdir), *extra], **kw)


def committed(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())


def params_of(workdir: Path, step: int) -> dict:
    """The params of a checkpoint, restored on this process's first device (any topology)."""
    import jax
    import numpy as np

    from bipft_jax.export.cli import load_checkpoint_params

    return jax.tree.map(np.asarray, jax.device_get(load_checkpoint_params(str(workdir), step)))


def compare(a: dict, b: dict) -> dict:
    import jax
    import numpy as np

    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    return {"bit_exact": max(diffs) == 0.0, "max_abs_diff": max(diffs)}


def all_finite(workdir: Path) -> bool:
    import jax
    import numpy as np

    return all(
        bool(np.isfinite(x).all())
        for s in committed(workdir)
        for x in jax.tree.leaves(params_of(workdir, s))
    )


def damage(path: Path, how: str) -> str:
    data = bytearray(path.read_bytes())
    if how == "flip":
        i = len(data) // 2
        data[i : i + 4096] = bytes(b ^ 0xFF for b in data[i : i + 4096])
        path.write_bytes(bytes(data))
        return f"flipped 4 KiB in the middle of {path.name} ({len(data):,} bytes)"
    path.write_bytes(bytes(data[: len(data) // 2]))
    return f"truncated {path.name} from {len(data):,} to {len(data) // 2:,} bytes"


def largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def one_line(run: Run) -> str:
    """The run's error line, else its first warning line."""
    errors, warnings = run.lines("bipft "), run.lines("warning: ")
    return errors[-1] if errors else (warnings[0] if warnings else "")


# ----------------------------------------------------------------------------- scenarios


def after_commit(workdir: Path, step: int) -> Callable[[Run], bool]:
    return lambda run: step in committed(workdir)


def scenarios(lab: Lab, ref: dict) -> dict[str, Callable[[], dict]]:
    def rerun_row(w: Path, first: Run, what: str, **extra) -> dict:
        again = lab.pretrain(w)
        row = {
            "what": what, "first_exit": first.rc, "killed": first.killed,
            "first_last_step": first.last_step(), "first_message": one_line(first),
            "rerun_exit": again.rc, "rerun_message": one_line(again),
            "resumed_from": again.resumed_from(),
        }  # fmt: skip
        if row["resumed_from"] is not None:
            row["steps_redone"] = max(first.last_step() - row["resumed_from"], 0)
        if again.rc == 0:
            row["final_vs_reference"] = compare(params_of(w, TOTAL), ref)
        return {**row, **extra}

    def kill_during_step() -> dict:
        w = lab.tmp / "kill_step"
        first = lab.pretrain(w, kill_when=lambda r: r.last_step() >= 6 and 4 in committed(w))
        return rerun_row(w, first, "SIGKILL after step 6 was logged (checkpoint 4 on disk)")

    def kill_during_save() -> dict:
        w = lab.tmp / "kill_save"
        marker = lambda r: "fault: committing step 8" in r.out  # noqa: E731
        first = lab.pretrain(w, fault="hang_commit:8", kill_when=marker)
        left = sorted(p.name for p in (w / "checkpoints").iterdir())
        what = "SIGKILL while the async save of step 8 was committing (data written, rename due)"
        return rerun_row(w, first, what, dirs_after_kill=left)

    def damaged(how: str) -> Callable[[], dict]:
        def scenario() -> dict:
            w = lab.tmp / f"{how}_file"
            first = lab.pretrain(w, kill_when=after_commit(w, 8))
            what = damage(largest_file(w / "checkpoints" / "8"), how)
            return rerun_row(w, first, f"killed after checkpoint 8 was committed; then {what} "
                             "of step 8 (an Orbax data file)")  # fmt: skip

        return scenario

    def disk_full() -> dict:
        w = lab.tmp / "disk_full"
        first = lab.pretrain(w, fault="disk_full:8")
        row = rerun_row(w, first, "from the save of step 8 on, every write past 1 MiB per file "
                        "fails (RLIMIT_FSIZE: the kernel refuses it, as on a full disk)",
                        checkpoints_after_fault=committed(w))  # fmt: skip
        return row

    def nan_batch() -> dict:
        w = lab.tmp / "nan"
        run = lab.pretrain(w, fault="nan:6")
        return {
            "what": "the loss and gradients of step 6 are NaN (one poisoned batch)",
            "first_exit": run.rc, "warnings": run.lines("warning: step"),
            "checkpoints": committed(w), "checkpoints_finite": all_finite(w),
            "batches_dropped": 1,
            "final_vs_reference": compare(params_of(w, TOTAL), ref) if run.rc == 0 else None,
        }  # fmt: skip

    def nan_streak() -> dict:
        w = lab.tmp / "nan_streak"
        run = lab.pretrain(w, "--config.train.max_nonfinite_steps=3", fault="nan_from:6")
        return {
            "what": "every step from 6 on is NaN; train.max_nonfinite_steps=3",
            "first_exit": run.rc, "first_message": one_line(run), "last_step": run.last_step(),
            "warnings": run.lines("warning: step"), "checkpoints": committed(w),
            "checkpoints_finite": all_finite(w),
        }  # fmt: skip

    def wrong_mesh() -> dict:
        w = lab.tmp / "mesh"
        first = lab.pretrain(w, devices=8, kill_when=after_commit(w, 8))
        row = rerun_row(w, first, "steps 1-8 on 8 devices (data-parallel mesh), killed after "
                        "checkpoint 8; rerun on 1 device")  # fmt: skip
        bad = lab.pretrain(w, "--config.model.size=mini")
        row.update(mismatch_exit=bad.rc, mismatch_message=one_line(bad))
        control = lab.tmp / "mesh_control"  # 8 devices all the way: the numerics of the mesh
        assert lab.pretrain(control, devices=8).rc == 0
        eight = params_of(control, TOTAL)
        row["eight_devices_throughout_vs_reference"] = compare(eight, ref)
        row["final_vs_eight_devices_throughout"] = compare(params_of(w, TOTAL), eight)
        return row

    def malformed_rows() -> dict:
        from bipft_jax import paths
        from bipft_jax.data.glue import load_glue_local

        src = paths.shared_data_dir() / "glue_data" / "RTE"
        glue = lab.tmp / "glue" / "RTE"
        glue.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "train.tsv", glue / "train.tsv")
        rows = (src / "dev.tsv").read_text().splitlines()
        rows[5] = rows[5].split("\t")[0] + "\tno second sentence"  # 2 of 4 columns
        rows[9] = rows[9].rsplit("\t", 1)[0] + "\tmaybe"  # an unknown label
        (glue / "dev.tsv").write_text("\n".join(rows) + "\n")
        run = lab.run(["finetune", "--config", "configs/glue/bipft.py:rte",
                       "--config.init.kind=scratch", f"--config.data_dir={glue.parent}",
                       "--workdir", str(lab.tmp / "ft")])  # fmt: skip
        kept = len(load_glue_local("rte", "dev", glue.parent, skip_bad_rows=True))
        return {
            "what": "RTE dev.tsv with a 2-column row (line 6) and an unknown label (line 10)",
            "first_exit": run.rc, "first_message": one_line(run),
            "stderr_lines": len([ln for ln in run.err if ln.strip()]),
            "workdir_files": sorted(p.name for p in (lab.tmp / "ft").glob("*")),
            "skip_bad_rows_kept": f"{kept} of {len(rows) - 1} rows",
        }  # fmt: skip

    return {
        "kill_during_step": kill_during_step, "kill_during_save": kill_during_save,
        "corrupt_data_file": damaged("flip"), "truncated_file": damaged("truncate"),
        "disk_full": disk_full, "nan_batch": nan_batch, "nan_streak": nan_streak,
        "wrong_mesh_restore": wrong_mesh, "malformed_glue_rows": malformed_rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------- report


def _final(row: dict) -> str:
    f = row.get("final_vs_reference")
    if not f:
        return "-"
    return "bit-exact" if f["bit_exact"] else f"max abs diff {f['max_abs_diff']:.2e}"


def summarize(name: str, row: dict) -> tuple[str, str, str]:
    """(what happened, what was lost, final params vs reference) of one row, from its fields."""
    if "resumed_from" in row:  # interrupted / damaged, then rerun
        final = _final(row)
        if "eight_devices_throughout_vs_reference" in row:
            control = row["eight_devices_throughout_vs_reference"]["max_abs_diff"]
            same = row["final_vs_eight_devices_throughout"]
            same_text = "bit-exact" if same["bit_exact"] else f"{same['max_abs_diff']:.2e}"
            final += (f" (an uninterrupted 8-device run differs by {control:.2e}; this run vs "
                      f"that one: {same_text})")  # fmt: skip
        first = f"exit {row['first_exit']}" + (" (SIGKILL)" if row["killed"] else "")
        said = [m for m in (row["first_message"], row["rerun_message"]) if m]
        happened = (f"first run: {first} after step {row['first_last_step']}; rerun: exit "
                    f"{row['rerun_exit']}, resumed from step {row['resumed_from']}")  # fmt: skip
        if said:
            happened += "; said: " + " / ".join(f"`{m}`" for m in said)
        n = row.get("steps_redone", "?")
        lost = f"{n} step{'' if n == 1 else 's'} redone; no data lost"
        if "mismatch_message" in row:
            happened += (f"; rerun with model.size=mini: exit {row['mismatch_exit']}, "
                         f"`{row['mismatch_message']}`")  # fmt: skip
        return happened, lost, final
    if name == "malformed_glue_rows":
        happened = (f"exit {row['first_exit']}, {row['stderr_lines']} stderr line: "
                    f"`{row['first_message']}`; with data/glue skip_bad_rows=True: "
                    f"{row['skip_bad_rows_kept']} kept")  # fmt: skip
        return happened, f"no training started (workdir holds {row['workdir_files']})", "-"
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


def write(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        "# Faults tried on tiny runs: what happened, what was lost",
        "",
        f"Produced by `python benchmarks/faults.py` on {m['cpu']} ({m['cpus']} CPUs), JAX "
        f"{m['jax']}, {results['date']}. Pretraining: `configs/pretrain/tiny.py`, seq 32, batch "
        f"8, {TOTAL} steps, a checkpoint every {EVERY}; the reference run took "
        f"{results['reference']['seconds']} s. Steps redone = last step the faulted process "
        "finished - the step the rerun resumed from. Goal: nothing lost beyond the steps since "
        "the last good checkpoint.",
        "",
        "| fault | what was done | what happened | work / data lost | final params vs reference |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["faults"].items():
        happened, lost, final = summarize(name, row)
        lines.append(f"| {name} | {row['what']} | {happened} | {lost} | {final} |")
    lines += ["", "Raw fields of every row: `faults.json`."]
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated fault names")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    args = ap.parse_args()
    import jax

    tmp = Path(tempfile.mkdtemp(prefix="bipft_faults_"))
    lab = Lab(tmp)
    t0 = time.perf_counter()
    ref_run = lab.pretrain(tmp / "reference")
    assert ref_run.rc == 0, "\n".join(ref_run.err[-30:])
    ref = params_of(tmp / "reference", TOTAL)
    table = scenarios(lab, ref)
    chosen = [n for n in args.only.split(",") if n] or list(table)
    old = RESULTS / "faults.json"
    previous = json.loads(old.read_text()) if args.only and old.is_file() else {}
    faults = dict(previous.get("faults", {}))
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "jax": jax.__version__}
    for name in chosen:  # the results files are rewritten after every fault
        print(f"fault {name} ...", flush=True)
        faults[name] = table[name]()
        print(json.dumps(faults[name], indent=1), flush=True)
        write({
            "date": time.strftime("%Y-%m-%d"), "machine": machine,
            "reference": {"seconds": ref_run.seconds, "steps": ref_run.last_step()},
            "faults": {n: faults[n] for n in table if n in faults},
            "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :]))
    main()
