"""`bipft sweep`: grid tasks × presets × lrs × seeds of `bipft finetune`, resumable, tabulated.

    bipft sweep --config configs/glue/sweep_example.py --workdir /tmp/sweep        # run locally
    bipft sweep --config ... --workdir ... --emit-commands > jobs.txt              # for a cluster
    bipft sweep --config ... --workdir ... --aggregate-only

The grid comes from `config.sweep` (`tasks`: "sst2,rte"; `presets`: chains separated by ";",
e.g. "fp;fp,bit"; `lrs`: "" = the config's lr; `seeds`). Each run lives in
`<workdir>/runs/<task>/<preset>/lr<lr>/seed<seed>/`; one with `results.json` is finished and
skipped. A preempted run (SIGTERM) stops the sweep after its checkpoint; the rerun continues
inside that run, from its last checkpoint. The aggregate (`table.py`) writes
`<workdir>/<output>.md`, `.csv` and `.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from bipft_jax.errors import CommandParser
from bipft_jax.glue.data import resolve_task
from bipft_jax.glue.finetune import RESULTS
from bipft_jax.glue.init import parse_chain
from bipft_jax.glue.table import aggregate
from bipft_jax.train.config_io import ConfigDict, load_config, parse_command_line, split_argv


@dataclasses.dataclass(frozen=True)
class Run:
    task: str
    preset: str
    lr: float | None
    seed: int

    def dirname(self, root: Path) -> Path:
        lr = "default" if self.lr is None else f"{self.lr:g}"
        return (
            root
            / "runs"
            / self.task
            / self.preset.replace(",", "-").replace(":", "")
            / f"lr{lr}"
            / f"seed{self.seed}"
        )

    def overrides(self) -> list[str]:
        out = [f"--config.chain={self.preset}", f"--config.seed={self.seed}"]
        if self.lr is not None:
            out.append(f"--config.train.lr={self.lr:g}")
        return out


def _items(text: str, sep: str, key: str) -> list[str]:
    items = [s.strip() for s in text.split(sep) if s.strip()]
    if not items and key != "lrs":
        raise ValueError(f"config key 'sweep.{key}' is empty")
    return items


def grid(cfg: ConfigDict) -> list[Run]:
    """Every run of the sweep; bad task / preset / number names the config key."""
    s = cfg.sweep
    tasks = [resolve_task(t).name for t in _items(s.tasks, ",", "tasks")]
    presets = _items(s.presets, ";", "presets")
    for p in presets:
        try:
            parse_chain(p)
        except ValueError as e:
            raise ValueError(f"config key 'sweep.presets': {e}") from None
    try:
        lrs: list[float | None] = [float(x) for x in _items(s.lrs, ",", "lrs")] or [None]
        seeds = [int(x) for x in _items(s.seeds, ",", "seeds")]
    except ValueError as e:
        raise ValueError(f"config key 'sweep.lrs' / 'sweep.seeds': {e}") from None
    return [Run(t, p, lr, sd) for t in tasks for p in presets for lr in lrs for sd in seeds]


def is_finished(run: Run, root: Path) -> bool:
    return (run.dirname(root) / RESULTS).is_file()


def task_spec(config_spec: str, task: str) -> str:
    """`path.py[:arg]` -> `path.py:task` (the config argument selects the task's recipe)."""
    return f"{config_spec.partition(':')[0]}:{task}"


def command(run: Run, root: Path, config_spec: str, base_overrides: Sequence[str]) -> str:
    spec = task_spec(config_spec, run.task)
    args = ["bipft", "finetune", "--config", spec, "--workdir", str(run.dirname(root))]
    return shlex.join([*args, *base_overrides, *run.overrides()])


def run_sweep(
    config_spec: str,
    cfg: ConfigDict,
    base_overrides: Sequence[str],
    workdir: str | Path,
    emit_commands: bool = False,
    aggregate_only: bool = False,
) -> dict:
    """Run (or list) the unfinished runs, then aggregate; returns a summary dict."""
    from bipft_jax.glue import finetune

    root = Path(workdir)
    runs = grid(cfg)
    todo = [r for r in runs if not is_finished(r, root)]
    if emit_commands:
        for r in todo:
            print(command(r, root, config_spec, base_overrides))
        return {"runs": len(runs), "todo": len(todo)}
    ran: list[Run] = []
    if not aggregate_only:
        for i, r in enumerate(todo):
            print(f"sweep: run {i + 1}/{len(todo)} {r}")
            spec = task_spec(config_spec, r.task)
            run_cfg = load_config(spec, [*base_overrides, *r.overrides()])
            out = finetune.run(run_cfg, r.dirname(root))
            if out["status"] != "done":  # preempted: its checkpoint is saved; a rerun resumes it
                summary = {"runs": len(runs), "ran": len(ran), "status": out["status"],
                           "interrupted": str(r)}  # fmt: skip
                print(json.dumps(summary))
                return summary
            ran.append(r)
    files = aggregate(root, [(r, r.dirname(root) / RESULTS) for r in runs], cfg.sweep.output)
    summary = {"runs": len(runs), "skipped": len(runs) - len(todo), "ran": len(ran), **files}
    print(json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(
        prog="bipft sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--emit-commands", action="store_true", help="print one command per run")
    parser.add_argument("--aggregate-only", action="store_true", help="only build the tables")
    argv = list(argv or [])
    cfg, args = parse_command_line(parser, argv)
    # The same overrides that built `cfg` (both `--config.k=v` and `--config.k v`) reach every run.
    spec, overrides, _ = split_argv(argv)
    assert spec is not None  # parse_command_line required it
    run_sweep(spec, cfg, overrides, args.workdir, args.emit_commands, args.aggregate_only)
    return 0
