"""Method presets (`fp`, `bibert`, `bit`, `bipft`) and sizes (`tiny` … `large`), and overrides.

The presets ship inside the package (`bipft_jax/presets/`); `$BIPFT_MODEL_CONFIG_DIR` may hold
replacements (`<dir>/<name>.py` with `get_config() -> ConfigDict`). `get_model_config("bipft",
"base", dtype="bfloat16", **{"quant.estimators.rank": 2})` merges size, method and overrides
into a validated `BertConfig`; `apply_overrides(config, overrides)` applies a trainer's
`model.overrides` (dotted keys or `KEY=VALUE` strings) to any `BertConfig`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bipft_jax.model.config import BertConfig, from_config_dict, to_dict
from bipft_jax.presets import sizes

METHODS = ("fp", "bibert", "bit", "bipft")
SIZES = tuple(sizes.SIZES)
CONFIG_DIR_ENV = "BIPFT_MODEL_CONFIG_DIR"
_DTYPE_FIELDS = ("dtype", "param_dtype")


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Run `get_config()` of a Python config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_bipft_cfg_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config()")
    return module.get_config()


def _preset(name: str, allowed: tuple[str, ...], kind: str) -> ml_collections.ConfigDict:
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {allowed}")
    override_dir = os.environ.get(CONFIG_DIR_ENV)
    if override_dir and (Path(override_dir) / f"{name}.py").is_file():
        return load_config_file(Path(override_dir) / f"{name}.py")
    if name in sizes.SIZES:
        return sizes.get_config(name)
    return importlib.import_module(f"bipft_jax.presets.{name}").get_config()


def _set_dotted(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            raise ValueError(f"override {key!r}: no config key {'.'.join(parts[: i + 1])!r}")
        node = node[part]
    if isinstance(value, dict) and parts[-1] in node and isinstance(node[parts[-1]], dict):
        node[parts[-1]].update(value)
    elif isinstance(value, dict) and isinstance(node.get(parts[-1]), ml_collections.ConfigDict):
        for k, v in value.items():
            _set_dotted(node[parts[-1]], k, v)
    else:
        node[parts[-1]] = value


def get_model_config_dict(method: str, size: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The merged ConfigDict: size keys, then the method's keys, then `overrides` (dotted keys)."""
    cfg = _preset(size, SIZES, "size")
    method_cfg = _preset(method, METHODS, "method preset")
    with cfg.unlocked():
        cfg.update(method_cfg)
        for key, value in overrides.items():
            top = key.split(".")[0]
            if top not in cfg and "." not in key:
                cfg[key] = value  # a BertConfig field the presets leave at its default
            else:
                _set_dotted(cfg, key, value)
    return cfg


_JSON_WORDS = {"true": True, "false": False, "null": None}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a CLI's ``--set``) as ``get_model_config`` overrides.

    VALUE is a Python literal (``4``, ``1e-5``, ``True``, ``(1, 2)``, ``{'rank': 2}``); JSON's
    ``true``/``false``/``null`` are accepted too; anything else is a bare string (``relu``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if raw.strip() in _JSON_WORDS:
            out[key] = _JSON_WORDS[raw.strip()]
            continue
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def get_model_config(method: str, size: str, **overrides: Any) -> BertConfig:
    """A validated `BertConfig` for a method preset at a size; unknown keys raise ValueError."""
    return apply_overrides(from_config_dict(get_model_config_dict(method, size)), overrides)


_ACT_FIELDS = ("linear_input", "ffn_out_input", "qkv", "probs")
_POOLER_INPUT = "pooler_quant.input"  # BiT's W1A2 stage: the pooler input is A2 too


def act_bits_overrides(bits: int, pooler: bool = True) -> dict[str, int]:
    """`get_model_config` overrides that put every elastic activation binarizer (and, with
    `pooler`, the pooler input) at `bits` (a `bit:a2` fine-tuning stage, a W1A4 checkpoint)."""
    fields = (*_ACT_FIELDS, _POOLER_INPUT) if pooler else _ACT_FIELDS
    return {f"quant.{field}.bits": bits for field in fields}


def apply_overrides(config: BertConfig, overrides: Any) -> BertConfig:
    """`config` with `overrides` applied and validated.

    `overrides`: a mapping (dict or ConfigDict) of dotted keys or nested groups, e.g.
    `{"quant.estimators.rank": 2, "quant": {"attention": "bool"}}`, or `KEY=VALUE` strings as
    `bipft stats --set` takes them. Every key must name a `BertConfig` / `QuantSpec` field; an
    unknown key, a group given a plain value or a value of the wrong type raises ValueError.
    """
    if not overrides:
        return config
    if isinstance(overrides, str):
        raise ValueError(f"model overrides: expected KEY=VALUE strings or a mapping: {overrides!r}")
    mapping = isinstance(overrides, Mapping) or hasattr(overrides, "to_dict")  # dict, ConfigDict
    items = _flatten(overrides) if mapping else _flatten(parse_overrides(overrides))
    data = to_dict(config)
    for key, value in items.items():
        old = _current(config, key)
        if value is None and _optional(config, key):  # e.g. padding_idx=None: no padding row
            old = None
        node = data
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] = _checked(key, old, value)
    return from_config_dict(data)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested mapping or ConfigDict (dotted keys may appear too)."""
    if hasattr(tree, "to_dict"):
        tree = tree.to_dict()
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _field_names(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            out += _field_names(value, f"{prefix}{f.name}.")
    return out


def _current(config: BertConfig, key: str) -> Any:
    """The current value of a dotted field key; a clear error for unknown keys and groups."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"config key {key!r}: {where!r} is a value, not a group")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            close = difflib.get_close_matches(key, _field_names(config), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            group = f" in {where!r}" if where else ""
            raise ValueError(f"unknown config key(s){group}: [{part!r}]{hint} (allowed: {names})")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ValueError(f"config key {key!r} is a group; set one of its fields")
    return node


def _optional(config: BertConfig, key: str) -> bool:
    """Whether the field ``key`` (dotted, known to exist) is annotated ``... | None``."""
    *groups, name = key.split(".")
    node: Any = config
    for part in groups:
        node = getattr(node, part)
    field = next(f for f in dataclasses.fields(node) if f.name == name)
    return "None" in str(field.type)


def _checked(key: str, old: Any, value: Any) -> Any:
    """`value` if it has the field's type (ints are accepted for floats)."""
    if key in _DTYPE_FIELDS or old is None:
        return value
    kind = type(old)
    ok = isinstance(value, kind) and (kind is not int or not isinstance(value, bool))
    ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"config key {key!r} expects {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value
