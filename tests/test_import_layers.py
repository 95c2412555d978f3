"""The import layers of docs/ARCHITECTURE.md, read from the code: every import of every Python file of the tree.

Imports are read with :mod:`ast`, wherever they stand (module level, inside functions, under ``if``), together
with every string constant that names a module of the tree exactly (``importlib.import_module`` by name, the
lazy exports of a package, the built-in modules of a registry). They are grouped by package (``if3d.data``,
``if3d.render``, ``if3d.io``, ``if3d.face``, ``networks`` ...) and checked against the layers:

* ``if3d.render`` and ``if3d.data`` stand side by side: neither imports the other;
* the floor under both (``if3d.io``, ``if3d.face``, ``if3d.atomic``) imports neither;
* ``networks.registry`` imports no model module (the models import the registry);
* no circle of imports among ``if3d.data``, ``if3d.render`` and the floor, between packages, nor between files
  (where a registry that loads its built-in plugins by name, and the plugins that import it to register, are
  no circle: the registry names them only).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", "node_modules", "Dataset", "runs"}

DATA, RENDER = "if3d.data", "if3d.render"
FLOOR = ("if3d.io", "if3d.face", "if3d.atomic")


def _python_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if not any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            out.append(rel)
    return sorted(out)


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _Tree:
    """Modules of the tree and, for each, the modules of the tree it imports (with the line)."""

    def __init__(self) -> None:
        self.files = {_module_name(rel): rel for rel in _python_files()}
        self.modules = set(self.files)
        self.edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.by_name: set[tuple[str, str]] = set()  # (module, module it names by a string only)
        for module, rel in self.files.items():
            tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"), filename=str(rel))
            is_package = rel.name == "__init__.py"
            imported = set()
            for node in ast.walk(tree):
                for target in self._targets(node, module, is_package):
                    if target != module:
                        self.edges[module].append((target, node.lineno))
                        if not isinstance(node, ast.Constant):
                            imported.add(target)
            self.by_name |= {(module, t) for t, _ in self.edges[module] if t not in imported}

    def _known(self, name: str) -> str | None:
        """The module of the tree that ``name`` is or lies in (``a.b.c`` -> ``a.b`` when ``c`` is a name)."""
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def _targets(self, node: ast.AST, module: str, is_package: bool) -> list[str]:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            # ``from pkg import sub`` imports the module pkg.sub when there is one, else a name of pkg
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.modules else base for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in self.modules:
            names = [node.value] if "." in node.value else []
        return [t for t in (self._known(n) for n in names) if t is not None]


@pytest.fixture(scope="module")
def tree() -> _Tree:
    return _Tree()


def _package(module: str) -> str:
    """The layer a module belongs to: ``if3d.<sub>``, ``networks.registry``, ``networks`` or its top folder."""
    parts = module.split(".")
    if parts[0] == "if3d" and len(parts) > 1:
        return ".".join(parts[:2])
    if module == "networks.registry":
        return module
    return parts[0]


def _in(module: str, packages: str | tuple[str, ...]) -> bool:
    return any(_package(module) == p for p in ((packages,) if isinstance(packages, str) else packages))


def _crossings(tree: _Tree, source, target) -> list[str]:
    return [f"{tree.files[m]}:{line} imports {t}"
            for m in sorted(tree.modules) if _in(m, source)
            for t, line in tree.edges.get(m, ()) if _in(t, target)]


def _cycles(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_walk_reads_imports_inside_functions_and_modules_named_by_string(tree):
    # a function-level import (the render command loads the batch driver only when it runs) ...
    assert "if3d.render.batch" in {t for t, _ in tree.edges["if3d.render.cli"]}
    # ... and a module named by a string (the render backends' registry loads its built-in backends by name)
    assert "if3d.render.mediapipe_backend" in {t for t, _ in tree.edges["if3d.render.backends"]}
    assert {DATA, RENDER, *FLOOR} <= {_package(m) for m in tree.modules}


def test_render_does_not_import_data(tree):
    assert _crossings(tree, RENDER, DATA) == []


def test_data_does_not_import_render(tree):
    """Landmarks, mesh topology and head pose come from the floor; a backend reaches data only as an argument."""
    assert _crossings(tree, DATA, RENDER) == []


def test_the_floor_imports_neither_data_nor_render(tree):
    assert _crossings(tree, FLOOR, (DATA, RENDER)) == []


def test_the_model_registry_imports_no_model_module(tree):
    assert [t for t, _ in tree.edges.get("networks.registry", ()) if t.startswith("networks")] == []


def test_no_circle_among_data_render_and_the_floor(tree):
    layers = {DATA, RENDER, *FLOOR}
    between_packages: dict[str, set[str]] = defaultdict(set)
    between_files: dict[str, set[str]] = defaultdict(set)
    for m in tree.modules:
        if _package(m) in layers:
            for t, _ in tree.edges.get(m, ()):
                if _package(t) in layers:
                    if (m, t) not in tree.by_name:
                        between_files[m].add(t)
                    if _package(t) != _package(m):
                        between_packages[_package(m)].add(_package(t))
    assert _cycles(layers, between_packages) == []
    files = {m for m in tree.modules if _package(m) in layers and not tree.files[m].name == "__init__.py"}
    assert _cycles(files, between_files) == []
