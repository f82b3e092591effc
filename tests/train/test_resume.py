"""Preemption and crash recovery of `bipft pretrain` (real subprocesses, shared corpus).

One uninterrupted run is compared with a run that is SIGTERM-ed (must save at the current step
and exit 0), restarted, SIGKILL-ed after its next checkpoint, and restarted again: the final
parameters must be equal BIT FOR BIT.
"""

import json
import re
import signal
import time

from tests.train.cli_runs import assert_trees_equal, final_params, popen, run

TOTAL, EVERY = 10, 3
OPTS = (f"--config.train.total_steps={TOTAL}", f"--config.train.save_every={EVERY}")


def _wait_line(proc, pattern: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return line
        assert time.monotonic() < deadline, "".join(seen[-30:])
    raise AssertionError(f"process ended before {pattern!r}:\n" + "".join(seen[-40:]))


def _ckpt_steps(workdir):
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_sigterm_then_sigkill_then_resume_is_bit_exact(tmp_path, shared_data):
    cache = tmp_path / "jax_cache"
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = run(ref_dir, cache, *OPTS)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    # 1) SIGTERM after step 2: a checkpoint at the current step, exit code 0.
    p = popen(run_dir, cache, *OPTS)
    _wait_line(p, rf"^step 2/{TOTAL}")
    p.send_signal(signal.SIGTERM)
    line = _wait_line(p, r"^preempted at step \d+")
    assert p.wait(timeout=120) == 0
    k = int(re.search(r"step (\d+)", line).group(1))
    assert 2 <= k < TOTAL and k in _ckpt_steps(run_dir)
    assert final_params(run_dir, k)["extra"]["loader"]["step"] == k

    # 2) restart; SIGKILL once a cadence checkpoint beyond k is on disk.
    p = popen(run_dir, cache, *OPTS)
    _wait_line(p, rf"^resumed from step {k}\b")
    nxt = (k // EVERY + 1) * EVERY
    deadline = time.monotonic() + 300
    while nxt not in _ckpt_steps(run_dir) and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.kill()
    p.wait(timeout=60)
    steps = _ckpt_steps(run_dir)
    assert max(steps) < TOTAL, f"the run finished before it was killed: {steps}"

    # 3) the same command again resumes from the newest checkpoint and finishes.
    again = run(run_dir, cache, *OPTS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = int(re.search(r"resumed from step (\d+)", again.stdout).group(1))
    assert k < resumed < TOTAL
    a, b = final_params(ref_dir), final_params(run_dir)
    assert a["extra"]["loader"] == b["extra"]["loader"]
    assert_trees_equal(a["params"], b["params"])
    # Each step is in metrics.jsonl once, as in the uninterrupted run (none repeated by a resume).
    assert _logged_steps(run_dir) == _logged_steps(ref_dir) == list(range(1, TOTAL + 1))


def _logged_steps(workdir):
    return [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
