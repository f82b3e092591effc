"""Mesh, logical-axis rules, shardings and multi-host start-up (model independent)."""

from bipft_jax.parallel.distributed import (
    DistributedInitError,
    add_distributed_args,
    maybe_initialize_distributed,
)
from bipft_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from bipft_jax.parallel.rules import PRESETS, check_logical_names, get_rules
from bipft_jax.parallel.sharding import (
    batch_sharding,
    host_batch_rows,
    put_global,
    replicated,
    shard_host_batch,
    state_shardings,
)

__all__ = [
    "MESH_AXES",
    "DistributedInitError",
    "PRESETS",
    "add_distributed_args",
    "batch_sharding",
    "check_logical_names",
    "get_rules",
    "host_batch_rows",
    "make_mesh",
    "maybe_initialize_distributed",
    "put_global",
    "replicated",
    "resolve_mesh_shape",
    "shard_host_batch",
    "state_shardings",
]
