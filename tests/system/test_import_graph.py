"""The layers of hwnas, read from its imports: no import cycle anywhere, nothing imports the command
line, and importing hwnas (or its command line) loads no inference runtime.

Every ``import`` statement counts, at module level or inside a function: a lazy import still makes
one module depend on another, and a cycle through one only works until someone moves it to the
top. Two kinds do not count, because they never run or are not a dependency between layers:
imports under ``if TYPE_CHECKING:`` (type hints only), and the implicit import of a package's
``__init__`` by its own submodules (``hwnas.backends.ort`` importing ``hwnas.backends.base``
runs ``hwnas/backends/__init__.py`` first; the ``__init__`` importing its submodules is counted).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hwnas"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node of ``tree``, outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _imports_in(child))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the hwnas modules it imports."""
    modules = _modules()

    def module_of(name: str) -> str | None:  # the longest prefix that is a module of ours
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                target = module_of(name) if name.split(".")[0] == "hwnas" else None
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_what_is_there():
    """The walk finds the imports it is meant to: a test of the test, on modules that must hold them."""
    graph = import_graph()
    assert "hwnas.cli.app" in graph and "hwnas.backends.registry" in graph
    assert "hwnas.console" in graph["hwnas.cli.app"]  # module level
    assert "hwnas.cli.quickstart" in graph["hwnas.cli.app"]  # inside a command function
    assert "hwnas.backends.ort" in graph["hwnas.backends.registry"]  # inside a factory
    assert "hwnas.backends.registry" in graph["hwnas.backends"]  # a package re-exporting its submodule


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_hwnas():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_command_line():
    """hwnas.cli is the top layer: nothing outside it imports any of its modules; library code takes
    what it needs as arguments (quickstart gets the command runner passed in) and console helpers
    live in hwnas.console."""
    def in_cli(m: str) -> bool:
        return m == "hwnas.cli" or m.startswith("hwnas.cli.")

    importers = sorted(m for m, deps in import_graph().items() if not in_cli(m) and any(map(in_cli, deps)))
    assert importers == []


@pytest.mark.parametrize("module", ["hwnas", "hwnas.cli.app"])
def test_importing_loads_no_inference_runtime(module):
    code = (f"import sys, {module}\n"
            "print(' '.join(m for m in ('tensorrt', 'tensorrt_rtx', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"import {module} loaded {r.stdout.strip()}"
