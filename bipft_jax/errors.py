"""Errors a user can cause or act on, and the one place that reports them.

Every `bipft` subcommand runs through ``run_command`` (see ``bipft_jax.cli``): an error of the
``USER_ERRORS`` family (config, data, paths, checkpoints, params files, unknown names, a full
disk) becomes ONE line on stderr and exit code 2, without a traceback; ``BIPFT_DEBUG=1`` lets the
exception propagate so the traceback shows. Module ``main`` functions raise; they do not print
errors themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEBUG_ENV = "BIPFT_DEBUG"
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """An error whose message tells the user what to fix (a ``ValueError`` for old callers)."""


# What the edge turns into one line. UserError and the package's own errors (ConfigError,
# GlueDataError, InitError, ExportError, ...) are ValueErrors; OSError covers missing paths,
# permissions and a full disk.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)


class CommandParser(argparse.ArgumentParser):
    """The argument parser of every `bipft` command: a usage error (unknown option, missing or
    invalid value) is one stderr line naming the problem and ``--help``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(message.split())
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def one_line(exc: BaseException) -> str:
    """The exception as a single line (whitespace runs, newlines included, become one space).

    A ValueError / OSError, or a KeyError whose argument is a sentence, is its message; anything
    else is prefixed with its type (``KeyError: 'lr'``).
    """
    arg = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(exc, KeyError) and isinstance(arg, str) and " " in arg:
        text = arg
    elif isinstance(exc, (ValueError, OSError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def report(prog: str, exc: BaseException, log: Path | None = None) -> int:
    """Print ``<prog>: error: <message>`` on stderr; the exit code (2 for a user error, else 1).

    ``log`` is where the traceback was written, if anywhere."""
    user = isinstance(exc, USER_ERRORS)
    if log is not None:
        hint = f" (traceback in {log})"
    else:
        hint = "" if isinstance(exc, UserError) else f" (set {DEBUG_ENV}=1 for the traceback)"
    text = one_line(exc) if user else f"{type(exc).__name__}: {one_line(exc)}"
    print(f"{prog}: error: {text}{hint}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR if user else 1


def run_command(prog: str, main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """``main(argv)`` with any failure reported as one line (exit 2 for a user error, 1 for
    anything else, 130 for Ctrl-C) and library logs plus the traceback in ``<workdir>/bipft.log``;
    ``BIPFT_DEBUG=1`` leaves logging alone and lets the exception propagate."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return int(main(list(argv)) or 0)
    from bipft_jax import logs

    with logs.routed_logs(logs.workdir_of(argv)) as handler:
        try:
            return int(main(list(argv)) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
            return 130
        except Exception as e:
            return report(prog, e, logs.log_exception(handler, prog, e))
