"""The one edge of `bipft`: every command's user errors are one stderr line with exit code 2,
`BIPFT_DEBUG=1` shows the traceback, and `--help` works for every command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bipft_jax import cli

ROOT = Path(__file__).resolve().parents[1]
GLUE_CFG = str(ROOT / "configs/glue/bipft.py")


def _bad_glue_dir(tmp_path: Path, shared: Path) -> Path:
    """RTE with a real train.tsv and a dev.tsv whose 3rd line has 2 columns instead of 4."""
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    (rte / "train.tsv").write_bytes((shared / "glue_data/RTE/train.tsv").read_bytes())
    good = (shared / "glue_data/RTE/dev.tsv").read_text().splitlines()[:2]
    (rte / "dev.tsv").write_text("\n".join([*good, "7\tonly two"]) + "\n")
    return tmp_path / "glue"


def _cases(tmp: Path, shared: Path) -> dict[str, tuple[list[str], str]]:
    """command -> (argv, text the one error line must contain)."""
    params = tmp / "params.msgpack"
    params.write_bytes(b"\x80")  # an empty msgpack map: no params at all
    junk = tmp / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    (tmp / "junk.msgpack").write_bytes(b"not msgpack at all")
    tiny = [
        "--config.init.kind=scratch",
        "--config.max_train_rows=32",
        "--config.train.max_steps=2",
    ]
    return {
        "pretrain-config": (
            ["pretrain", "--config", "configs/pretrain/nope.py", "--workdir", str(tmp / "w")],
            "config file configs/pretrain/nope.py does not exist",
        ),
        "pretrain-override": (
            ["pretrain", "--config", "configs/pretrain/tiny.py", "--config.optim.lrr", "1",
             "--workdir", str(tmp / "w")],
            "unknown config key 'optim.lrr'; did you mean optim.lr",
        ),
        "finetune-task": (
            ["finetune", "--config", f"{GLUE_CFG}:nosuchtask", "--workdir", str(tmp / "w")],
            "has no task 'nosuchtask'",
        ),
        "finetune-batch": (
            ["finetune", "--config", f"{GLUE_CFG}:rte", "--config.train.batch_size=0",
             "--workdir", str(tmp / "w")],
            "config key 'train.batch_size' must be an integer >= 1, got 0",
        ),
        "finetune-lr": (
            ["finetune", "--config", f"{GLUE_CFG}:rte", *tiny, "--config.train.lr=-1",
             "--workdir", str(tmp / "w")],
            "optimizer config 'lr': expected a finite number >= 0, got -1.0",
        ),
        "finetune-rows": (
            ["finetune", "--config", f"{GLUE_CFG}:rte", "--config.init.kind=scratch",
             f"--config.data_dir={_bad_glue_dir(tmp, shared)}", "--workdir", str(tmp / "w")],
            "dev.tsv:3: expected 4 tab-separated columns, got 2",
        ),
        "sweep-task": (
            ["sweep", "--config", GLUE_CFG, "--config.sweep.tasks", "sst3", "--workdir",
             str(tmp / "w"), "--emit-commands"],
            "unknown GLUE task 'sst3'",
        ),
        "prepare-vocab": (
            ["prepare", "--input", str(shared / "corpus/austen-novels.txt"), "--vocab",
             str(tmp / "nope.txt"), "--out", str(tmp / "p")],
            "vocab file not found",
        ),
        "export-params": (
            ["export", "--format", "hf", "--params", str(tmp / "nope.msgpack"), "--preset", "fp",
             "--size", "tiny", "--out", str(tmp / "o")],
            "params file not found",
        ),
        "export-preset": (
            ["export", "--format", "hf", "--params", str(params), "--preset", "xnor", "--size",
             "tiny", "--out", str(tmp / "o")],
            "unknown method preset 'xnor'",
        ),
        "export-params-file": (
            ["export", "--format", "packed", "--params", str(tmp / "junk.msgpack"), "--preset",
             "bipft", "--size", "tiny", "--out", str(tmp / "o")],
            "cannot read params file",
        ),
        "export-checkpoint-dir": (  # a directory that is not a run, without --preset/--size
            ["export", "--format", "hf", "--checkpoint", str(tmp), "--out", str(tmp / "o")],
            "--checkpoint: checkpoint not found",
        ),
        "export-checkpoint": (
            ["export", "--format", "hf", "--checkpoint", str(tmp), "--preset", "fp", "--size",
             "tiny", "--out", str(tmp / "o")],
            "checkpoint not found",
        ),
        "convert-path": (
            ["convert", "--from", "bipft", str(tmp / "nope.bin"), "--out", str(tmp / "c")],
            "reference checkpoint not found",
        ),
        "convert-file": (
            ["convert", "--from", "bipft", str(junk), "--out", str(tmp / "c")],
            f"cannot read {junk} as safetensors",
        ),
        "study-config": (
            ["study", "--config", "configs/study/nope.py", "--workdir", str(tmp / "s")],
            "config file configs/study/nope.py does not exist",
        ),
    }  # fmt: skip


CASES = [
    "pretrain-config", "pretrain-override", "finetune-task", "finetune-batch", "finetune-lr",
    "finetune-rows", "sweep-task", "prepare-vocab", "export-params", "export-preset",
    "export-params-file", "export-checkpoint-dir", "export-checkpoint", "convert-path",
    "convert-file", "study-config",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_exit_2(case, tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.delenv("BIPFT_DEBUG", raising=False)
    argv, message = _cases(tmp_path, shared_data)[case]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"bipft {argv[0]}: error: ") and message in err[0], err
    # A run refused before it started leaves no config.json (nor any workdir) behind.
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stats", "--size", "huge"], "invalid choice: 'huge'"),
        (["stats", "--set", "num_layerz=1"], "num_layerz"),
        (["stats", "--seq", "-5"], "--seq: expected a positive sequence length, got -5"),
        (["pretrain", "--config", "configs/pretrain/tiny.py", "--nope"], "unrecognized arguments"),
        (["demo", "--preset", "xnor"], "invalid choice: 'xnor'"),
        (["finetune", "--config", GLUE_CFG], "the following arguments are required: --workdir"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    """argparse's usage errors: one error line that points to --help, exit code 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"bipft {argv[0]}: error: ") and message in err[0], err
    assert err[0].endswith(f"(see bipft {argv[0]} --help)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["nosuch"], "unknown command 'nosuch'; commands: demo,"), (["--data-dir"], "--data-dir")],
)
def test_top_level_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bipft: error: ") and message in err[0], err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_works_for_every_command(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: bipft {name}" in out
    cited = re.findall(r"configs/[\w/.]+\.py", out)  # every config file the help cites exists
    assert all((ROOT / c).is_file() for c in cited), cited


def _subprocess(argv, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "BIPFT_DEBUG"}
    full_env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env)
    return subprocess.run([sys.executable, "-m", "bipft_jax.cli", *argv], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_real_process_prints_one_line_and_debug_shows_traceback(tmp_path, shared_data):
    argv, message = _cases(tmp_path, shared_data)["finetune-rows"]
    done = _subprocess(argv)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bipft finetune: error: "), lines
    assert message in lines[0]
    debug = _subprocess(argv, BIPFT_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "GlueDataError" in debug.stderr


def test_demo_refuses_a_negative_step_count(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--steps", "-3"])
    assert e.value.code == 2 and "--steps: expected a positive number" in capsys.readouterr().err
