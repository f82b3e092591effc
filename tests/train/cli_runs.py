"""Helpers to run `python -m bipft_jax.cli pretrain` in subprocesses and read its results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from bipft_jax.checkpoint import CheckpointManager

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--config", "configs/pretrain/tiny.py",
    "--config.data.seq_len=32", "--config.data.global_batch_size=8",
    "--config.data.max_docs=150", "--config.data.eval_fraction=0.0",
    "--config.train.eval_every=0", "--config.train.log_every=1", "--config.optim.warmup_steps=2",
]  # fmt: skip


def env(cache_dir: Path, devices: int = 1) -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    return e


def command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bipft_jax.cli", "pretrain", *SMALL, "--workdir", str(workdir),
            *extra]  # fmt: skip


def run(workdir: Path, cache_dir: Path, *extra: str, timeout: int = 400):
    return subprocess.run(command(workdir, *extra), cwd=REPO, env=env(cache_dir),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def popen(workdir: Path, cache_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(workdir, *extra), cwd=REPO, env=env(cache_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def final_params(workdir: Path, step: int | None = None) -> dict:
    mngr = CheckpointManager(workdir, save_every=1, async_save=False, read_only=True)
    try:
        state, extra = mngr.restore(None, step)
    finally:
        mngr.close()
    return {"params": jax.device_get(state["params"]), "extra": extra}


def assert_trees_equal(a, b) -> None:
    fa = jax.tree_util.tree_flatten_with_path(a)[0]
    fb = jax.tree.leaves(b)
    assert len(fa) == len(fb)
    for (path, x), y in zip(fa, fb, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
