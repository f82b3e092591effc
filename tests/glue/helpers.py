"""Shared tiny-run settings for the fine-tuning tests."""

from pathlib import Path

from bipft_jax.train.config_io import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.size=tiny",
    "model.num_layers=1",
    "init.kind=scratch",
    "max_train_rows=32",
    "max_eval_rows=16",
    "train.max_steps=3",
    "train.eval_every=2",
    "train.max_length=16",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.log_every=1",
]


def tiny_config(name: str, task: str, *extra: str):
    return load_config(f"{ROOT}/configs/glue/{name}.py:{task}", [*TINY, *extra])
