"""Several local `bipft` processes joined by `--distributed` on 127.0.0.1 (gloo on CPU)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(
    command: Callable[..., list[str]],
    env: Callable[[int], dict],
    n: int = 2,
    extra: Sequence[str] = (),
    timeout: int = 400,
) -> list[str]:
    """Start ``command(*flags)`` as processes 0..n-1 of one job (``env(i)`` each), wait for all,
    and return their outputs; a failed process fails the test with the tail of its output."""
    addr = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            command(
                "--distributed",
                "--coordinator_address",
                addr,
                "--num_processes",
                str(n),
                "--process_id",
                str(i),
                *extra,
            ),
            cwd=REPO,
            env=env(i),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
    return outs
