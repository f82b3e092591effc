"""`bipft finetune`: GLUE fine-tuning with optional distillation chains (methods.md §4-5).

    bipft finetune --config configs/glue/bit.py:sst2 --workdir /tmp/ft --config.train.lr=1e-4

`config.chain` lists the stages, e.g. `"bipft"` (no KD), `"fp,bit"` (FP teacher fine-tuned
first, then a BiT student distilled from it) or `"fp,bit:a2,bit"` (BiT's multi-distillation).
Stage 0 trains on the labels (or distils from a ready teacher, `kd.teacher_path`); stage i>0
starts from stage i-1's best weights and distils from them with `config.kd.kind`.

Each stage runs on the pretrainer's machinery: a device mesh with logical sharding rules
(`mesh`, `sharding`), a train step jitted once per bucket shape with donated state, batches cut
to length buckets (`train.pad_multiple`), resumable checkpoints (SIGTERM saves and exits 0; a
rerun continues mid-stage, bit-identically), and `--distributed` for multi-host runs. Each stage
writes `<workdir>/<i>_<name>/` with `best/` and `final/` params, `metrics.jsonl` and
`results.json`; the command writes `<workdir>/results.json` with every stage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax import paths
from bipft_jax.checkpoint import (
    CheckpointManager,
    install_sigterm_handler,
    restore_params,
    restore_state,
)
from bipft_jax.checkpoint.model_card import write_model_card
from bipft_jax.data.glue import GlueDataError, TaskSpec
from bipft_jax.data.tokenizer import BertTokenizer
from bipft_jax.errors import CommandParser
from bipft_jax.glue import data as glue_data
from bipft_jax.glue.eval import evaluate, predict, write_predictions
from bipft_jax.glue.init import (
    StageSpec,
    init_alphas,
    init_params,
    load_initial_params,
    merge_encoder,
    parse_chain,
    stage_model_config,
)
from bipft_jax.glue.kd import check_kd_kind, finetune_loss, loss_options, needs_intermediates
from bipft_jax.glue.rules import eval_rules, student_dropout_on
from bipft_jax.glue.teacher import Teacher, apply_teacher, load_teacher
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
from bipft_jax.parallel.distributed import add_distributed_args, maybe_initialize_distributed
from bipft_jax.quant import with_numel_multiplier
from bipft_jax.train.config_io import ConfigDict, config_hash, parse_command_line, save_config
from bipft_jax.train.loop import (
    LoopHooks,
    TrainState,
    abstract_state,
    jit_step,
    make_train_step,
    run_loop,
    train_state_shardings,
)
from bipft_jax.train.metrics import MetricWriter, ProgressLogger
from bipft_jax.train.optim import lr_schedule, make_optimizer

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


# ----------------------------------------------------------------------------- stage pieces


def _optimizer_config(cfg: ConfigDict, lr: float, total: int) -> dict:
    o = cfg.optimizer
    return dict(
        name=o.name,
        lr=lr,
        alpha_lr=o.alpha_lr if o.alpha_lr > 0 else None,
        weight_decay=o.weight_decay if o.weight_decay >= 0 else None,
        schedule=o.schedule,
        warmup_steps=o.warmup_ratio * total,
        total_steps=total,
        clip_norm=o.clip_norm,
    )


def _save_params(directory: Path, step: int, params: Any, extra: dict, model_cfg, labels) -> None:
    """Params-only checkpoint (``best/``, ``final/``) plus the model card beside it.

    A step already there was written by this run before an interruption: training is
    deterministic, so it holds these very params and is kept."""
    with CheckpointManager(directory, max_to_keep=1, async_save=False) as mngr:
        if step not in mngr.all_steps():
            mngr.save(step, {"params": params}, extra, force=True)
    if jax.process_index() == 0:
        write_model_card(directory, model_cfg, labels, stage=extra["stage"], task=extra["task"])


def _initial_params(cfg, model, first, index, init) -> tuple[dict, str]:
    """Host params of the stage's start: previous stage's weights, or ``init`` of the config."""
    if isinstance(init, dict):
        fresh = init_params(model, first, cfg.seed + index)
        what = f"stage {index - 1} weights"
        params, new = merge_encoder(fresh, init, what, cfg.init.load_classifier)
        return init_alphas(model, params, first, new, cfg.init.keep_alpha), f"stage {index - 1}"
    step = cfg.init.get("step", 0) or None
    return load_initial_params(model, first, cfg.seed, *init, keep_alpha=cfg.init.keep_alpha,
                               load_classifier=cfg.init.load_classifier, step=step)  # fmt: skip


@dataclasses.dataclass
class Progress:
    """What a resumed stage must remember besides the train state (saved in the checkpoint)."""

    history: list
    best: dict

    def to_json(self) -> dict:
        return {"history": self.history, "best": self.best}


def _place_state(params, tx, sh: TrainState, mesh) -> TrainState:
    params = jax.device_put(params, sh.params)
    with jax.set_mesh(mesh):
        opt = jax.jit(tx.init, out_shardings=sh.opt_state)(params)
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), sh.step), params, opt)


def run_stage(
    cfg: ConfigDict,
    task: TaskData,
    stage: StageSpec,
    index: int,
    workdir: Path,
    init: tuple[str, str] | dict,
    teacher: Teacher | None,
    on_start: Callable[[], None] = lambda: None,
) -> tuple[dict, BertForSequenceClassification, dict | None]:
    """Train (or resume, or reuse a finished) stage; returns (results, model, best params).

    ``results["status"]`` is "done" or "preempted" (a checkpoint was saved; rerun to continue).
    ``on_start`` is called once the stage is set up (init, optimizer, restore), before training.
    """
    t0 = time.time()
    spec, tr = task.spec, cfg.train
    out_dir = workdir / f"{index}_{stage.name}"
    main_proc = jax.process_index() == 0
    mcfg = stage_model_config(cfg, stage)
    if tr.grad_accum_steps > 1:  # elastic α gradients as for the full batch
        mcfg = with_numel_multiplier(mcfg, tr.grad_accum_steps)
    model = BertForSequenceClassification(mcfg, num_labels=spec.num_labels)
    done = _finished(out_dir, cfg)
    if done is not None:
        if main_proc:
            print(f"[{spec.name} {stage.name}] finished earlier: {out_dir / RESULTS}", flush=True)
        return done, model, restore_params(str(out_dir / "best"))

    kd = cfg.kd.kind if teacher is not None else "none"
    mesh, rules = make_mesh(dict(cfg.mesh)), get_rules(cfg.sharding)
    n = len(task.train["labels"])
    per_epoch = glue_data.steps_per_epoch(n, tr.batch_size)
    if per_epoch == 0:
        raise ValueError(f"{spec.name}: {n} training rows < batch_size {tr.batch_size}")
    total = tr.max_steps if tr.max_steps > 0 else int(tr.epochs * per_epoch)
    eval_every = tr.eval_every if tr.eval_every > 0 else per_epoch
    is_teacher_stage = index == 0 and len(parse_chain(cfg.chain)) > 1 and not cfg.kd.teacher_path
    lr = tr.teacher_lr if is_teacher_stage else tr.lr
    opt_cfg = _optimizer_config(cfg, lr, total)
    tx, lr_fn = make_optimizer(opt_cfg), lr_schedule(opt_cfg)
    # α is calibrated on the first batch padded to max_length, as in the references (their rows
    # are always padded): α_probs = 4·mean(P) = 4/max_length whatever the length bucket.
    first = glue_data.train_batch(task.train, tr.batch_size, cfg.seed + index, 0, pad_multiple=0,
                                  group_by_length=tr.group_by_length)  # fmt: skip
    params, init_desc = _initial_params(cfg, model, first, index, init)

    ids = jnp.asarray(first["input_ids"][:1])
    boxed = lambda m: lambda r: m.init(r, ids)["params"]  # noqa: E731
    sh = train_state_shardings(boxed(model), tx, mesh, rules, jax.random.PRNGKey(0))
    state = _place_state(params, tx, sh, mesh)
    del params
    consts: tuple[Any, ...] = ()
    const_sh: tuple[Any, ...] = ()
    if teacher is not None:
        t_sh = train_state_shardings(boxed(teacher.model), tx, mesh, rules,
                                     jax.random.PRNGKey(0)).params  # fmt: skip
        consts, const_sh = (jax.device_put(teacher.params, t_sh),), (t_sh,)

    ckpt = CheckpointManager(out_dir, tr.keep_checkpoints, tr.save_every or eval_every,
                             tr.async_checkpoint, tr.on_corrupt_checkpoint)  # fmt: skip
    progress = Progress([], {"score": None})
    start = ckpt.latest_step() or 0
    if start:
        state, extra = restore_state(ckpt, abstract_state(sh, state))
        progress = Progress(extra["history"], extra["best"])
        if main_proc:
            print(f"[{spec.name} {stage.name}] resumed at step {start}/{total}", flush=True)
    on_start()

    inter = needs_intermediates(kd)
    kd_options = loss_options(cfg.kd)

    def make_loss(dropout: bool):
        def loss_fn(params, batch, rng, *teacher_params):
            args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            out = model.apply({"params": params}, *args, deterministic=not dropout,
                              return_intermediates=inter, rngs={"dropout": rng})  # fmt: skip
            t_out = None
            if teacher is not None:
                t_out = apply_teacher(teacher.model, teacher_params[0], batch,
                                      dropout=cfg.kd.teacher_dropout,
                                      rng=jax.random.fold_in(rng, 1),
                                      return_intermediates=inter)  # fmt: skip
            return finetune_loss(kd, out, t_out, batch["labels"],
                                 is_regression=spec.is_regression, **kd_options)  # fmt: skip

        return loss_fn

    def jitted_step(dropout: bool):
        fn = make_train_step(make_loss(dropout), tx, tr.grad_accum_steps, cfg.seed + index, lr_fn)
        return jit_step(fn, mesh, rules, sh, const_shardings=const_sh)

    steps, host_step = {True: jitted_step(True)}, [start]  # the step count, without a sync

    def train_step(st: TrainState, batch):
        on = student_dropout_on(host_step[0], mode=tr.student_dropout, steps_per_epoch=per_epoch,
                                eval_every=eval_every, total_steps=total)  # fmt: skip
        if on not in steps:
            steps[on] = jitted_step(on)
        host_step[0] += 1
        return steps[on](st, batch, *consts)

    def logits_fn(st, batch):
        return model.apply({"params": st.params}, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"])["logits"]  # fmt: skip

    eval_step = jit_step(logits_fn, mesh, rules, sh, returns_state=False)
    # The checkpoint at `start` was written before its evaluation: that evaluation is redone.
    eval_again = bool(start) and start % eval_every == 0
    eval_again = eval_again and not any(h["step"] == start for h in progress.history)
    writer = MetricWriter(out_dir, tensorboard=False, resume_step=start,
                          redone=("eval/",) if eval_again else ())  # fmt: skip
    extra = {"task": spec.name, "stage": stage.name, "seed": cfg.seed}
    rule = eval_rules(cfg.eval.selection, cfg.eval.mnli_mm, spec.name)

    def predict_split(st):
        return lambda data: predict(eval_step, st, data, tr.eval_batch_size, tr.pad_multiple,
                                    mesh)  # fmt: skip

    def on_eval(st: TrainState, step: int) -> None:
        pred = predict_split(st)
        metrics = evaluate(
            pred, spec.name, task.dev, rule.splits(list(task.dev), final=step == total)
        )
        score = rule.score(metrics)
        improved = progress.best["score"] is None or score > progress.best["score"]
        if improved:
            more = rule.splits_if_improved(list(task.dev))
            metrics.update(evaluate(pred, spec.name, task.dev, more))
        progress.history.append({"step": step, "metrics": metrics})
        writer.write_scalars(
            step, {f"eval/{s}/{k}": v for s, m in metrics.items() for k, v in m.items()}
        )
        if main_proc:
            print(f"[{spec.name} {stage.name}] step {step}/{total} dev {json.dumps(metrics)}",
                  flush=True)  # fmt: skip
        if improved:
            progress.best = {"score": score, "step": step, "metrics": metrics}
            _save_params(out_dir / "best", step, st.params, {**extra, "metrics": metrics}, mcfg,
                         spec.num_labels)  # fmt: skip

    if eval_again:
        on_eval(state, start)

    logger = ProgressLogger(total, tr.batch_size * tr.max_length)

    def on_log(step: int, metrics: dict, dt: float) -> None:
        writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
        if step == start + 1:
            logger.start(step)
        elif main_proc:
            print(f"[{spec.name} {stage.name}] " + logger.update(step, metrics), flush=True)

    batches = (
        shard_host_batch(b, mesh)
        for b in glue_data.train_batches(
            task.train, tr.batch_size, cfg.seed + index, start, pad_multiple=tr.pad_multiple,
            process_index=jax.process_index(), process_count=jax.process_count(),
            group_by_length=tr.group_by_length,
        )
    )  # fmt: skip
    hooks = LoopHooks(on_log, on_eval, lambda: {**extra, **progress.to_json()})
    try:
        state, status = run_loop(state, train_step, batches, start, total, checkpoint=ckpt,
                                 log_every=tr.log_every, eval_every=eval_every, hooks=hooks,
                                 max_nonfinite=tr.max_nonfinite_steps or None)  # fmt: skip
    finally:
        ckpt.close()
        writer.close()
    if status != "done":
        return {"status": status, "step": int(jax.device_get(state.step))}, model, None
    if not any(h["step"] == total for h in progress.history):
        on_eval(state, total)
    final = next(h for h in progress.history if h["step"] == total)
    _save_params(out_dir / "final", total, state.params, {**extra, **final}, mcfg,
                 spec.num_labels)  # fmt: skip
    results = {
        "status": "done", "task": spec.name, "stage": stage.name, "stage_index": index, "kd": kd,
        "teacher": teacher.description if teacher is not None else None,
        "seed": cfg.seed, "lr": lr, "init": init_desc, "steps": total, "train_rows": n,
        "config_hash": config_hash(cfg), "pad_multiple": tr.pad_multiple,
        "eval_rules": rule.record(),
        "best": {"step": progress.best["step"], "metrics": progress.best["metrics"]},
        "final": {"step": total, "metrics": final["metrics"]},
        "history": progress.history, "seconds": round(time.time() - t0, 2),
    }  # fmt: skip
    best_params = restore_params(str(out_dir / "best"))
    if task.test:
        best_state = state._replace(params=jax.device_put(best_params, sh.params))
        results["submission"] = write_predictions(
            predict_split(best_state), spec.name, spec.is_regression, task.test,
            out_dir / "submission",
        )  # fmt: skip
    if main_proc:
        (out_dir / RESULTS).write_text(json.dumps(results, indent=2))
        if not tr.keep_state:  # the params live on in best/ and final/
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return results, model, best_params


def _finished(out_dir: Path, cfg: ConfigDict) -> dict | None:
    """The results of a finished stage run with the same config, else None (a finished stage
    with another config is an error: reruns never overwrite other experiments)."""
    f = out_dir / RESULTS
    if not f.is_file():
        return None
    results = json.loads(f.read_text())
    if results.get("config_hash") != config_hash(cfg):
        raise ValueError(
            f"{out_dir} holds a finished run with another config; use another --workdir"
        )
    return results


# ----------------------------------------------------------------------------- whole command


def run(cfg: ConfigDict, workdir: str | Path) -> dict:
    """Fine-tune every stage of `cfg.chain`; writes and returns `<workdir>/results.json`."""
    check_kd_kind(cfg.kd.kind)
    stages = parse_chain(cfg.chain)
    spec = glue_data.resolve_task(cfg.task)
    teacher = load_teacher(cfg.kd.teacher_path, spec.num_labels) if cfg.kd.teacher_path else None
    if cfg.kd.kind == "none" and (len(stages) > 1 or teacher is not None):
        raise ValueError(f"chain {cfg.chain!r} or kd.teacher_path distils, but kd.kind='none'")
    if cfg.kd.kind != "none" and len(stages) == 1 and teacher is None:
        raise ValueError(f"kd.kind={cfg.kd.kind!r} with one stage needs kd.teacher_path")
    for key, least in (("batch_size", 1), ("eval_batch_size", 1), ("max_length", 8)):
        if not isinstance(cfg.train[key], int) or cfg.train[key] < least:
            raise ValueError(f"config key 'train.{key}' must be an integer >= {least}, "
                             f"got {cfg.train[key]!r}")  # fmt: skip
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise GlueDataError(f"config key 'data_dir': directory not found: {cfg.data_dir}")
    glue_data.resolve_task(cfg.task)
    task = load_task_data(cfg)
    workdir = Path(workdir)
    for i, stage in enumerate(stages):  # refuse another config's finished run before writing
        _finished(workdir / f"{i}_{stage.name}", cfg)

    # The run is accepted once a stage is set up: a config error leaves no config.json behind.
    def accepted() -> None:
        if jax.process_index() == 0:
            save_config(cfg, workdir)

    init: tuple[str, str] | dict = (cfg.init.kind, cfg.init.path)
    all_results = []
    for i, stage in enumerate(stages):
        results, model, best_params = run_stage(cfg, task, stage, i, workdir, init, teacher,
                                                accepted)  # fmt: skip
        all_results.append(results)
        if results["status"] != "done":
            return {"status": results["status"], "stages": all_results}
        assert best_params is not None  # a finished stage has its best/ weights
        init, teacher = best_params, Teacher(model, best_params, f"stage {i}")
    summary = {
        "status": "done", "task": task.spec.name, "seed": cfg.seed, "chain": cfg.chain,
        "config_hash": config_hash(cfg), "stages": all_results, "result": all_results[-1],
    }  # fmt: skip
    if jax.process_index() == 0:
        (workdir / RESULTS).write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(prog="bipft finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="output directory")
    add_distributed_args(parser)
    cfg, args = parse_command_line(parser, list(sys.argv[1:] if argv is None else argv))
    maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                 args.distributed_timeout_s, enabled=args.distributed)  # fmt: skip
    if jax.process_count() == 1:
        install_sigterm_handler()
    summary = run(cfg, args.workdir)
    if summary["status"] != "done":
        print(f"{summary['status']}: rerun the same command to continue", flush=True)
        return 0
    r = summary["result"]
    print(f"{r['task']} {r['stage']}: best {json.dumps(r['best']['metrics'])}")
    return 0
