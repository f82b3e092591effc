"""`bipft finetune`: GLUE fine-tuning with optional distillation chains (methods.md §4-5).

    bipft finetune --config configs/glue/bit.py:sst2 --workdir /tmp/ft --config.train.lr=1e-4

`config.chain` lists the stages, e.g. `"bipft"` (no KD), `"fp,bit"` (FP teacher fine-tuned
first, then a BiT student distilled from it) or `"fp,bit:a2,bit"` (BiT's multi-distillation).
Stage 0 trains on the labels; stage i>0 starts from stage i-1's best weights and distils from
them with `config.kd.kind`. Each stage writes `<workdir>/<i>_<name>/` with `best/` and `final/`
checkpoints, `metrics.jsonl`, optional GLUE submission files and `results.json`; the command
writes `<workdir>/results.json` with every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bipft_jax import paths
from bipft_jax.data.glue import GlueDataError, TaskSpec, write_submission
from bipft_jax.data.glue_metrics import task_metrics
from bipft_jax.data.tokenizer import BertTokenizer
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.train import glue_data
from bipft_jax.train.checkpoint import CheckpointManager
from bipft_jax.train.config_io import ConfigDict, config_hash, parse_command_line, save_config
from bipft_jax.train.glue_init import (
    StageSpec,
    calibrate,
    init_params,
    load_initial_params,
    merge_encoder,
    model_config,
    parse_chain,
)
from bipft_jax.train.glue_kd import check_kd_kind, finetune_loss, needs_intermediates
from bipft_jax.train.loop import (
    LoopHooks,
    TrainState,
    make_train_step,
    run_loop,
    with_numel_multiplier,
)
from bipft_jax.train.metrics import MetricWriter
from bipft_jax.train.optim import make_optimizer

RESULTS = "results.json"


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    train: dict[str, np.ndarray]
    dev: dict[str, dict[str, np.ndarray]]  # split -> arrays
    test: dict[str, dict[str, np.ndarray]]


def load_task_data(cfg: ConfigDict) -> TaskData:
    """Tokenizer + encoded train/dev(/test) splits, with the row limits of the config."""
    spec = glue_data.resolve_task(cfg.task)
    vocab = cfg.vocab_file or str(paths.default_vocab_file())
    tok = BertTokenizer.from_vocab(vocab)
    ml, root = cfg.train.max_length, cfg.data_dir or None

    def split(name: str, rows: int) -> dict[str, np.ndarray]:
        return glue_data.load_split(spec, name, tok, ml, root, rows)

    dev = {s: split(s, cfg.max_eval_rows) for s in glue_data.eval_splits(spec)}
    test = {s: split(s, 0) for s in glue_data.test_splits(spec)} if cfg.predict_test else {}
    return TaskData(spec, split("train", cfg.max_train_rows), dev, test)


# ----------------------------------------------------------------------------- evaluation


def make_predict(model: BertForSequenceClassification) -> Any:
    @jax.jit
    def logits(params, batch):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
        )
        return out["logits"]

    return logits


def predict(predict_fn, params, data: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Logits [N, C] of a split (fixed-shape padded batches, padding dropped)."""
    chunks = []
    for batch, real in glue_data.eval_batches(data, batch_size):
        chunks.append(np.asarray(predict_fn(params, batch))[:real])
    return np.concatenate(chunks)


def evaluate(predict_fn, params, task: TaskData, batch_size: int) -> dict[str, dict[str, float]]:
    """All metrics per dev split (MNLI: dev_matched and dev_mismatched)."""
    return {
        name: task_metrics(
            task.spec.name, predict(predict_fn, params, data, batch_size), data["labels"]
        )
        for name, data in task.dev.items()
    }


def main_score(metrics: dict[str, dict[str, float]]) -> float:
    """The selection score: the main metric of the first dev split (MNLI-m)."""
    return next(iter(metrics.values()))["main"]


def write_predictions(predict_fn, params, task: TaskData, batch_size: int, out: Path) -> list[str]:
    files = []
    for split, data in task.test.items():
        logits = predict(predict_fn, params, data, batch_size)
        preds = logits[:, 0] if task.spec.is_regression else logits.argmax(-1)
        name = split if len(task.test) > 1 else None
        files.append(str(write_submission(task.spec.name, preds.tolist(), out, name)))
    return files


