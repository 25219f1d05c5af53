"""The library's layout rules (README "Architecture"): no import cycle, the core imports no
capability package, no library module over 500 lines. Every import is counted, those inside
functions too (a lazy import still ties two modules together)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import LIB_PARENT

PKG = LIB_PARENT / "brainspineai"
CAPABILITIES = ("classification", "sicf", "segmentation", "preprocessing", "prognosis", "cli")
MAX_LINES = 500


def _modules() -> dict:
    """Dotted module name -> file, for every .py of the package."""
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(LIB_PARENT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict:
    """Module -> set of brainspineai modules it imports (anywhere in the file)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets = subs or [mod]  # "from . import x" imports the submodule x
            for t in targets:
                # a module's own ancestor packages are imported by Python before it anyway
                if t in modules and t != name and not name.startswith(t + "."):
                    edges.add(t)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict):
    colour, stack = {}, []

    def visit(n):
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not colour.get(m):
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if not colour.get(n):
            found = visit(n)
            if found:
                return found
    return None


def test_the_walker_sees_known_edges():
    graph = import_graph()
    assert "brainspineai.errors" in graph["brainspineai.catalogue"]
    assert "brainspineai.catalogue" in graph["brainspineai.classification"]  # the loader registration
    assert "brainspineai.segmentation.network" in graph["brainspineai.segmentation.inference"]  # lazy import
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_core_imports_no_capability_package():
    graph = import_graph()
    core = [m for m in graph if m.count(".") == 1 and m.split(".")[1] not in CAPABILITIES + ("__main__",)]
    assert "brainspineai.catalogue" in core and "brainspineai.engine" in core
    bad = {m: sorted(t for t in graph[m] if t.split(".")[1] in CAPABILITIES) for m in core}
    assert not {m: t for m, t in bad.items() if t}, f"core modules importing capabilities: {bad}"


def test_no_library_module_over_500_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
