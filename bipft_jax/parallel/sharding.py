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


def _local_blocks(mesh: Mesh) -> tuple[int, list[int]]:
    """``(n, blocks)``: the batch splits into ``n`` equal row blocks; ``blocks`` are the sorted
    indices of those this process's devices hold (all of them when ``tensor`` spans hosts)."""
    n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    index_map = batch_sharding(mesh).addressable_devices_indices_map((n,))
    return n, sorted({idx[0].indices(n)[0] for idx in index_map.values() if idx is not None})


def host_batch_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """Sorted global row indices of a batch that this process's devices hold: exactly the rows
    the process must load (``shard_host_batch`` puts them in place)."""
    n, blocks = _local_blocks(mesh)
    if global_batch_size % n:
        raise ValueError(
            f"global batch of {global_batch_size} rows is not divisible by the {n} batch "
            f"shards of mesh {dict(mesh.shape)}"
        )
    size = global_batch_size // n
    return np.concatenate([np.arange(b * size, (b + 1) * size) for b in blocks])


def put_global(host_tree: PyTree, shardings: PyTree) -> PyTree:
    """Host arrays (the same full value on every process) -> global arrays on ``shardings``;
    each process copies only the pieces its devices hold."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, host_tree, shardings)


def shard_host_batch(
    local_batch: PyTree, mesh: Mesh, global_batch_size: int | None = None
) -> PyTree:
    """Global arrays, split over the batch axes, from each process's rows of the batch.

    ``local_batch`` holds rows ``host_batch_rows(mesh, global_batch_size)`` of the global batch,
    in that order. Without ``global_batch_size`` the processes must hold disjoint equal parts
    (global = local x process count); a mesh whose ``tensor`` axis spans processes (so they
    share rows) then needs it, and is refused without. One process: a sharded ``device_put``.
    """
    n, blocks = _local_blocks(mesh)
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        rows = x.shape[0]
        if global_batch_size is None and len(blocks) * jax.process_count() != n:
            raise ValueError(
                f"mesh {dict(mesh.shape)}: processes share batch rows (an axis outside "
                "data x fsdp spans processes); load host_batch_rows(mesh, global_batch_size) "
                "and pass global_batch_size"
            )
        total = global_batch_size or rows * jax.process_count()
        if total % n:
            raise ValueError(
                f"global batch of {total} rows (local {rows}, {jax.process_count()} processes) "
                f"is not divisible by the {n} batch shards of mesh {dict(mesh.shape)}"
            )
        if rows != total // n * len(blocks):
            raise ValueError(
                f"process {jax.process_index()} holds {len(blocks)} of the {n} batch shards "
                f"of a {total}-row batch, so it must pass {total // n * len(blocks)} rows, "
                f"not {rows}"
            )
        size, start = total // n, {b: i for i, b in enumerate(blocks)}

        def piece(idx):
            lo = idx[0].indices(total)[0]
            at = start[lo // size] * size
            return x[(slice(at, at + size), *idx[1:])]

        return jax.make_array_from_callback((total, *x.shape[1:]), sharding, piece)

    return jax.tree.map(put, local_batch)