# ----------------------------------------------------------------------------- one stage


def _epoch_batches(data: dict[str, np.ndarray], bs: int, seed: int) -> Iterator[dict]:
    for epoch in itertools.count():
        for b in glue_data.train_batches(data, bs, seed, epoch):
            yield {k: jnp.asarray(v) for k, v in b.items()}


def _optimizer(cfg: ConfigDict, lr: float, total: int) -> optax.GradientTransformation:
    o = cfg.optimizer
    return make_optimizer(
        dict(
            name=o.name,
            lr=lr,
            alpha_lr=o.alpha_lr if o.alpha_lr > 0 else None,
            weight_decay=o.weight_decay if o.weight_decay >= 0 else None,
            schedule=o.schedule,
            warmup_steps=o.warmup_ratio * total,
            total_steps=total,
            clip_norm=o.clip_norm,
        )
    )


def _save(directory: Path, step: int, params: Any, extra: dict) -> None:
    with CheckpointManager(directory, max_to_keep=1, async_save=False) as mngr:
        mngr.save(step, {"params": params}, extra, force=True)


def run_stage(
    cfg: ConfigDict,
    task: TaskData,
    stage: StageSpec,
    index: int,
    workdir: Path,
    init: tuple[str, str] | dict,
    teacher: tuple[BertForSequenceClassification, dict] | None,
) -> tuple[dict, BertForSequenceClassification, dict]:
    """Train one stage; returns (results, model, best params)."""
    t0 = time.time()
    spec, tr = task.spec, cfg.train
    kd = cfg.kd.kind if teacher is not None else "none"
    hf_dir = cfg.init.path if cfg.init.kind == "hf" else None
    layers = {"num_layers": cfg.model.num_layers} if cfg.model.num_layers > 0 else {}
    mcfg = model_config(stage, cfg.model.size, hf_dir, **layers)
    if tr.grad_accum_steps > 1:  # elastic α gradients as for the full batch
        mcfg = with_numel_multiplier(mcfg, tr.grad_accum_steps)
    model = BertForSequenceClassification(mcfg, num_labels=spec.num_labels)
    first = {k: v[: tr.batch_size] for k, v in task.train.items()}
    if isinstance(init, dict):
        fresh = init_params(model, first, cfg.seed + index)
        params = merge_encoder(fresh, init, f"stage {index - 1} weights")
        params, init_desc = calibrate(model, params, first), f"stage {index - 1}"
    else:
        params, init_desc = load_initial_params(model, first, cfg.seed, *init)
    n = len(task.train["labels"])
    per_epoch = glue_data.steps_per_epoch(n, tr.batch_size)
    if per_epoch == 0:
        raise ValueError(f"{spec.name}: {n} training rows < batch_size {tr.batch_size}")
    total = tr.max_steps if tr.max_steps > 0 else int(tr.epochs * per_epoch)
    lr = tr.teacher_lr if (index == 0 and len(parse_chain(cfg.chain)) > 1) else tr.lr
    tx = _optimizer(cfg, lr, total)
    inter = needs_intermediates(kd)
    t_model, t_params = teacher if teacher is not None else (None, None)

    def loss_fn(params, batch, rng, teacher_params):
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out = model.apply(
            {"params": params}, *args, deterministic=False, return_intermediates=inter,
            rngs={"dropout": rng},
        )  # fmt: skip
        t_out = None
        if t_model is not None:
            t_out = t_model.apply({"params": teacher_params}, *args, return_intermediates=inter)
        return finetune_loss(
            kd, out, t_out, batch["labels"], is_regression=spec.is_regression,
            temperature=cfg.kd.temperature, gt_beta=cfg.kd.gt_beta,
        )  # fmt: skip

    def step(state, batch, teacher_params):
        fn = lambda p, b, r: loss_fn(p, b, r, teacher_params)  # noqa: E731
        return make_train_step(fn, tx, cfg.train.grad_accum_steps, cfg.seed + index)(state, batch)

    jitted = jax.jit(step, donate_argnums=(0,))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    predict_fn = make_predict(model)
    out_dir = workdir / f"{index}_{stage.name}"
    if out_dir.exists():  # a rerun restarts the stage: drop stale checkpoints and results
        shutil.rmtree(out_dir)
    eval_every = tr.eval_every if tr.eval_every > 0 else per_epoch
    best: dict[str, Any] = {"score": -np.inf}
    history: list[dict] = []
    writer = MetricWriter(out_dir, tensorboard=False)
    extra = {"task": spec.name, "stage": stage.name, "seed": cfg.seed}

    def on_eval(state: TrainState, step: int) -> None:
        metrics = evaluate(predict_fn, state.params, task, tr.eval_batch_size)
        score = main_score(metrics)
        history.append({"step": step, "metrics": metrics})
        writer.write_scalars(
            step, {f"eval/{s}/{k}": v for s, m in metrics.items() for k, v in m.items()}
        )
        print(f"[{spec.name} {stage.name}] step {step}/{total} dev {json.dumps(metrics)}")
        if score > best["score"]:
            best.update(score=score, step=step, metrics=metrics)
            best["params"] = jax.tree.map(np.asarray, state.params)
            _save(out_dir / "best", step, state.params, {**extra, "metrics": metrics})

    def on_log(step: int, metrics: dict, dt: float) -> None:
        writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})

    hooks = LoopHooks(on_log=on_log, evaluate=on_eval)
    run_teacher = t_params
    state, _ = run_loop(
        state,
        lambda s, b: jitted(s, b, run_teacher),
        _epoch_batches(task.train, tr.batch_size, cfg.seed + index),
        0,
        total,
        log_every=tr.log_every,
        eval_every=eval_every,
        hooks=hooks,
    )
    writer.close()
    final = history[-1] if history and history[-1]["step"] == total else None
    if final is None:
        on_eval(state, total)
        final = history[-1]
    _save(out_dir / "final", total, state.params, {**extra, "metrics": final["metrics"]})
    results = {
        "task": spec.name, "stage": stage.name, "stage_index": index, "kd": kd, "seed": cfg.seed,
        "lr": lr, "init": init_desc, "steps": total, "train_rows": n,
        "config_hash": config_hash(cfg),
        "best": {"step": best["step"], "metrics": best["metrics"]},
        "final": {"step": total, "metrics": final["metrics"]},
        "history": history, "seconds": round(time.time() - t0, 2),
    }  # fmt: skip
    if task.test:
        results["submission"] = write_predictions(
            predict_fn, best["params"], task, tr.eval_batch_size, out_dir / "submission"
        )
    (out_dir / RESULTS).write_text(json.dumps(results, indent=2))
    return results, model, best["params"]


