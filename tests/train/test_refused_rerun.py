"""A rerun that is refused (another config in a workdir holding a run) overwrites nothing: the
first run's config.json and model_config.json stay as they were, and export still reads them."""

from __future__ import annotations

import pytest

from bipft_jax import cli
from tests.glue.helpers import ROOT, TINY
from tests.train import cli_runs

pytestmark = pytest.mark.slow
RECORD = ("config.json", "config_hash.txt", "model_config.json")


def _record(workdir):
    return {n: (workdir / n).read_bytes() for n in RECORD if (workdir / n).is_file()}


def test_refused_pretrain_rerun_keeps_the_record(tmp_path):
    w = tmp_path / "w"
    first = cli_runs.run(w, tmp_path / "cache", "--config.train.total_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _record(w)
    assert set(before) == set(RECORD)
    again = cli_runs.run(w, tmp_path / "cache", "--config.train.total_steps=3",
                         "--config.model.size=mini")  # fmt: skip
    assert again.returncode == 2, again.stderr[-3000:]
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit this run" in lines[0], lines
    assert _record(w) == before
    out = tmp_path / "bin"  # export reads the first run's model card and checkpoint
    assert (
        cli.main(["export", "--format", "binary", "--checkpoint", str(w), "--out", str(out)]) == 0
    )
    assert any(out.iterdir())


def test_refused_finetune_rerun_keeps_the_record(tmp_path, shared_data, capsys):
    w = tmp_path / "w"
    argv = ["finetune", "--config", f"{ROOT}/configs/glue/bipft.py:rte", "--workdir", str(w),
            *[f"--config.{o}" for o in TINY]]  # fmt: skip
    assert cli.main(argv) == 0
    before = _record(w)
    capsys.readouterr()
    assert cli.main([*argv, "--config.train.lr=3e-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a finished run with another config" in err[0], err
    assert _record(w) == before
