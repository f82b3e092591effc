"""Lint, format and type-check gates, run as part of the test suite."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The whole package must type-check.
TYPED = ["bipft_jax"]


def _run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff not installed (requirements-test.txt)"
)
def test_ruff_clean():
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_public_api_type_checks():
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy", *TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_file_over_600_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in ROOT.glob("bipft_jax/**/*.py")
        if (n := len(p.read_text().splitlines())) > 600
    ]
    assert not long, long
