"""A single-file container for a `jax.export.Exported` (imports only jax, numpy and stdlib).

The alternative to `Exported.serialize()` (which needs `flatbuffers` and carries no checksum):
the artifact is written as: magic `BIPFT-STABLEHLO\\n`, an 8-byte little-endian header length,
a JSON header (tree structures, avals with symbolic dims by name, platforms, calling convention,
SHA-256 of the module) and the StableHLO module bytecode. `load_artifact` rebuilds the `Exported`
from these fields; this file can be copied and used without the rest of the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

MAGIC = b"BIPFT-STABLEHLO\n"
VERSION = 1


def _encode_tree(treedef: Any) -> Any:
    def enc(node: Any) -> Any:
        if isinstance(node, tuple):
            return {"tuple": [enc(c) for c in node]}
        if isinstance(node, list):
            return {"list": [enc(c) for c in node]}
        if isinstance(node, dict):
            return {"dict": [[k, enc(v)] for k, v in node.items()]}
        if node is None:
            return {"none": True}
        if node == 0:
            return "*"
        raise TypeError(f"cannot serialize pytree node {type(node).__name__}")

    return enc(jax.tree.unflatten(treedef, [0] * treedef.num_leaves))


def _decode_tree(data: Any) -> Any:
    def dec(node: Any) -> Any:
        if node == "*":
            return 0
        if "tuple" in node:
            return tuple(dec(c) for c in node["tuple"])
        if "list" in node:
            return [dec(c) for c in node["list"]]
        if "dict" in node:
            return {k: dec(v) for k, v in node["dict"]}
        return None

    return jax.tree.structure(dec(data))


def _avals(avals: Any) -> list[dict[str, Any]]:
    return [{"shape": [str(d) for d in a.shape], "dtype": np.dtype(a.dtype).name} for a in avals]


def _shaped(records: list[dict[str, Any]], scope: Any) -> tuple:
    out = []
    for rec in records:
        shape = (
            jax_export.symbolic_shape(", ".join(rec["shape"]), scope=scope) if rec["shape"] else ()
        )
        out.append(jax.core.ShapedArray(tuple(shape), np.dtype(rec["dtype"])))
    return tuple(out)


def save_artifact(exported: jax_export.Exported, path: str | os.PathLike) -> Path:
    """Write `exported` (single device, no effects) to `path`."""
    e = exported
    if e.nr_devices != 1 or any(s is not None for s in (*e.in_shardings_hlo, *e.out_shardings_hlo)):
        raise ValueError("only single-device exports without shardings can be saved")
    if e.ordered_effects or e.unordered_effects:
        raise ValueError("exports with effects cannot be saved")
    module = bytes(e.mlir_module_serialized)
    header = {
        "version": VERSION,
        "fun_name": e.fun_name,
        "in_tree": _encode_tree(e.in_tree),
        "out_tree": _encode_tree(e.out_tree),
        "in_avals": _avals(e.in_avals),
        "out_avals": _avals(e.out_avals),
        "platforms": list(e.platforms),
        "calling_convention_version": e.calling_convention_version,
        "module_kept_var_idx": list(e.module_kept_var_idx),
        "uses_global_constants": e.uses_global_constants,
        "disabled_safety_checks": [],
        "module_bytes": len(module),
        "module_sha256": hashlib.sha256(module).hexdigest(),
    }
    blob = json.dumps(header).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MAGIC + len(blob).to_bytes(8, "little") + blob + module)
    return path


def load_artifact(path: str | os.PathLike) -> jax_export.Exported:
    """Read an artifact written by `save_artifact`; call the result with `.call(*args)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported artifact not found: {path}")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise ValueError(f"{path} is not a bipft StableHLO artifact (bad magic)")
    start = len(MAGIC) + 8
    n = int.from_bytes(raw[len(MAGIC) : start], "little")
    try:
        header = json.loads(raw[start : start + n])
    except ValueError as e:
        raise ValueError(f"{path}: unreadable header ({e})") from e
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: unknown artifact version {header.get('version')!r}")
    module = raw[start + n :]
    if len(module) != header["module_bytes"]:
        raise ValueError(
            f"{path} is truncated: module has {len(module)} bytes, expected "
            f"{header['module_bytes']}"
        )
    if hashlib.sha256(module).hexdigest() != header["module_sha256"]:
        raise ValueError(f"{path} is corrupt (module sha256 differs from the header)")
    scope = jax_export.SymbolicScope()
    in_avals = _shaped(header["in_avals"], scope)
    out_avals = _shaped(header["out_avals"], scope)
    fields = {f.name for f in dataclasses.fields(jax_export.Exported)}
    kwargs: dict[str, Any] = dict(
        fun_name=header["fun_name"],
        in_tree=_decode_tree(header["in_tree"]),
        in_avals=in_avals,
        out_tree=_decode_tree(header["out_tree"]),
        out_avals=out_avals,
        in_shardings_hlo=(None,) * len(in_avals),
        out_shardings_hlo=(None,) * len(out_avals),
        nr_devices=1,
        platforms=tuple(header["platforms"]),
        ordered_effects=(),
        unordered_effects=(),
        disabled_safety_checks=(),
        mlir_module_serialized=module,
        calling_convention_version=header["calling_convention_version"],
        module_kept_var_idx=tuple(header["module_kept_var_idx"]),
        uses_global_constants=header["uses_global_constants"],
        _get_vjp=None,
    )
    if "_has_named_shardings" in fields:
        kwargs.update(
            _has_named_shardings=True,
            _in_named_shardings=(None,) * len(in_avals),
            _out_named_shardings=(None,) * len(out_avals),
        )
    return jax_export.Exported(**{k: v for k, v in kwargs.items() if k in fields})
