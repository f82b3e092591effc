"""Experiment configs: load ``configs/x.py[:arg]``, apply ``--config.a.b=value`` overrides, save.

A config file defines ``get_config(arg=None) -> ml_collections.ConfigDict`` (big_vision style).
The loaded config is locked: an override of a key that does not exist is an error naming the
key and its close matches; a value that does not parse as the field's type is an error naming
the key, the expected type and the given text.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from bipft_jax.errors import UserError, one_line
from bipft_jax.paths import local_path

PREFIX = "--config."
HELP = "experiment file FILE.py[:ARG]; override any key with --config.KEY=VALUE"


class ConfigError(UserError):
    """A user error in a config file, its argument or an override."""


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Load ``path/to/file.py`` or ``path/to/file.py:arg``, lock it and apply ``overrides``.

    ``overrides`` are ``"--config.optim.lr=1e-4"`` (``--`` and ``config.`` are optional).
    """
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a .py file")
    module_name = f"_bipft_config_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None, path
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses/pickling inside configs need this
    try:  # the user's file: any error in it is a config error naming the file
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if get_config is None:
            raise ConfigError(f"config file {path} defines no get_config(arg=None) function")
        takes_arg = bool(inspect.signature(get_config).parameters)
        if arg and not takes_arg:
            raise ConfigError(f"config file {path}: get_config() takes no argument, got {arg!r}")
        cfg = get_config(arg or None) if takes_arg else get_config()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file {spec}: {one_line(e)}") from e
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(cfg).__name__}, not a ConfigDict")
    cfg.lock()
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """``(spec, overrides, rest)`` of argv: the ``--config SPEC``, every override normalised to
    ``--config.key=value`` (from either ``--config.key=value`` or ``--config.key value``), and
    the remaining arguments (for the command's own ``argparse``)."""
    spec, overrides, rest = None, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config" or a.startswith("--config="):
            if a == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("--config needs a value: path/to/config.py[:arg]")
                spec, i = args[i + 1], i + 1
            else:
                spec = a.split("=", 1)[1]
        elif a.startswith(PREFIX):
            if "=" not in a:
                if i + 1 >= len(args):
                    raise ConfigError(f"override {a} has no value")
                a, i = f"{a}={args[i + 1]}", i + 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return spec, overrides, rest


def config_from_argv(argv: Sequence[str]) -> tuple[ConfigDict, list[str]]:
    """Pull ``--config SPEC`` and every ``--config.key=value`` / ``--config.key value`` out of argv.

    Returns the config and the remaining arguments (for the command's own ``argparse``).
    """
    spec, overrides, rest = split_argv(argv)
    if spec is None:
        raise ConfigError("missing --config path/to/config.py[:arg]")
    return load_config(spec, overrides), rest


def parse_command_line(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[ConfigDict, argparse.Namespace]:
    """``(config, args)`` of a config-driven command; ``--help`` works without a config.

    ``parser`` holds the command's own options; ``--config`` is added to it for the help text.
    """
    parser.add_argument("--config", metavar="FILE.py[:ARG]", help=HELP)
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])  # prints the help and exits 0
    cfg, rest = config_from_argv(argv)
    return cfg, parser.parse_args(rest)


def apply_override(cfg: ConfigDict, item: str) -> None:
    """Apply one ``[--config.]a.b.c=value`` to a (locked) config, parsing by the field's type."""
    text = item.removeprefix("--").removeprefix("config.")
    key, eq, raw = text.partition("=")
    if not eq or not key:
        raise ConfigError(f"override {item!r} must look like --config.some.key=value")
    parent, leaf = _walk(cfg, key)
    old = parent[leaf]
    if isinstance(old, ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; override one of its fields instead")
    value = _parse(raw, parent.get_type(leaf), key)
    try:
        parent[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config key {key!r}: cannot set {raw!r}: {e}") from e


def _walk(cfg: ConfigDict, key: str) -> tuple[ConfigDict, str]:
    node, parts = cfg, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            done = ".".join(parts[:depth])
            options = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            full = [f"{done}.{o}" if done else o for o in options]
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" under {done!r}" if done else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} (keys{where}: {', '.join(full) or 'none'})"
            )
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _all_keys(cfg: ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k in cfg:
        v = cfg[k]
        out.append(prefix + k)
        if isinstance(v, ConfigDict):
            out += _all_keys(v, f"{prefix}{k}.")
    return out


def _parse(raw: str, kind: type, key: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} expects {expected}, got {raw!r}")

    if kind is bool:
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise bad("bool (true/false)")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise bad("int") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise bad("float") from None
    if kind is str:
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if kind is type(None):
            return raw  # an unset field takes any string
        raise bad(kind.__name__) from None
    if kind in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise bad(f"{kind.__name__} (e.g. '(1, 2)')")
        return kind(value)
    if kind is not type(None) and not isinstance(value, kind):
        raise bad(kind.__name__)
    return value


def format_config(cfg: ConfigDict) -> str:
    """Readable, key-sorted JSON of the config."""
    return cfg.to_json_best_effort(indent=2, sort_keys=True)


def print_config(cfg: ConfigDict) -> None:
    print(format_config(cfg), flush=True)


def config_hash(cfg: ConfigDict) -> str:
    """12 hex chars of SHA-256 over the canonical JSON; independent of key order."""
    canonical = cfg.to_json_best_effort(sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def save_config(cfg: ConfigDict, workdir: str | Path) -> Path:
    """Write ``workdir/config.json`` (with its hash alongside) and return the path."""
    workdir = local_path(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(format_config(cfg) + "\n")
    (workdir / "config_hash.txt").write_text(config_hash(cfg) + "\n")
    return path


def load_saved_config(path: str | Path) -> ConfigDict:
    """Read a ``config.json`` written by ``save_config`` back into a locked ConfigDict.

    Tuples come back as lists (JSON has no tuples); the hash is unchanged by the round trip.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"saved config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"saved config {path} is not valid JSON (line {e.lineno})") from None
    cfg = ConfigDict(data)
    cfg.lock()
    return cfg
