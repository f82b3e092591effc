"""Fault injection on tiny `bipft pretrain` / `bipft finetune` runs: what happens, what is lost.

Run: ``python benchmarks/faults.py [--only kill_during_step,nan_batch,...]`` (``--only``
reruns those rows and keeps the others of ``benchmarks/results/faults.json``). Writes
``benchmarks/results/faults.{json,md}`` (the table: ``faults_report.py``).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from faults_report import write

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

        CheckpointManager.save = full  # type: ignore[method-assign,assignment]
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

    pretrain.shard_host_batch = poisoned  # type: ignore[assignment]
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
    signalled: list[float] = field(default_factory=list)  # seconds after start of each signal

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
            kill_when: Callable[[Run], bool] | None = None,
            signals: Sequence[tuple[Callable[[Run], bool], int]] = ()) -> Run:  # fmt: skip
        """Run `bipft argv` (with `fault` injected); SIGKILL it once `kill_when` holds, and
        send each of `signals` (in order) once its condition holds."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_COMPILATION_CACHE_DIR=str(self.cache))  # fmt: skip
        env.pop("BIPFT_DEBUG", None)
        cmd = [sys.executable, __file__, "--child", fault, "--", *argv]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        run, pending = Run(0, [], []), list(signals)
        readers = [threading.Thread(target=lambda s=s, d=d: d.extend(x.rstrip("\n") for x in s))
                   for s, d in ((p.stdout, run.out), (p.stderr, run.err))]  # fmt: skip
        for t in readers:
            t.start()
        while p.poll() is None:
            if kill_when is not None and kill_when(run):
                p.send_signal(signal.SIGKILL)
                run.killed = True
                break
            if pending and pending[0][0](run):
                p.send_signal(pending.pop(0)[1])
                run.signalled.append(round(time.perf_counter() - t0, 2))
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


def nonblank(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.strip()]


def files_in(workdir: Path) -> list[str] | None:
    """The names in a workdir; None when there is no workdir at all."""
    return sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else None


def one_line(run: Run) -> str:
    """The run's error line, else its first warning line."""
    errors, warnings = run.lines("bipft "), run.lines("warning: ")
    return errors[-1] if errors else (warnings[0] if warnings else "")


# ----------------------------------------------------------------------------- scenarios


def after_commit(workdir: Path, step: int) -> Callable[[Run], bool]:
    return lambda run: step in committed(workdir)


def rerun_and_compare(lab: Lab, ref: dict, w: Path, first: Run, what: str, **extra) -> dict:
    """The row of a faulted run `first` in `w`, rerun with the same command to the end."""
    again = lab.pretrain(w)
    row: dict = {
        "what": what, "first_exit": first.rc, "killed": first.killed,
        "first_last_step": first.last_step(), "first_message": one_line(first),
        "rerun_exit": again.rc, "rerun_message": one_line(again),
        "resumed_from": again.resumed_from(),
    }  # fmt: skip
    if again.rc == 0:  # without "resumed from", the rerun started over from step 0
        row["steps_redone"] = max(first.last_step() - (row["resumed_from"] or 0), 0)
    if again.rc == 0:
        row["final_vs_reference"] = compare(params_of(w, TOTAL), ref)
    return {**row, **extra}


def scenarios(lab: Lab, ref: dict) -> dict[str, Callable[[], dict]]:
    def rerun_row(w: Path, first: Run, what: str, **extra) -> dict:
        return rerun_and_compare(lab, ref, w, first, what, **extra)

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
                        checkpoints_after_first=committed(w),
                        first_stderr_lines=len(nonblank(first.err)),
                        first_stderr_head=nonblank(first.err)[:20])  # fmt: skip
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
            "stderr_lines": len(nonblank(run.err)), "workdir_files": files_in(lab.tmp / "ft"),
            "skip_bad_rows_kept": f"{kept} of {len(rows) - 1} rows",
        }  # fmt: skip

    return {
        "kill_during_step": kill_during_step, "kill_during_save": kill_during_save,
        "corrupt_data_file": damaged("flip"), "truncated_file": damaged("truncate"),
        "disk_full": disk_full, "nan_batch": nan_batch, "nan_streak": nan_streak,
        "wrong_mesh_restore": wrong_mesh, "malformed_glue_rows": malformed_rows,
    }  # fmt: skip


