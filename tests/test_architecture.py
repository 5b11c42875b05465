"""The package's shape: layers import only downward, no import circle, no import hidden in a function
(other than of an optional dependency, imported where it is used so the package works without it).

The import graph is read from the source (``ast``, nothing imported), over ``inrreg_pipeline/`` and
the two folders installed under its namespace (``workflows/`` -> ``inrreg_pipeline.workflows``,
``bids_app/`` -> ``inrreg_pipeline.bids_app``).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package name it installs as
FOLDERS = {"inrreg_pipeline": "inrreg_pipeline", "workflows": "inrreg_pipeline.workflows",
           "bids_app": "inrreg_pipeline.bids_app"}
#: optional dependencies: imported where used, so the package works without them
OPTIONAL = {"ants", "picsl_greedy", "fireants", "tinycudann", "matplotlib", "monai", "nilearn.plotting", "yaml", "templateflow"}
#: (importer prefix, forbidden import prefix): the layers, each importing only downward
LAYERS = [
    ("inrreg_pipeline.core", "inrreg_pipeline.io"), ("inrreg_pipeline.core", "inrreg_pipeline.interfaces"),
    ("inrreg_pipeline.core", "inrreg_pipeline.workflows"), ("inrreg_pipeline.core", "inrreg_pipeline.bids_app"),
    ("inrreg_pipeline.core", "nipype"), ("inrreg_pipeline.core", "nibabel"),
    ("inrreg_pipeline.io", "inrreg_pipeline.interfaces"), ("inrreg_pipeline.io", "inrreg_pipeline.metrics"),
    ("inrreg_pipeline.interfaces", "inrreg_pipeline.workflows"),
    ("inrreg_pipeline.interfaces", "inrreg_pipeline.bids_app"),
    ("inrreg_pipeline.workflows", "inrreg_pipeline.bids_app"),
]


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The absolute module names an import statement loads (``from . import x`` gives the submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return names or [base]


def imports(module: str) -> tuple[set[str], list[tuple[str, str, int]]]:
    """``(module-level imports, [(function, imported module, line)])`` of one module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    nested: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, function: str | None, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in resolve(module, child, is_package):
                    if function is None:
                        if not type_checking:
                            top.add(name)
                    else:
                        nested.append((function, name, child.lineno))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name, type_checking)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, function, True)
            else:
                visit(child, function, type_checking)

    visit(tree, None, False)
    return top, nested


def internal(name: str) -> str | None:
    """The package module ``name`` refers to (itself or its nearest package), or None if external."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def optional(name: str) -> bool:
    return name in OPTIONAL or name.split(".")[0] in OPTIONAL


def test_the_scan_sees_the_package():
    assert {"inrreg_pipeline.core.registration", "inrreg_pipeline.workflows.base",
            "inrreg_pipeline.bids_app.run", "inrreg_pipeline.core.engine"} <= set(MODULES)
    top, _ = imports("inrreg_pipeline.core.registration")
    assert {"inrreg_pipeline.core.svf", "inrreg_pipeline.core.two_network", "torch"} <= top


def test_no_import_circle():
    graph = {m: {internal(n) for n in imports(m)[0]} - {None, m} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_no_function_level_import_except_optional_dependencies():
    bad = []
    for module in MODULES:
        for function, name, line in imports(module)[1]:
            if optional(name):
                continue
            bad.append(f"{MODULES[module].relative_to(ROOT)}:{line} {function}() imports {name}")
    assert not bad, "function-level imports:\n" + "\n".join(bad)


def test_layers_import_only_downward():
    bad = []
    for module in MODULES:
        top, nested = imports(module)
        for name in top | {n for _, n, _ in nested}:
            for importer, forbidden in LAYERS:
                if module.startswith(importer) and (name == forbidden or name.startswith(forbidden + ".")):
                    bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_method_imports_the_dispatch_table():
    """``core/registration.py`` imports the methods; no core module imports it back."""
    users = [m for m in MODULES if m.startswith("inrreg_pipeline.core.") and m != "inrreg_pipeline.core.registration"
             and "inrreg_pipeline.core.registration" in imports(m)[0] | {n for _, n, _ in imports(m)[1]}]
    assert users == []


def test_settings_leaf_imports_nothing():
    """``core/choices.py`` owns the allowed values and imports nothing, so anything may read it."""
    top, nested = imports("inrreg_pipeline.core.choices")
    assert top <= {"__future__"} and not nested
