"""`bipft pretrain`: distil a frozen FP teacher into a binary student with the BiPFT objective.

    bipft pretrain --config configs/pretrain/tiny.py --workdir /tmp/bipft_tiny [--config.a.b=v]

The run resumes automatically from the newest checkpoint in ``workdir`` (model, optimizer and
data-loader state), saves every ``train.save_every`` steps (async, keep-last-N), saves at the
current step and exits 0 on SIGTERM, and writes ``config.json``, ``metrics.jsonl`` and
TensorBoard events (with tokens/s, MFU and data-wait time) to ``workdir``, and keeps compiled
steps in JAX's persistent cache (``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/bipft_jax/jax``).
Multi-host: add ``--distributed`` (see ``--help``). ``--dry-run`` compiles and reports only.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from bipft_jax import paths
from bipft_jax.checkpoint import (
    CheckpointManager,
    install_sigterm_handler,
    restore_params,
    restore_state,
    transfer_params,
)
from bipft_jax.checkpoint.model_card import write_model_card
from bipft_jax.errors import CommandParser
from bipft_jax.losses import (
    DEFAULT_PRETRAIN_WEIGHTS,
    bipft_pretrain_loss,
    mlm_targets,
    pretrain_contract,
)
from bipft_jax.parallel import (
    get_rules,
    host_batch_rows,
    make_mesh,
    put_global,
    shard_host_batch,
    state_shardings,
)
from bipft_jax.parallel.distributed import (
    add_distributed_args,
    enable_compilation_cache,
    maybe_initialize_distributed,
)
from bipft_jax.quant import with_numel_multiplier
from bipft_jax.train import config_io
from bipft_jax.train.loop import (
    LoopHooks,
    TrainState,
    abstract_state,
    init_train_state,
    jit_step,
    make_eval_step,
    make_train_step,
    run_loop,
    train_state_shardings,
)
from bipft_jax.train.optim import lr_schedule, make_optimizer
from bipft_jax.train.pretrain_eval import (
    format_summary,
    make_pretrain_eval,
    mean_metrics,
    read_summary,
    write_summary,
)

TEACHER_SOURCES = ("random", "hf", "checkpoint")


def default_config() -> ml_collections.ConfigDict:
    """Every key `bipft pretrain` understands, with defaults (experiment files override)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(
        method="bipft", size="tiny", dtype="float32", remat=False, scan_layers=False,
        hidden_dropout=0.1, attention_dropout=0.1, overrides=(),
    )  # fmt: skip
    c.teacher = dict(source="random", path="", seed=1234, dropout=False)
    c.init = dict(from_teacher=True, calibrate=True)
    c.data = dict(
        prepared_dir="", files=(), vocab_file="", seq_len=128, global_batch_size=32,
        mask_prob=0.15, max_predictions=0, max_docs=0, eval_fraction=0.02, eval_batches=8,
        num_workers=0,
    )  # fmt: skip
    c.loss = dict(**DEFAULT_PRETRAIN_WEIGHTS, temperature=1.0, mask_hidden=False)
    c.optim = dict(
        name="adamw", lr=2e-4, alpha_lr=0.0, weight_decay=0.01, schedule="linear",
        warmup_steps=0, end_lr=0.0, clip_norm=1.0, schedule_steps_per_update=1,
    )  # fmt: skip
    c.train = dict(
        total_steps=1000, grad_accum_steps=1, log_every=10, eval_every=0, save_every=1000,
        keep_checkpoints=3, async_checkpoint=True,
        on_corrupt_checkpoint="fallback",  # or "error": stop instead of using an older step
        max_nonfinite_steps=10,  # stop after this many skipped NaN/Inf steps in a row (0: never)
    )  # fmt: skip
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding = "dp"
    return c


# ----------------------------------------------------------------------------- models


def max_predictions(c: ml_collections.ConfigDict) -> int:
    """Masked positions per row that the MLM head sees: ``data.max_predictions``, or (0) the most
    the masker can choose, ``max(1, round(seq_len · mask_prob))``; the loader caps rows at it."""
    d = c.data
    return d.max_predictions or max(1, round(d.seq_len * d.mask_prob))


