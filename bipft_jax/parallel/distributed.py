"""Multi-host start-up: ``jax.distributed.initialize`` behind a flag, with plain errors.

Call before anything touches ``jax.devices()``. On CPU, cross-process collectives need gloo,
which is selected here (it only affects the CPU backend).

When peers are missing, XLA's coordination client does not raise: it aborts the process
(``LOG(FATAL)``, SIGABRT) with a terse ``DEADLINE_EXCEEDED``. So we (a) let a non-coordinator
process first wait for the coordinator's port and raise ``DistributedInitError`` if it never
opens, and (b) arm a watchdog that, if the rendezvous is still pending after ``timeout_s``,
prints a plain explanation and exits with ``EXIT_CODE_TIMEOUT`` before XLA's own (later) abort.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

import jax

EXIT_CODE_TIMEOUT = 75  # EX_TEMPFAIL: the rendezvous timed out; retrying may succeed
_XLA_GRACE_S = 60  # XLA's own deadline is set this much later than ours


class DistributedInitError(RuntimeError):
    """The processes of a multi-host run could not find each other."""


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--distributed --coordinator_address --num_processes --process_id`` (+ timeout)."""
    g = parser.add_argument_group("multi-host")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize (needed on multi-host TPU/GPU; omit on one host)",
    )
    g.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    g.add_argument("--num_processes", type=int, default=None, help="total number of processes")
    g.add_argument("--process_id", type=int, default=None, help="this process's index")
    g.add_argument(
        "--distributed_timeout_s",
        type=int,
        default=300,
        help="seconds to wait for all processes to join",
    )


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
    *,
    enabled: bool = True,
) -> bool:
    """Join the multi-process run if ``enabled``; returns whether initialize was called.

    Leaving the three addressing arguments ``None`` lets JAX auto-detect them (TPU pods, SLURM,
    Open MPI). Raises ``DistributedInitError`` naming the coordinator when the peers do not show
    up within ``timeout_s``, and ``ValueError`` for inconsistent arguments.
    """
    if not enabled:
        return False
    given = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id must be given together "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}) or all omitted "
            "for auto-detection"
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id {process_id} is not in [0, {num_processes})")
    if timeout_s < 1:
        raise ValueError(f"timeout_s must be >= 1 second, got {timeout_s}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = coordinator_address or "the auto-detected coordinator"
    who = f"process {process_id} of {num_processes}" if num_processes else "this process"
    hint = "are all processes started, with the same coordinator address and process count?"
    deadline = time.monotonic() + timeout_s
    probe = coordinator_address is not None and process_id != 0
    if probe and not _wait_for_port(str(coordinator_address), deadline):
        raise DistributedInitError(
            f"{who}: the coordinator {where} did not accept connections within "
            f"{timeout_s} s; {hint}"
        )
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(max(deadline - time.monotonic(), 0.0)):
            sys.stderr.write(
                f"\nDistributedInitError: {who} waited {timeout_s} s at {where} but not all "
                f"{num_processes or 'expected'} processes joined; {hint} Exiting with code "
                f"{EXIT_CODE_TIMEOUT}.\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_CODE_TIMEOUT)

    threading.Thread(target=watchdog, name="distributed-init-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s + _XLA_GRACE_S,
        )
    except Exception as e:  # e.g. auto-detection failed, or address in use
        raise DistributedInitError(f"{who} could not join the run at {where}: {e}") from e
    finally:
        done.set()
    return True


def _wait_for_port(address: str, deadline: float) -> bool:
    """Poll ``HOST:PORT`` until a TCP connection succeeds or ``deadline`` (monotonic) passes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} must look like HOST:PORT")
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def enable_compilation_cache(default_dir: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache, so a restarted run (preemption, resume)
    reuses its compiled steps; returns the directory.

    ``$JAX_COMPILATION_CACHE_DIR`` (or a directory set earlier) wins; else ``default_dir``;
    else ``$XDG_CACHE_HOME/bipft_jax/jax`` (``~/.cache/...``). An empty
    ``$JAX_COMPILATION_CACHE_DIR`` opts out.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") == "":
        return ""
    current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    if current:
        return current
    if default_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        default_dir = os.path.join(os.path.expanduser(base), "bipft_jax", "jax")
    jax.config.update("jax_compilation_cache_dir", os.fspath(default_dir))
    return os.fspath(default_dir)
