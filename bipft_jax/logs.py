"""Library chatter off the terminal: absl / Orbax / asyncio log records, stray thread tracebacks
and the traceback of a failed command go to ``<workdir>/bipft.log`` (the terminal keeps only the
project's own lines). ``BIPFT_DEBUG=1`` leaves logging untouched, so everything shows.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LOG_NAME = "bipft.log"
_MAX_BUFFER = 2000  # records kept while the workdir does not exist yet


def workdir_of(argv: Sequence[str]) -> Path | None:
    """The ``--workdir`` of a command line, if any."""
    for i, a in enumerate(argv):
        if a == "--workdir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--workdir="):
            return Path(a.split("=", 1)[1])
    return None


class WorkdirLog(logging.Handler):
    """Appends records to ``<workdir>/bipft.log`` once the workdir exists (buffered until then;
    never creates it, so a refused run leaves no directory behind). Write errors are swallowed: a
    full disk must not turn one failure into hundreds of lines."""

    def __init__(self, workdir: Path | None):
        super().__init__(logging.DEBUG)
        self.path = None if workdir is None else Path(workdir) / LOG_NAME
        self.buffer: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.write(self.format(record))

    def write(self, text: str) -> bool:
        """Append ``text`` (plus the buffer); True when it reached the file."""
        if self.path is None or not self.path.parent.is_dir():
            if len(self.buffer) < _MAX_BUFFER:
                self.buffer.append(text)
            return False
        try:
            with self.path.open("a") as f:
                f.write("".join(line + "\n" for line in [*self.buffer, text]))
        except OSError:
            return False
        self.buffer.clear()
        return True


@contextlib.contextmanager
def routed_logs(workdir: Path | None) -> Iterator[WorkdirLog]:
    """Within the block, every library log record, ``warnings`` message and stray thread
    traceback goes to ``WorkdirLog(workdir)``; the previous set-up is restored afterwards."""
    handler = WorkdirLog(workdir)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, threading.excepthook, sys.unraisablehook)
    absl_logger: Any = None
    absl_handler: Any = None
    with contextlib.suppress(ImportError):  # absl keeps its own handler and logger
        from absl import logging as absl_logging

        absl_logger, absl_handler = absl_logging.get_absl_logger(), absl_logging.get_absl_handler()
    absl_state = None if absl_logger is None else (absl_logger.propagate, absl_logger.handlers[:])
    for h in saved[0]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    if absl_logger is not None and absl_handler is not None:
        absl_logger.propagate = True
        absl_logger.removeHandler(absl_handler)
    log = logging.getLogger("bipft")

    def thread_hook(a: threading.ExceptHookArgs) -> None:
        exc: Any = (a.exc_type, a.exc_value, a.exc_traceback)
        log.error("exception in thread %s", getattr(a.thread, "name", "?"), exc_info=exc)

    def unraisable_hook(u) -> None:
        exc: Any = (type(u.exc_value), u.exc_value, u.exc_traceback)
        log.error("unraisable: %s %r", u.err_msg or "", u.object, exc_info=exc)

    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        threading.excepthook, sys.unraisablehook = saved[2], saved[3]
        if absl_state is not None:
            absl_logger.propagate = absl_state[0]
            for h in absl_state[1]:
                absl_logger.addHandler(h)


def log_exception(handler: WorkdirLog, prog: str, exc: BaseException) -> Path | None:
    """Write ``exc``'s traceback to the log; the log's path when it reached the file."""
    import traceback

    text = f"{prog}: failed\n" + "".join(traceback.format_exception(exc))
    return handler.path if handler.write(text) else None