def first_hour_scenarios(lab: Lab, ref: dict) -> dict[str, Callable[[], dict]]:
    """The faults a newcomer found by trying (issue 27): each must be refused in one line, or
    end in a correct result."""

    def refusal(run: Run, what: str, workdir: Path, **extra) -> dict:
        return {"what": what, "first_exit": run.rc, "first_message": one_line(run),
                "stderr_lines": len(nonblank(run.err)), "workdir_files": files_in(workdir),
                **extra}  # fmt: skip

    def nan_label() -> dict:
        from bipft_jax import paths

        glue = lab.tmp / "glue_nan" / "STS-B"
        glue.mkdir(parents=True, exist_ok=True)
        src = paths.shared_data_dir() / "glue_data" / "STS-B"
        shutil.copy(src / "dev.tsv", glue / "dev.tsv")
        rows = (src / "train.tsv").read_text().splitlines()
        rows[7] = rows[7].rsplit("\t", 1)[0] + "\tnan"  # line 8: a score of nan
        (glue / "train.tsv").write_text("\n".join(rows) + "\n")
        w = lab.tmp / "ft_nan"
        run = lab.run(["finetune", "--config", "configs/glue/bipft.py:stsb",
                       "--config.init.kind=scratch", f"--config.data_dir={glue.parent}",
                       "--workdir", str(w)])  # fmt: skip
        return refusal(run, "STS-B train.tsv whose line 8 has the score `nan`", w)

    def nan_lr() -> dict:
        w = lab.tmp / "nan_lr"
        run = lab.pretrain(w, "--config.optim.lr=nan")
        return refusal(run, "`bipft pretrain --config.optim.lr=nan`", w,
                       checkpoints=committed(w))  # fmt: skip

    def refused_rerun() -> dict:
        w = lab.tmp / "refused"
        shutil.copytree(lab.tmp / "reference", w)  # a finished run
        names = ("config.json", "config_hash.txt", "model_config.json")
        before = {n: (w / n).read_bytes() for n in names}
        run = lab.pretrain(w, "--config.model.size=mini")
        after = {n: (w / n).read_bytes() if (w / n).is_file() else None for n in names}
        export = lab.run(["export", "--format", "binary", "--checkpoint", str(w), "--out",
                          str(lab.tmp / "refused_export")])  # fmt: skip
        return refusal(run, "the finished reference run's workdir, rerun with another config "
                       "(model.size=mini)", w, record_unchanged=before == after,
                       export_exit=export.rc, export_message=one_line(export))  # fmt: skip

    def interrupted(twice: bool) -> Callable[[], dict]:
        def scenario() -> dict:
            w = lab.tmp / ("ctrl_c_twice" if twice else "ctrl_c")
            signals = [(lambda r: r.last_step() >= 6, signal.SIGINT)]
            if twice:  # the second once the first was taken (its save under way)
                signals.append((lambda r: any(x.startswith("interrupt:") for x in r.err),
                                signal.SIGINT))  # fmt: skip
            first = lab.pretrain(w, signals=signals)
            extra = {"checkpoints_after_first": committed(w),
                     "first_stderr_lines": len(nonblank(first.err)),
                     "first_stderr_head": nonblank(first.err)[:5]}  # fmt: skip
            if twice and len(first.signalled) == 2:
                extra["second_interrupt"] = {
                    "exit": first.rc,
                    "seconds_after_first": round(first.signalled[1] - first.signalled[0], 2),
                    "seconds_to_exit": round(first.seconds - first.signalled[1], 2),
                }
            what = "Ctrl-C (SIGINT) after step 6 was logged"
            if twice:
                what += ", then a second Ctrl-C once the first was acknowledged"
            return rerun_and_compare(lab, ref, w, first, what, **extra)

        return scenario

    def edited_manifest() -> dict:
        import contextlib
        import io

        from bipft_jax.errors import run_command
        from bipft_jax.infer.fileformat import MANIFEST as PACKED_MANIFEST
        from bipft_jax.infer.packed_model import load_packed_model

        out = lab.tmp / "packed"
        export = lab.run(["export", "--format", "packed", "--checkpoint",
                          str(lab.tmp / "reference"), "--out", str(out)])  # fmt: skip
        assert export.rc == 0, "\n".join(export.err[-20:])
        intact = (out / PACKED_MANIFEST).read_text()

        def load(argv: list[str]) -> int:
            load_packed_model(out)
            return 0

        load([])  # the intact file loads
        edits: dict[str, dict] = {}
        for key, value in (("layer_norm_eps", 1e-3), ("hidden_act", "relu")):
            body = json.loads(intact)
            body["config"][key] = value  # still valid JSON, still a valid config
            (out / PACKED_MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True))
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = run_command("bipft", load, [])
            lines = nonblank(err.getvalue().splitlines())
            edits[f"{key}={value}"] = {"exit": code, "stderr_lines": len(lines),
                                       "message": lines[-1] if lines else ""}  # fmt: skip
        (out / PACKED_MANIFEST).write_text(intact)
        return {"what": "`bipft export --format packed` of the reference run; its manifest.json "
                "edited to other valid JSON, then loaded (`load_packed_model`)",
                "intact_loads": True, "edits": edits}  # fmt: skip

    return {
        "nan_label": nan_label, "nan_lr": nan_lr, "refused_rerun": refused_rerun,
        "ctrl_c": interrupted(False), "ctrl_c_twice": interrupted(True),
        "edited_packed_manifest": edited_manifest,
    }  # fmt: skip


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
    ap.add_argument("--note", default="", help="a sentence on the run's conditions (load)")
    args = ap.parse_args()
    import jax

    tmp = Path(tempfile.mkdtemp(prefix="bipft_faults_"))
    lab = Lab(tmp)
    t0 = time.perf_counter()
    ref_run = lab.pretrain(tmp / "reference")
    assert ref_run.rc == 0, "\n".join(ref_run.err[-30:])
    ref = params_of(tmp / "reference", TOTAL)
    table = {**scenarios(lab, ref), **first_hour_scenarios(lab, ref)}
    chosen = [n for n in args.only.split(",") if n] or list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        ap.error(f"unknown fault(s) {unknown}; choose from {list(table)}")
    old = RESULTS / "faults.json"
    previous = json.loads(old.read_text()) if args.only and old.is_file() else {}
    # Rows kept from an earlier run keep that run's date.
    faults = {n: {"date": previous.get("date"), **row}
              for n, row in previous.get("faults", {}).items()}  # fmt: skip
    today = time.strftime("%Y-%m-%d")
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "jax": jax.__version__}
    for name in chosen:  # the results files are rewritten after every fault
        print(f"fault {name} ...", flush=True)
        faults[name] = {"date": today, **table[name]()}
        print(json.dumps(faults[name], indent=1), flush=True)
        write({
            "date": today, "machine": machine, "note": args.note,
            "reference": {"seconds": ref_run.seconds, "steps": ref_run.last_step()},
            "faults": {n: faults[n] for n in table if n in faults},
            "seconds": round(time.perf_counter() - t0, 1),
        }, RESULTS, TOTAL, EVERY)  # fmt: skip
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :]))
    main()
