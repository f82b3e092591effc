"""`bipft pretrain --dry-run`: compile the train step ahead of time and report what it costs.

    bipft pretrain --config configs/pretrain/bipft_base.py --workdir /tmp/x --dry-run \\
        --dry-run-devices 64 --config.mesh.fsdp=-1 --config.mesh.data=1 --config.sharding=fsdp

Nothing is trained, read from the corpus or written: the state, the teacher and one global batch
are abstract (shapes and shardings only), and ``jax.jit(step).lower(...).compile()`` builds the
step for the config's mesh. With ``--dry-run-devices N`` the mesh runs over ``N`` simulated CPU
devices (``--xla_force_host_platform_device_count``), so a pod's mesh and global batch can be
checked on a laptop; memory figures are then XLA:CPU's, a guide to a TPU/GPU's rather than equal.
Reported per device: parameter, optimizer and teacher bytes (from the shardings), XLA's argument /
temporary (activation) / output bytes, FLOPs of one step, and the collectives in the compiled HLO.
The teacher is the FP model of the student's sizes (an HF teacher must have them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax import paths
from bipft_jax.errors import UserError
from bipft_jax.parallel import batch_sharding, get_rules, make_mesh, state_shardings

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def simulate_devices(n: int) -> None:
    """Run JAX on ``n`` fake CPU devices; must come before JAX starts its backend."""
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    if jax.device_count() != n:
        raise UserError(
            f"--dry-run-devices {n}: JAX had already started with {jax.device_count()} devices"
        )


def _vocab_size(c) -> int:
    from bipft_jax.data.prepare import read_manifest
    from bipft_jax.data.tokenizer import read_vocab

    vocab_file = c.data.vocab_file
    if not vocab_file and c.data.prepared_dir:
        vocab_file = read_manifest(c.data.prepared_dir)["settings"]["vocab_file"]
    return max(read_vocab(vocab_file or paths.default_vocab_file()).values()) + 1


def abstract_batch(c, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The loader's global batch as shapes with the batch sharding."""
    sh, b, n = batch_sharding(mesh), c.data.global_batch_size, c.data.seq_len
    rows = {"input_ids": (b, n), "token_type_ids": (b, n), "attention_mask": (b, n),
            "mlm_labels": (b, n), "next_sentence_label": (b,)}  # fmt: skip
    return {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=sh) for k, s in rows.items()}


def _bytes_per_device(tree) -> int:
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def hlo_collectives(hlo: str) -> dict[str, int]:
    """How many of each collective op the HLO text holds (async ``-start`` pairs count once)."""
    return dict(sorted(Counter(_COLLECTIVE.findall(hlo)).items()))


def dry_run(c, student_config: Callable, make_loss: Callable) -> dict[str, Any]:
    """Compile the config's train step on its mesh; returns the report (see the module doc).
    ``student_config(c, vocab_size)`` and ``make_loss(c, student, teacher)`` are the
    pretrainer's (passed in: the pretrainer imports this module)."""
    from bipft_jax.model.bert import BertForPreTraining
    from bipft_jax.model.config import QuantSpec
    from bipft_jax.train.loop import TrainState, abstract_state, jit_step, make_train_step
    from bipft_jax.train.loop import train_state_shardings as state_sh
    from bipft_jax.train.optim import lr_schedule, make_optimizer

    mesh, rules = make_mesh(dict(c.mesh)), get_rules(c.sharding)
    cfg = student_config(c, _vocab_size(c))
    student = BertForPreTraining(cfg)
    teacher = BertForPreTraining(dataclasses.replace(cfg, quant=QuantSpec()))
    batch = abstract_batch(c, mesh)
    ids = jax.ShapeDtypeStruct((1, c.data.seq_len), jnp.int32)
    opt_cfg = {**c.optim.to_dict(), "total_steps": c.train.total_steps}
    opt_cfg["alpha_lr"] = opt_cfg["alpha_lr"] or None
    tx = make_optimizer(opt_cfg)
    init_params = lambda rng: student.init(rng, jnp.zeros(ids.shape, ids.dtype))["params"]  # noqa: E731
    key = jax.random.PRNGKey(0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t_boxed = jax.eval_shape(lambda r: teacher.init(r, jnp.zeros(ids.shape, ids.dtype)), key)
        t_sh = nn.meta.unbox(state_shardings(t_boxed["params"], mesh, rules))
        t_shapes = jax.eval_shape(
            lambda r: nn.meta.unbox(teacher.init(r, jnp.zeros(ids.shape, ids.dtype))["params"]), key
        )
    t_params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            t_shapes, t_sh)  # fmt: skip
    sh = state_sh(init_params, tx, mesh, rules, key)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shapes = jax.eval_shape(
            lambda r: TrainState(jnp.zeros((), jnp.int32), nn.meta.unbox(init_params(r)),
                                 tx.init(nn.meta.unbox(init_params(r)))), key
        )  # fmt: skip
    state = abstract_state(sh, shapes)
    step_fn = make_train_step(make_loss(c, student, teacher), tx,
                              c.train.grad_accum_steps, c.seed, lr_schedule(opt_cfg))  # fmt: skip
    step = jit_step(step_fn, mesh, rules, sh, const_shardings=(t_sh,))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step.jitted.lower(state, batch, t_params).compile()  # type: ignore[attr-defined]
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "platform": jax.devices()[0].platform,
        "global_batch_size": c.data.global_batch_size,
        "seq_len": c.data.seq_len,
        "grad_accum_steps": c.train.grad_accum_steps,
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "per_device_bytes": {
            "params": _bytes_per_device(state.params),
            "opt_state": _bytes_per_device(state.opt_state),
            "teacher": _bytes_per_device(t_params),
            "arguments": int(mem.argument_size_in_bytes),
            "temp": int(mem.temp_size_in_bytes),
            "output": int(mem.output_size_in_bytes),
            "alias": int(mem.alias_size_in_bytes),
        },
        "flops_per_device": float(cost.get("flops", 0.0)),
        "flops_per_step": float(cost.get("flops", 0.0)) * mesh.size,
        "collectives": hlo_collectives(compiled.as_text()),
    }


def format_report(r: dict[str, Any]) -> str:
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    lines = [
        f"dry run: mesh {r['mesh']} over {r['devices']} {r['platform']} devices; global batch "
        f"{r['global_batch_size']} x seq {r['seq_len']} (grad_accum_steps "
        f"{r['grad_accum_steps']}); {r['params']:,} student params",
        "per device: " + ", ".join(f"{k} {mib(v)}" for k, v in r["per_device_bytes"].items()),
        f"FLOPs per step: {r['flops_per_step']:.3e} ({r['flops_per_device']:.3e} per device)",
        "collectives in the compiled step: "
        + (", ".join(f"{k} x{v}" for k, v in r["collectives"].items()) or "none"),
    ]
    return "\n".join(lines) + "\n" + json.dumps(r)
