"""One policy for moving parameters from one tree into another: a teacher into a student, a
checkpoint into a model, a finished stage into the next.

``transfer_params(target, source, what=...)`` copies every leaf of ``target`` that ``source``
holds at the same path (cast to the target's dtype; ``nn.Partitioned`` boxes keep their axis
names). A leaf on both sides with different shapes is always an error listing every such leaf:
nothing is silently skipped. Target leaves the source lacks keep their init (``kept``: binarizer
α/β and estimators of a student made from an FP teacher, and the subtrees named in ``skip``);
source leaves the target lacks are left out (``unused``: e.g. the pretraining heads of a
checkpoint that initialises a classifier). Both are listed in the returned ``Transfer``, and
``strict=True`` makes either one an error as well (a teacher must be complete).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from bipft_jax.errors import UserError

PyTree = Any


class ParamsMismatchError(UserError):
    """Two parameter trees that do not fit: shapes differ (or, strict, leaves are missing)."""


def key_path(path: Sequence[Any]) -> str:
    """A ``jax.tree_util`` key path as ``"a/b/0/c"``."""
    names = (getattr(k, a) for k in path for a in ("key", "name", "idx") if hasattr(k, a))
    return "/".join(map(str, names))


def _shape(leaf: Any) -> tuple[int, ...]:
    leaf = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def leaf_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """``{"a/b/c": shape}`` of every leaf: arrays, boxed params, shape structs, Orbax metadata."""
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    return {key_path(p): _shape(x) for p, x in flat}


def differences(
    want: dict[str, tuple], have: dict[str, tuple], names: tuple[str, str] = ("target", "source")
) -> tuple[list[str], list[str], list[str]]:
    """(shape mismatches as ``"k: <source> (a,) vs <target> (b,)"``, paths only ``want`` has,
    paths only ``have`` has), each sorted (a state's ``params`` first)."""
    t, s = names
    order = lambda keys: sorted(keys, key=lambda k: (not k.startswith("params"), k))  # noqa: E731
    shapes = [f"{k}: {s} {have[k]} vs {t} {want[k]}" for k in order(want.keys() & have.keys())
              if have[k] != want[k]]  # fmt: skip
    return shapes, order(want.keys() - have.keys()), order(have.keys() - want.keys())


def describe(
    shapes: list[str], missing: list[str], unused: list[str], names=("target", "source"), n=5
) -> str:
    """The differences of ``differences`` in one line (the first ``n`` of each kind)."""
    t, s = names
    more = lambda items: "; ".join(items[:n]) + (" ..." if len(items) > n else "")  # noqa: E731
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {more(shapes)}")
    if missing:
        parts.append(f"{len(missing)} {t} arrays not in the {s}: {more(missing)}")
    if unused:
        parts.append(f"{len(unused)} {s} arrays not in the {t}: {more(unused)}")
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Transfer:
    """What ``transfer_params`` did, by "/"-joined path."""

    copied: tuple[str, ...]
    kept: tuple[str, ...]  # target leaves left at their init (not in the source, or skipped)
    unused: tuple[str, ...]  # source leaves the target has no place for

    def summary(self) -> str:
        """One line for the logs, e.g. ``copied 38, kept at init 12 (e.g. ...)``."""
        text = f"copied {len(self.copied)}"
        for name, paths in (("kept at init", self.kept), ("unused", self.unused)):
            if paths:
                text += f", {name} {len(paths)} (e.g. {paths[0]})"
        return text


def transfer_params(
    target: PyTree,
    source: PyTree,
    *,
    what: str = "source",
    skip: Sequence[str] = (),
    strict: bool = False,
    names: tuple[str, str] = ("model", "source"),
) -> tuple[PyTree, Transfer]:
    """``target`` (nested dicts, leaves possibly boxed) with every leaf that ``source`` holds
    copied in; returns it and the ``Transfer`` report (see the module docstring).

    ``skip``: "/"-joined path prefixes of ``target`` that keep their init whatever the source
    holds (e.g. ``("classifier",)``); ``what`` names the source in errors; ``names`` are the
    words used for (target, source) there. Works on tracers too (shapes are static).
    """
    flat_t = traverse_util.flatten_dict(target, sep="/")
    flat_s = traverse_util.flatten_dict(source, sep="/")

    def skipped(k: str) -> bool:
        return any(k == p or k.startswith(p.rstrip("/") + "/") for p in skip)

    want = {k: _shape(v) for k, v in flat_t.items() if not skipped(k)}
    shapes, missing, unused = differences(want, {k: _shape(v) for k, v in flat_s.items()}, names)
    unused = [k for k in unused if not skipped(k)]
    bad = describe(shapes, missing if strict else [], unused if strict else [], names)
    if bad:
        raise ParamsMismatchError(f"{what} does not fit the {names[0]} ({bad})")
    out, copied = {}, []
    for k, leaf in flat_t.items():
        if k in want and k in flat_s:
            value = nn.unbox(leaf)
            new = _cast(flat_s[k], value.dtype)
            leaf = leaf.replace_boxed(new) if isinstance(leaf, nn.Partitioned) else new
            copied.append(k)
        out[k] = leaf
    kept = tuple(k for k in flat_t if k not in copied)
    report = Transfer(tuple(copied), kept, tuple(unused))
    return traverse_util.unflatten_dict(out, sep="/"), report


def _cast(x: Any, dtype: Any) -> Any:
    if getattr(x, "dtype", None) == dtype:
        return x
    return x.astype(dtype) if hasattr(x, "astype") else np.asarray(x, dtype)
