"""Shardings for train state and batches, and multi-host batch assembly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bipft_jax.parallel.rules import BATCH_AXES, Rules

PyTree = Any


def state_shardings(abstract_state: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """``NamedSharding`` per leaf of a (possibly ``nn.Partitioned``-boxed) state tree.

    Leaves without logical names (step counters, optimizer scalars) are replicated. The result
    is a valid ``in_shardings``/``out_shardings`` for ``jax.jit`` on that state.
    """
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_state), mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``data`` x ``fsdp``; other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_host_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """Assemble each process's slice of the batch into global arrays sharded over the batch axes.

    Every process passes its own ``local_batch`` (leading dim = global batch / process count);
    on a single process this is just a sharded ``device_put``.
    """
    sharding = batch_sharding(mesh)
    n_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

    def put(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % n_shards:
            raise ValueError(
                f"global batch of {global_rows} rows (local {x.shape[0]} x "
                f"{jax.process_count()} processes) is not divisible by the {n_shards} batch "
                f"shards of mesh {dict(mesh.shape)}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)
