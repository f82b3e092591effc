"""Load method presets (`fp`, `bibert`, `bit`, `bipft`) and sizes (`tiny` … `large`).

The presets are the files `configs/model/<name>.py` (each `get_config() -> ConfigDict`);
`get_model_config("bipft", "base", dtype="bfloat16", **{"quant.estimators.rank": 2})` merges
size, method and overrides into a validated `BertConfig`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bipft_jax.model.config import BertConfig, from_config_dict

METHODS = ("fp", "bibert", "bit", "bipft")
SIZES = ("tiny", "mini", "small", "base", "large")
CONFIG_DIR_ENV = "BIPFT_MODEL_CONFIG_DIR"


def config_dir() -> Path:
    """`$BIPFT_MODEL_CONFIG_DIR`, else `<repo>/configs/model`."""
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs" / "model"


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
    return load_config_file(config_dir() / f"{name}.py")


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
    return from_config_dict(get_model_config_dict(method, size, **overrides))
