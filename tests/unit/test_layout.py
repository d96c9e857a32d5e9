"""The shape of the source tree that keeps it readable: small modules and functions, no import cycles, the tools
apart from the product, one way to run each command."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        names[name.removesuffix(".__init__")] = path
    return names


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports, at any depth (a deferred import still makes a cycle)."""
    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("ovembed")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ovembed"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else owner(node.module)
                      for a in node.names}
    return found - {""}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_no_import_cycle_between_modules():
    # In a fresh interpreter: late in a long run, CPython 3.11.7's AST converter was seen to refuse a file it
    # parses alone ("SystemError: AST constructor recursion depth mismatch", a CPython bug, gh-106905).
    script = ("import json, test_layout as t; m = t._modules(); "
              "print(json.dumps(t._cycles({n: t._imports(p, m) - {n} for n, p in m.items()})))")
    found = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert json.loads(found.stdout) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tools_live_apart_from_the_product_and_reach_no_data_outside_the_package():
    assert not (SRC / "ovembed" / "evaluate").exists()
    outside = [str(p.relative_to(ROOT)) for p in SRC.rglob("*.py") if re.search(r'"shared"|parents\[[3-9]\]', p.read_text())]
    assert outside == []


def test_docs_name_commands_not_module_paths():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert [str(p.relative_to(ROOT)) for p in docs if "python -m ovembed" in p.read_text()] == []
