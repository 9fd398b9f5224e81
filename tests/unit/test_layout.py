"""The house shows the flow: no import cycles among quantsweep's modules, `serve/` standing alone, and
heavy libraries imported only where work happens (the CLI, config and planning stay light)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every quantsweep module a file imports, at top level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in ("cluster", "serve")}


def graph() -> dict[str, set[str]]:
    """module -> the quantsweep modules it imports (names that are not modules are dropped)."""
    files = sorted(p for pkg in ("cluster", "serve") for p in (REPO / pkg).rglob("*.py"))
    mods = {_module(p): p for p in files}
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def _cycle(g: dict[str, set[str]]) -> list[str]:
    """One import cycle (a path that comes back to its start), or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return []

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycles():
    g = graph()
    # a package's __init__ is never what another module needs; its submodules are
    assert _cycle(g) == []


def test_serve_imports_nothing_from_cluster():
    bad = {
        m: sorted(i for i in deps if i.startswith("cluster"))
        for m, deps in graph().items()
        if m.startswith("serve")
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_cli_config_and_plan_import_nothing_heavy():
    code = (
        "import sys; import cluster.__main__, cluster.config.checks, cluster.plan.cells, cluster.report.tables;"
        "print([m for m in ('torch','vllm','llmcompressor','lm_eval','ray','transformers','pyarrow') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