def student_config(c: ml_collections.ConfigDict, vocab_size: int):
    from bipft_jax.model.presets import apply_overrides, get_model_config

    m = c.model
    size, sizes = m.size, {}
    if size == "hf":  # the teacher's sizes (a Hugging Face directory)
        from bipft_jax.model.hf_import import hf_sizes

        size, sizes = "base", hf_sizes(_teacher_dir(c.teacher.path))
        vocab_size = sizes.pop("vocab_size")
    cfg = get_model_config(
        m.method, size, vocab_size=vocab_size, dtype=m.dtype, remat=m.remat,
        scan_layers=m.scan_layers, hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout, **sizes,
    )  # fmt: skip
    cfg = apply_overrides(cfg, m.overrides)  # "quant.estimators.rank=2", ... (BertConfig fields)
    return with_numel_multiplier(cfg, c.train.grad_accum_steps)


def _teacher_dir(path: str) -> str:
    try:
        return paths.resolve_model_dir(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config teacher.path: {e}") from None


def _check_fits(student, teacher) -> None:
    keys = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
    bad = [f"{k}: student {getattr(student, k)} vs teacher {getattr(teacher, k)}"
           for k in keys if getattr(student, k) != getattr(teacher, k)]  # fmt: skip
    if bad:
        raise ValueError("teacher and student sizes differ (" + "; ".join(bad) + ")")


HEADS = ("predictions", "seq_relationship")


def build_teacher(c, student_cfg, mesh, rules, ids) -> tuple[nn.Module, Any, Any, bool]:
    """(model, params, shardings, has_heads) of the frozen FP teacher, placed by the sharding
    rules. ``has_heads`` is False for a Hugging Face encoder without MLM/NSP heads (MiniLM):
    its head parameters are then random and any KD term that reads them is refused."""
    import dataclasses

    from bipft_jax.model.bert import BertForPreTraining
    from bipft_jax.model.config import QuantSpec

    t = c.teacher
    if t.source not in TEACHER_SOURCES:
        raise ValueError(f"config teacher.source must be one of {TEACHER_SOURCES}: {t.source!r}")
    fp = dataclasses.replace(student_cfg, quant=QuantSpec())
    hf_state, has_heads = None, True
    if t.source == "hf":
        from bipft_jax.model.hf_import import bert_config_from_hf, read_hf_checkpoint

        hf_config, hf_state = read_hf_checkpoint(_teacher_dir(t.path))
        has_heads = any(k.startswith("cls.") for k in hf_state)
        head_terms = [k for k in ("mlm_kd", "nsp_kd") if c.loss[k]]
        if not has_heads and head_terms:
            raise ValueError(
                f"teacher {t.path!r} has no MLM/NSP heads (an encoder only), so it cannot "
                f"supervise {head_terms}; set " + ", ".join(f"loss.{k}=0" for k in head_terms)
            )
        fp = bert_config_from_hf(hf_config, dtype=student_cfg.dtype, remat=student_cfg.remat,
                                 scan_layers=student_cfg.scan_layers)  # fmt: skip
        _check_fits(student_cfg, fp)
    model = BertForPreTraining(fp)
    init = lambda rng: model.init(rng, ids)["params"]  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = nn.meta.unbox(
            state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
        )
        params = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(
            jax.random.PRNGKey(t.seed)
        )
    if t.source == "hf":
        from bipft_jax.model.hf_import import import_hf_weights

        assert hf_state is not None  # read above when source == "hf"
        # The random init (kept where the checkpoint has no heads) gathered to every host: a
        # device_get of arrays that span hosts fails on a pod.
        host = multihost_utils.process_allgather(params, tiled=True)
        new, _ = import_hf_weights({"params": host}, hf_state,
                                   ignore_missing=() if has_heads else HEADS,
                                   ignore_unexpected=("cls.predictions.decoder",))  # fmt: skip
        params = put_global(new["params"], shardings)
    elif t.source == "checkpoint":
        params = _restore_teacher_checkpoint(t.path, params, shardings)
    return model, params, shardings, has_heads


def _restore_teacher_checkpoint(path: str, params, shardings):
    """Student params of a finished FP `bipft pretrain` run (its workdir) as the teacher: read
    straight onto the teacher's shardings; they must be exactly the FP model's params."""
    if not (paths.local_path(path, "config teacher.path") / "checkpoints").is_dir():
        raise FileNotFoundError(f"config teacher.path: no checkpoints/ in workdir {path!r}")
    like = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, shardings)  # fmt: skip
    return restore_params(path, like=like)


