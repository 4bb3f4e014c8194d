"""The package's shape, checked: modules talk through public names, imports do not go round in circles, and
functions and modules stay short enough to read in one sitting."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spgdataset"
# Underscored names of other libraries that the package has reason to use, by file.
ALLOWED = {("read/memory.py", "torch._C"), ("read/memory.py", "torch._C._storage_Use_Count"),
           ("read/memory.py", "storage._cdata"), ("write/executors.py", "os._exit")}
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


@functools.lru_cache(maxsize=1)
def modules() -> Dict[str, Tuple[Path, ast.Module]]:
    """{dotted module name: (path, tree)} of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_reaches_into_another_objects_underscored_names():
    found = []
    for name, (path, tree) in modules().items():
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls") and (where, f"{owner}.{node.attr}") not in ALLOWED:
                    found.append(f"{where}:{node.lineno}: {owner}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("spgdataset")):
                found += [f"{where}:{node.lineno}: imports {a.name}" for a in node.names if _private(a.name)]
    assert found == []


def _runtime_nodes(tree: ast.Module) -> List[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (imports for type hints only run no code)."""
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
               ast.unparse(block.test).endswith("TYPE_CHECKING") for n in ast.walk(block)}
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _imports(name: str, path: Path, tree: ast.Module, known: Set[str]) -> Set[str]:
    """The package's modules that `name` imports (anywhere in it, at run time)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != name}


def test_no_import_cycle():
    found = modules()
    graph = {name: _imports(name, path, tree, set(found)) for name, (path, tree) in found.items()}
    cycles: List[List[str]] = []

    def visit(node: str, stack: List[str], done: Set[str]) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node], done)
        done.add(node)

    done: Set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    # a package __init__ that re-exports its own modules is not a cycle of the design
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert cycles == []


def test_functions_and_modules_are_short():
    long = []
    for name, (path, tree) in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_MODULE_LINES:
            long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert long == []


def test_nothing_points_outside_the_repository():
    root = PACKAGE.parent
    found = []
    for path in list(root.rglob("*.py")) + list(root.rglob("*.md")) + [root / "pyproject.toml"]:
        if ".git" in path.parts or "node_modules" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("../" + "shared", "DESIGN" + ".md"):  # spelled apart: this file names them too
            if needle in text:
                found.append(f"{path.relative_to(root)}: {needle}")
    assert found == []


@pytest.mark.parametrize("package", ["rules", "format", "storage", "write", "read", "show"])
def test_every_package_says_what_it_holds(package):
    tree = modules()[f"spgdataset.{package}"][1] if f"spgdataset.{package}" in modules() else None
    assert tree is not None and ast.get_docstring(tree), f"spgdataset/{package}/__init__.py needs a docstring"
    assert os.path.exists(PACKAGE / package / "__init__.py")
