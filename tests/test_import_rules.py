"""The import rules of docs/architecture.md, read from the source with `ast` (lazy imports too).

Each room (a subpackage or top-level module of `bipft_jax`) may import only the rooms listed for
it; no module imports a private name of another; and no import circle exists between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bipft_jax"

# room -> rooms it may import (docs/architecture.md, "Rooms and import rules"); every room may
# also import the rooms in EVERYWHERE.
ALLOWED: dict[str, set[str]] = {
    "errors": {"logs"},  # the edge routes library logs to the workdir
    "logs": set(),
    "paths": set(),
    "presets": set(),
    "quant": set(),
    "losses": set(),
    "parallel": set(),
    "data": {"paths"},
    "model": {"quant", "presets"},
    "checkpoint": {"model", "paths"},
    "infer": {"model", "quant"},
    "export": {"checkpoint", "data", "infer", "model", "paths", "quant"},  # data: the tokenizer
    "train": {"checkpoint", "data", "losses", "model", "parallel", "paths", "quant"},
    "glue": {"checkpoint", "data", "losses", "model", "parallel", "paths", "quant", "train"},
    "convert": {"checkpoint", "model"},
    "demo": {"quant"},
    "cli": {"paths"},  # commands are imported by name (importlib), not by import statements
}
EVERYWHERE = {"errors"}  # UserError and the one-line report


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """({module: modules it imports}, [private-name imports across modules])."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[mod] |= {a.name for a in node.names if a.name.startswith("bipft_jax")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("bipft_jax"):
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges[mod].add(sub if sub in modules else node.module)
                    if alias.name.startswith("_") and sub not in modules:
                        private.append(f"{mod}: from {node.module} import {alias.name}")
    return {m: {t for t in ts if t in modules and t != m} for m, ts in edges.items()}, private


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bipft_jax"


def test_rooms_import_only_the_rooms_below_them():
    edges, _ = _graph()
    rooms = {_room(m) for m in edges} - {"bipft_jax"}
    assert rooms <= set(ALLOWED), f"rooms missing from ALLOWED: {rooms - set(ALLOWED)}"
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in edges.items()
        for t in targets
        if _room(m) != _room(t)
        and _room(m) != "bipft_jax"
        and _room(t) not in ALLOWED[_room(m)] | EVERYWHERE
    )
    assert not bad, "imports against the room rules:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    _, private = _graph()
    assert not private, "\n".join(private)


def test_no_import_circles():
    """Depth-first search for a back edge in the module graph (package `__init__`s included:
    a module importing its own package's `__init__` that imports it back is a circle too)."""
    edges, _ = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return [*stack[stack.index(t) :], t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import circle: " + " -> ".join(cycle)