# ----------------------------------------------------------------------------- whole command


def run(cfg: ConfigDict, workdir: str | Path) -> dict:
    """Fine-tune every stage of `cfg.chain`; writes and returns `<workdir>/results.json`."""
    check_kd_kind(cfg.kd.kind)
    stages = parse_chain(cfg.chain)
    if len(stages) > 1 and cfg.kd.kind == "none":
        raise ValueError(f"chain {cfg.chain!r} has {len(stages)} stages but kd.kind='none'")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise GlueDataError(f"config key 'data_dir': directory not found: {cfg.data_dir}")
    glue_data.resolve_task(cfg.task)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir)
    task = load_task_data(cfg)
    init: tuple[str, str] | dict = (cfg.init.kind, cfg.init.path)
    teacher = None
    all_results = []
    for i, stage in enumerate(stages):
        results, model, best_params = run_stage(cfg, task, stage, i, workdir, init, teacher)
        all_results.append(results)
        init, teacher = best_params, (model, best_params)
    summary = {
        "task": task.spec.name, "seed": cfg.seed, "chain": cfg.chain,
        "config_hash": config_hash(cfg), "stages": all_results, "result": all_results[-1],
    }  # fmt: skip
    (workdir / RESULTS).write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bipft finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="output directory")
    cfg, args = parse_command_line(parser, list(argv or []))
    summary = run(cfg, args.workdir)
    r = summary["result"]
    print(f"{r['task']} {r['stage']}: best {json.dumps(r['best']['metrics'])}")
    return 0
