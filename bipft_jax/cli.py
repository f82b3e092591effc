"""The single `bipft` command. Each subcommand lives in its own module as `main(argv)`.

A subcommand's `main` raises on bad input; `bipft_jax.errors.run_command` reports it as one line
on stderr with exit code 2 (`BIPFT_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

from bipft_jax import paths
from bipft_jax.errors import run_command

# name -> ("module:function", one-line help). Imported lazily so `bipft --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bipft_jax.demo:main", "train a small binarized MLP on CPU and show the loss falling"),
    "stats": ("bipft_jax.model.stats:main", "parameters, sizes and FLOPs of a model config"),
    "prepare": ("bipft_jax.data.prepare:main", "tokenize a corpus into sharded records"),
    "pretrain": ("bipft_jax.train.pretrain:main", "binary pretraining with distillation"),
    "finetune": ("bipft_jax.glue.finetune:main", "GLUE fine-tuning of a (binary) model"),
    "sweep": ("bipft_jax.glue.sweep:main", "GLUE sweep over tasks x presets x lrs x seeds"),
    "export": ("bipft_jax.export.cli:main", "export to Hugging Face / PyTorch / packed 1-bit"),
    "convert": ("bipft_jax.convert:main", "import a BiPFT / BiT / BiBERT PyTorch checkpoint"),
    "study": ("bipft_jax.glue.study:main", "the GLUE study of the three papers (resumable)"),
}


def _usage() -> str:
    lines = ["usage: bipft [--data-dir DIR] <command> [options]", "", "commands:"]
    width = max(len(n) for n in COMMANDS)
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "--data-dir DIR  the data folder (glue_data/, corpus/, vocab/); sets $BIPFT_DATA_DIR",
    ]
    lines += ["", "Run `bipft <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--data-dir"):
        flag, _, value = argv.pop(0).partition("=")
        if flag != "--data-dir" or not (value or argv):
            print("bipft: error: --data-dir needs a directory (see bipft --help)", file=sys.stderr)
            return 2
        os.environ[paths.DATA_ENV_VAR] = value or argv.pop(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bipft: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} "
              "(see bipft --help)", file=sys.stderr)  # fmt: skip
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("bipft_jax"):
            print(
                f"bipft: error: command {name!r} is not available in this version", file=sys.stderr
            )
            return 2
        raise
    # The one edge: user errors of every command become one line on stderr and exit code 2.
    return run_command(f"bipft {name}", getattr(module, func_name), rest)


if __name__ == "__main__":
    sys.exit(main())
