"""The one table mapping logical axis names to mesh axes, with presets.

Every parameter carries logical names (``nn.with_logical_partitioning``); which mesh axis a name
lands on is decided only here. Presets:

In every preset the batch is split over ``fsdp`` and ``data`` (``BATCH_AXES``).

* ``dp``   -- pure data parallelism: params replicated.
* ``fsdp`` -- as ``dp``, plus every ``embed`` dimension of params (and optimizer state) split over
  ``fsdp`` (ZeRO-3 style; XLA all-gathers weights where they are used).
* ``tp``   -- Megatron-style tensor parallelism: ``heads``, ``mlp`` and ``vocab`` over ``tensor``;
  ``embed`` over ``fsdp``, so a ``fsdp x tensor`` mesh shards 2-D (size-1 ``fsdp`` = pure TP).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# fsdp-major on purpose: with ("data", "fsdp") XLA's SPMD partitioner (jaxlib 0.10.2, GSPMD and
# Shardy alike) swapped batch shards in the backward pass on a data x fsdp x tensor mesh and
# returned wrong gradients; tests/parallel/test_batch_axis_order.py reproduces and guards it.
BATCH_AXES: tuple[str, ...] = ("fsdp", "data")

# The logical names the model's params use (a test checks every preset's params against them).
# Names mapped to None are replicated. Activations carry no constraints: batches are placed by
# `sharding.batch_sharding` (BATCH_AXES) and XLA propagates from there.
LOGICAL_AXES: tuple[str, ...] = (
    "vocab",  # word-piece vocabulary
    "embed",  # hidden size
    "mlp",  # feed-forward inner size
    "heads",  # attention heads (hidden size of Q/K/V, split by head)
    "qkv_rank",  # BiPFT estimators' low-rank outputs
    "layers",  # stacked layers under nn.scan
    "position",  # position-embedding table rows
    "token_type",  # token-type (segment) table rows
    "classes",  # NSP / classifier outputs
)


def _table(**mapping: str | tuple[str, ...] | None) -> Rules:
    unknown = set(mapping) - set(LOGICAL_AXES)
    assert not unknown, unknown
    return tuple((name, mapping.get(name)) for name in LOGICAL_AXES)


PRESETS: dict[str, Rules] = {
    "dp": _table(),
    "fsdp": _table(embed="fsdp"),
    "tp": _table(embed="fsdp", vocab="tensor", mlp="tensor", heads="tensor"),
}


def get_rules(spec: str | Iterable[Sequence] = "fsdp") -> Rules:
    """Rules from a preset name, or validated from an explicit list of ``(logical, mesh)`` pairs."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown sharding preset {spec!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[spec]
    rules = []
    for i, pair in enumerate(spec):
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"rule #{i} {pair!r} must be a (logical_name, mesh_axes) pair")
        target = pair[1]
        rules.append((pair[0], tuple(target) if isinstance(target, list) else target))
    return tuple(rules)


def check_logical_names(abstract_tree, rules: Rules) -> None:
    """Raise ``ValueError`` if a param uses a logical name the rules do not mention.

    Flax silently replicates unknown names, which hides typos such as ``"emebd"``.
    """
    known = {name for name, _ in rules}
    specs = nn.get_partition_spec(abstract_tree)
    flat = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )[0]
    for path, spec in flat:
        for name in spec:
            names = name if isinstance(name, tuple) else (name,)
            for n in names:
                if n is not None and n not in known:
                    close = difflib.get_close_matches(n, sorted(known), n=3)
                    hint = f"; did you mean {close}?" if close else ""
                    raise ValueError(
                        f"param {jax.tree_util.keystr(path)} uses logical axis {n!r} "
                        f"that no rule maps{hint}"
                    )