def init_from_teacher(student_boxed, teacher_params, skip: tuple[str, ...] = ()):
    """Student params with every leaf that the teacher has copied over (`transfer_params`; the
    subtrees in ``skip`` keep the student's init). A leaf on both sides with different shapes
    is an error, never silently skipped."""
    out, _ = transfer_params(student_boxed, teacher_params, what="the teacher", skip=skip,
                             names=("student", "teacher"))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- losses


def _forward(model, params, b, rng, train: bool, intermediates: bool, positions=None):
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, b["input_ids"], b["attention_mask"],
                       b["token_type_ids"], deterministic=not train,
                       return_intermediates=intermediates, rngs=rngs,
                       masked_positions=positions)  # fmt: skip


def make_pretrain_loss(c, student, teacher):
    """``loss_fn(params, batch, rng, teacher_params)`` of the BiPFT objective (config weights).

    The objective's ``pretrain_contract`` decides whether the teacher runs and whether both
    models return their intermediates. The MLM head (and MLM-KD) runs on the masked positions
    only: ``max_predictions`` gathered rows per example, as original BERT; the loss equals the
    all-positions one."""
    weights = {k: c.loss[k] for k in DEFAULT_PRETRAIN_WEIGHTS}
    contract = pretrain_contract(weights, c.loss.mask_hidden)
    inter, n_pred = contract.needs_intermediates, max_predictions(c)

    def loss_fn(params, batch, rng, teacher_params):
        positions, _ = mlm_targets(batch, n_pred)
        s_rng, t_rng = jax.random.split(rng)
        s_out = _forward(student, params, batch, s_rng, True, inter, positions)
        t_out = {}
        if contract.needs_teacher:
            t_out = _forward(teacher, teacher_params, batch, t_rng, c.teacher.dropout, inter,
                             positions)  # fmt: skip
            t_out = jax.lax.stop_gradient(t_out)
        total, parts = bipft_pretrain_loss(s_out, t_out, batch, weights, c.loss.temperature,
                                           c.loss.mask_hidden, max_predictions=n_pred)  # fmt: skip
        parts.pop("total")
        return total, {(k if k.endswith("_acc") else f"loss_{k}"): v for k, v in parts.items()}

    return loss_fn


# ----------------------------------------------------------------------------- data


def make_loaders(c, split_eval: bool, rows=None):
    """Train (and eval) loaders of this host's ``rows`` of each global batch (default: its
    contiguous slice; ``train_and_evaluate`` passes the rows its devices hold)."""
    from bipft_jax.data.loader import PretrainLoader

    d = c.data
    source: Any = d.prepared_dir or (
        list(d.files) or [str(p) for p in paths.default_corpus_files()]
    )
    if not d.prepared_dir:
        missing = [f for f in source if not glob.glob(str(f))]
        if missing:
            raise FileNotFoundError(f"config data.files: corpus file(s) not found: {missing}")
    elif not paths.local_path(d.prepared_dir, "config data.prepared_dir").is_dir():
        raise FileNotFoundError(f"config data.prepared_dir {d.prepared_dir!r} does not exist")
    kw = dict(seq_len=d.seq_len, seed=c.seed, vocab_file=d.vocab_file or None,
              mask_prob=d.mask_prob, max_predictions=max_predictions(c),
              max_docs=d.max_docs or None, eval_fraction=d.eval_fraction, rows=rows)  # fmt: skip
    train = PretrainLoader(source, d.global_batch_size, num_workers=d.num_workers, **kw)
    evl = None
    if split_eval and d.eval_fraction > 0:
        evl = PretrainLoader(source, d.global_batch_size, split="eval", **kw)
    return train, evl


# ----------------------------------------------------------------------------- main run


