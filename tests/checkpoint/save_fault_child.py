"""A process that saves step 1, then meets a fault while saving step 2 (run by the fault tests).

    python -m tests.checkpoint.save_fault_child WORKDIR MODE

MODE: ``efbig-async`` / ``efbig-sync`` (the kernel refuses writes past 1 MiB per file, as a full
disk would, inside Orbax's tensorstore writer), ``hang-commit`` (all data written, then hangs
just before the commit: kill it there), ``writing`` (prints ``writing`` as soon as the async
write of step 2 starts: kill it there). Prints one ``result {json}`` line when it survives.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time

import jax
import numpy as np

from bipft_jax.checkpoint import integrity
from bipft_jax.checkpoint import manager as checkpoint


def state(seed: int, n: int = 1000) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": jax.device_put(rng.normal(size=(n,)).astype(np.float32)), "step": seed}


def main(workdir: str, mode: str) -> None:
    m = checkpoint.CheckpointManager(workdir, save_every=1, async_save=mode != "efbig-sync")
    m.save(1, state(1), {"loader": 1})
    m.wait_until_finished()
    big = state(2, 4_000_000)  # 16 MB
    if mode.startswith("efbig"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write(), not a killed process
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    elif mode == "hang-commit":
        seal = integrity.write_manifest

        def hang(step_dir):
            seal(step_dir)
            print("committing", flush=True)
            time.sleep(600)

        integrity.write_manifest = hang  # type: ignore[assignment]
    try:
        m.save(2, big, {"loader": 2})
        print("writing", flush=True)
        m.wait_until_finished()
        error = None
    except checkpoint.CheckpointWriteError as e:
        error = str(e)
    finally:
        if mode.startswith("efbig"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    m.close()
    print("result " + json.dumps({"error": error}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
