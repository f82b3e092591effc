"""One process of the two-process test: join, build a global array from local rows, reduce.

Takes the same flags the launch scripts pass to ``bipft pretrain``, e.g.
``python -m tests.parallel.dist_worker pretrain --distributed --coordinator_address HOST:PORT
--num_processes 2 --process_id 0``. Prints one JSON line with the results.
"""

import argparse
import json
import os

if __name__ == "__main__":  # not when a test imports full_data(): it must keep 8 devices
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # 2 per process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from bipft_jax.parallel import (  # noqa: E402
    add_distributed_args,
    make_mesh,
    maybe_initialize_distributed,
    replicated,
    shard_host_batch,
)

ROWS, COLS = 8, 5


def full_data() -> np.ndarray:
    return np.random.default_rng(123).normal(size=(ROWS, COLS)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["pretrain"])
    parser.add_argument("--ckpt_dir", default=None, help="also save+restore a checkpoint here")
    add_distributed_args(parser)
    a = parser.parse_args(argv)
    maybe_initialize_distributed(
        a.coordinator_address,
        a.num_processes,
        a.process_id,
        timeout_s=a.distributed_timeout_s,
        enabled=a.distributed,
    )
    pid = jax.process_index()
    mesh = make_mesh({"data": -1})
    rows = ROWS // jax.process_count()
    local = full_data()[pid * rows : (pid + 1) * rows]
    x = shard_host_batch({"x": local}, mesh)["x"]
    total = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=replicated(mesh))(x)
    psum = jax.jit(
        jax.shard_map(
            lambda a: jax.lax.psum(jnp.sum(a, axis=0), ("data", "fsdp")),
            mesh=mesh,
            in_specs=P(("data", "fsdp")),
            out_specs=P(),
        )
    )(x)
    out = {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "global_shape": list(x.shape),
        "sum": np.asarray(total.addressable_data(0)).tolist(),
        "psum": np.asarray(psum.addressable_data(0)).tolist(),
    }
    from bipft_jax.checkpoint import install_sigterm_handler

    out["sigterm_handler_installed"] = install_sigterm_handler()
    if a.ckpt_dir:
        out["ckpt_max_abs_err"] = _checkpoint_roundtrip(a.ckpt_dir, x)
    print(json.dumps(out), flush=True)


def _checkpoint_roundtrip(directory: str, x: jax.Array) -> float:
    """All processes save the 4-way row-sharded array, then restore it onto a 2x2 mesh
    (rows split 2-way over ``data``, replicated over ``tensor``): a cross-process reshard."""
    from bipft_jax.checkpoint import CheckpointManager

    with CheckpointManager(directory, save_every=1, async_save=True) as m:
        m.save(3, {"x": x}, extra={"pos": 17})
        m.wait_until_finished()
        mesh = make_mesh({"data": 2, "tensor": 2})
        target = jax.sharding.NamedSharding(mesh, P("data"))
        state, extra = m.restore({"x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target)})
    assert extra == {"pos": 17}, extra
    assert state["x"].sharding == target
    errs = [
        np.abs(np.asarray(s.data) - full_data()[s.index]).max()
        for s in state["x"].addressable_shards
    ]
    return float(max(errs))


if __name__ == "__main__":
    main()
