"""The README stays true: its example runs, and its two set-up commands are where CI reads them."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", README, re.S)
    assert m, f"no bash block after {marker} in README.md"
    return m.group(1).strip()


def test_two_setup_commands_present():
    main, test = _block_after("<!-- main-command -->"), _block_after("<!-- test-command -->")
    assert main.count("\n") == 0 and test.count("\n") == 0, "each set-up command is one line"
    assert "pip install" in main and "bipft " in main
    assert "pytest" in test and "requirements-test.txt" in test


def test_python_example_runs_and_loss_falls():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    losses = [float(line.split()[1]) for line in out.stdout.strip().splitlines()]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0], losses