def refuse_urls(c: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """The workdir as a local ``Path``; a URL there or in the corpus / teacher paths is refused
    in one line (``paths.local_path``) before anything is read or written."""
    for f in c.data.files:
        paths.local_path(f, "config data.files entry")
    if c.data.prepared_dir:
        paths.local_path(c.data.prepared_dir, "config data.prepared_dir")
    if c.teacher.source != "random" and c.teacher.path:
        paths.local_path(c.teacher.path, "config teacher.path")
    return paths.local_path(workdir, "--workdir")


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str | Path) -> str:
    """Build everything from the config, resume if possible, train; returns the loop status."""
    from bipft_jax.train.metrics import MetricWriter, ProgressLogger, bert_flops_per_token

    workdir = refuse_urls(c, workdir)
    main_proc = jax.process_index() == 0
    mesh = make_mesh(dict(c.mesh))
    rules = get_rules(c.sharding)
    gbs = c.data.global_batch_size
    loader, eval_loader = make_loaders(c, c.train.eval_every > 0, host_batch_rows(mesh, gbs))
    vocab_size = len(loader.builder.vocab.is_continuation)  # the tokenizer's vocabulary size
    student_cfg = student_config(c, vocab_size)
    from bipft_jax.model.bert import BertForPreTraining

    student = BertForPreTraining(student_cfg)
    first = loader.batch_at(0)
    ids = jnp.asarray(first["input_ids"][:1])
    teacher, t_params, t_sh, t_heads = build_teacher(c, student_cfg, mesh, rules, ids)

    opt_cfg = {**c.optim.to_dict(), "total_steps": c.train.total_steps}
    opt_cfg["alpha_lr"] = opt_cfg["alpha_lr"] or None
    tx = make_optimizer(opt_cfg)
    lr_fn = lr_schedule(opt_cfg)

    calib = shard_host_batch(first, mesh, gbs)

    def init_params(rng, teacher_params, cb):
        boxed = student.init(rng, cb["input_ids"][:1])["params"]
        if not c.init.from_teacher:
            return boxed
        boxed = init_from_teacher(boxed, teacher_params, skip=() if t_heads else HEADS)
        if c.init.calibrate:
            from bipft_jax.quant import calibrate_alphas

            v = calibrate_alphas(student, {"params": boxed}, cb["input_ids"],
                                 cb["attention_mask"], cb["token_type_ids"])  # fmt: skip
            boxed = v["params"]
        return boxed

    init_args = (jax.random.PRNGKey(c.seed), t_params, calib)
    ckpt = CheckpointManager(workdir, c.train.keep_checkpoints, c.train.save_every,
                             c.train.async_checkpoint, c.train.on_corrupt_checkpoint)  # fmt: skip
    start = ckpt.latest_step()
    if start is None:
        state, sh = init_train_state(init_params, tx, mesh, rules, *init_args)
        start = 0
    else:
        sh = train_state_shardings(init_params, tx, mesh, rules, *init_args)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shapes = jax.eval_shape(
                lambda *a: TrainState(jnp.zeros((), jnp.int32), nn.meta.unbox(init_params(*a)),
                                      tx.init(nn.meta.unbox(init_params(*a)))), *init_args
            )  # fmt: skip
        state, extra = restore_state(ckpt, abstract_state(sh, shapes))
        loader.restore(extra["loader"])
        if main_proc:
            print(f"resumed from step {start} ({ckpt.directory})", flush=True)
            if extra.get("config_hash") != config_io.config_hash(c):
                print("warning: the config differs from the checkpoint's", flush=True)
    if main_proc:  # the run is accepted: its config, and the model config fine-tuning reads
        config_io.save_config(c, workdir)
        write_model_card(workdir, student_cfg, 0, preset=c.model.method)
    del calib
    step_fn = make_train_step(make_pretrain_loss(c, student, teacher), tx,
                              c.train.grad_accum_steps, c.seed, lr_fn)  # fmt: skip
    train_step = jit_step(step_fn, mesh, rules, sh, const_shardings=(t_sh,))
    eval_fn = make_pretrain_eval(student, teacher, max_predictions(c))
    eval_step = jit_step(make_eval_step(eval_fn), mesh, rules, sh, returns_state=False,
                         const_shardings=(t_sh,))  # fmt: skip
    eval_batches = []
    if eval_loader is not None:
        eval_batches = [shard_host_batch(eval_loader.batch_at(i), mesh, gbs)
                        for i in range(c.data.eval_batches)]  # fmt: skip

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    d = c.data
    progress = ProgressLogger(
        c.train.total_steps, d.global_batch_size * d.seq_len,
        bert_flops_per_token(student_cfg.hidden_size, student_cfg.intermediate_size,
                             student_cfg.num_layers, student_cfg.vocab_size, d.seq_len,
                             max_predictions(c), teacher_forward=teacher is not None),
    )  # fmt: skip
    # Rows past the restored step go (the resume writes them again); a fresh start redoes step 0.
    writer = MetricWriter(workdir, resume_step=start, redone=("eval/",) if start == 0 else ())
    if main_proc:
        print(f"student {c.model.method}/{c.model.size}: {n_params:,} params; mesh "
              f"{dict(mesh.shape)}; rules {c.sharding}; start {start}", flush=True)  # fmt: skip

    def on_log(step, metrics, dt):
        if step == start + 1:
            progress.start(step)  # the first step includes compilation
        line = progress.update(step, metrics)
        writer.write_scalars(step, {**metrics, "step_time_s": dt, **progress.speed})
        if main_proc:
            print(line, flush=True)

    def evaluate(st, step, label=None):
        if not eval_batches:
            return
        if label is None and step == c.train.total_steps:
            label = "final"
        mean = mean_metrics([jax.device_get(eval_step(st, b, t_params)) for b in eval_batches])
        scalars = {f"eval/{k}": (float(np.mean(v)) if isinstance(v, list) else v)
                   for k, v in mean.items()}  # fmt: skip
        for key in ("hidden_mse", "hidden_cos"):
            scalars.update({f"eval/{key}/{i}": v for i, v in enumerate(mean[key])})
        writer.write_scalars(step, scalars)
        if main_proc:
            shown = {k: v for k, v in scalars.items() if k.count("/") == 1}
            print(f"eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
            if label is not None:
                write_summary(workdir, label, step, mean)

    if start == 0:
        evaluate(state, 0, "step0")

    def batches():
        while True:
            yield shard_host_batch(next(loader), mesh, gbs)

    hooks = LoopHooks(
        on_log,
        evaluate,
        lambda: {"loader": loader.state(), "config_hash": config_io.config_hash(c)},
    )
    step_with_teacher = lambda s, b: train_step(s, b, t_params)  # noqa: E731
    try:
        state, status = run_loop(state, step_with_teacher, batches(), start, c.train.total_steps,
                                 checkpoint=ckpt, log_every=c.train.log_every,
                                 eval_every=c.train.eval_every, hooks=hooks,
                                 max_nonfinite=c.train.max_nonfinite_steps or None)  # fmt: skip
    finally:
        ckpt.close()
        writer.close()
        loader.close()
    final_step = int(jax.device_get(state.step))
    if main_proc:
        print(f"{status} at step {final_step}; checkpoints in {ckpt.directory}", flush=True)
        if status == "done" and eval_batches:
            print("summary (student vs teacher; eval MLM on held-out documents):")
            print(format_summary(read_summary(workdir)), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="bipft pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", help="checkpoints, config and metrics (required to train)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="compile the train step for the config's mesh and batch, report "
        "memory per device, FLOPs and collectives, and exit (nothing is written)",
    )
    parser.add_argument(
        "--dry-run-devices",
        type=int,
        default=0,
        metavar="N",
        help="with --dry-run: simulate N CPU devices (e.g. a pod's count)",
    )
    add_distributed_args(parser)
    cfg, args = config_io.parse_command_line(parser, list(sys.argv[1:] if argv is None else argv))
    if args.dry_run:
        from bipft_jax.train import dry_run

        if args.dry_run_devices:
            dry_run.simulate_devices(args.dry_run_devices)
        print(
            dry_run.format_report(dry_run.dry_run(cfg, student_config, make_pretrain_loss)),
            flush=True,
        )
        return 0
    if not args.workdir:
        parser.error("the following arguments are required: --workdir")
    maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                 args.distributed_timeout_s, enabled=args.distributed)  # fmt: skip
    refuse_urls(cfg, args.workdir)  # before anything is written or compiled
    enable_compilation_cache()
    if jax.process_index() == 0:
        config_io.print_config(cfg)
    if jax.process_count() == 1:
        install_sigterm_handler()
    # User errors (config, data, paths, checkpoints) propagate to the `bipft` edge (errors.py).
    status = train_and_evaluate(cfg, args.workdir)
    return 0 if status in ("done", "preempted") else 1


if __name__ == "__main__":
    from bipft_jax.errors import run_command

    sys.exit(run_command("bipft pretrain", main, sys.argv[1:]))
