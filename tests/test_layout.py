"""The package's shape, checked: layers import only downwards (docs/architecture.md's table), modules talk
through public names and change only their own objects, imports do not go round in circles, and functions and
modules stay short enough to read in one sitting. Each check is also run on small made-up modules, to show
that it fails when it should."""

from __future__ import annotations

import ast
import functools
import os
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spgdataset"
Modules = Dict[str, Tuple[Path, ast.Module]]
# Underscored names of other libraries that the package has reason to use, by file.
ALLOWED = {("read/memory.py", "torch._C"), ("read/memory.py", "torch._C._storage_Use_Count"),
           ("read/memory.py", "storage._cdata"), ("write/executors.py", "os._exit")}
# Attribute stores into objects other than self/cls that are allowed, by file and object, each for its reason.
ALLOWED_STORES = {
    # tarfile.TarInfo takes its fields by assignment only (its constructor takes the name alone)
    ("format/tar.py", "info"),
    # the tuple that AudioHeader.__new__ is making: its `self`, before __new__ returns it
    ("write/audio.py", "header"),
    # the module's own threading.local: a thread's slots are its attributes
    ("write/featurize.py", "_PER_THREAD"),
}
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400
OWN = ("self", "cls")

# The layers, bottom up, and what each may import of the package besides itself; docs/architecture.md states the
# same table. The package's own __init__ (the public API) may import anything and nothing may import it.
LAYERS: Dict[str, Set[str]] = {
    "errors": set(),
    "version": set(),
    "rules": set(),
    "format": {"rules", "errors", "version"},
    "storage": {"format", "rules", "errors", "version"},
    "write": {"storage", "format", "rules", "errors", "version"},
    "read": {"storage", "format", "rules", "errors", "version"},
    "show": {"read", "storage", "format", "rules", "errors", "version"},
    "demo": {"errors", "version"},
    "vak": {"write", "format", "errors", "version"},
    "s3": {"storage", "errors", "version"},
}
# Imports against the arrows, by module and the layer it imports: the reference call builds shards with the writer.
LAYER_EXCEPTIONS = {("spgdataset.read.reference", "write")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=1)
def modules() -> Modules:
    """{dotted module name: (path, tree)} of every module of the package."""
    return {_module_name(path): (path, ast.parse(path.read_text(encoding="utf-8")))
            for path in sorted(PACKAGE.rglob("*.py"))}


def made_up(sources: Dict[str, str]) -> Modules:
    """Modules from {path under spgdataset/: source}, for showing that a check fails when it should."""
    return {_module_name(PACKAGE / rel): (PACKAGE / rel, ast.parse(text)) for rel, text in sources.items()}


def _where(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _in_order(found: List[str]) -> List[str]:
    """file:line: ... findings by file, then line."""
    def place(text: str) -> Tuple[str, int]:
        where, _, rest = text.partition(":")
        line = rest.split(":", 1)[0]
        return where, int(line) if line.isdigit() else 0
    return sorted(found, key=place)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# getattr(x, "name") and its kin: the object is the first argument, the attribute's name the second.
_BY_NAME = {"getattr", "hasattr", "setattr", "delattr", "builtins.getattr", "builtins.hasattr", "builtins.setattr",
            "builtins.delattr", "object.__getattribute__", "object.__setattr__", "object.__delattr__"}
_STORES_BY_NAME = {"setattr", "delattr", "builtins.setattr", "builtins.delattr", "object.__setattr__",
                   "object.__delattr__"}
# operator.attrgetter("a._b") and methodcaller("_m"): names alone, of whatever object comes.
_NAMES_ONLY = {"attrgetter", "operator.attrgetter", "methodcaller", "operator.methodcaller"}


def _named(call: ast.Call) -> Optional[Tuple[str, str]]:
    """(object, attribute) of getattr(object, "attribute") and its kin, else None."""
    if (ast.unparse(call.func) in _BY_NAME and len(call.args) >= 2 and isinstance(call.args[1], ast.Constant)
            and isinstance(call.args[1].value, str)):
        return ast.unparse(call.args[0]), call.args[1].value
    return None


def reaches(found: Modules) -> List[str]:
    """Uses of another object's underscored names: x._name, getattr(x, "_name") (and hasattr, setattr, delattr),
    attrgetter("_name"), and imports of underscored names from the package."""
    out = []
    for path, tree in found.values():
        where = _where(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = ast.unparse(node.value)
                if owner not in OWN and (where, f"{owner}.{node.attr}") not in ALLOWED:
                    out.append(f"{where}:{node.lineno}: {owner}.{node.attr}")
            elif isinstance(node, ast.Call) and (named := _named(node)) and _private(named[1]):
                if named[0] not in OWN and (where, ".".join(named)) not in ALLOWED:
                    out.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}({named[0]}, {named[1]!r})")
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in _NAMES_ONLY:
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                out += [f"{where}:{node.lineno}: {ast.unparse(node.func)}({name!r})" for name in names
                        if any(_private(part) for part in name.split("."))]
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("spgdataset")):
                out += [f"{where}:{node.lineno}: imports {a.name}" for a in node.names if _private(a.name)]
    return _in_order(out)


def stores(found: Modules) -> List[str]:
    """Stores into attributes of objects other than self and cls: `x.a = ...`, `x.a += ...`, `x.a: T = ...`,
    `del x.a`, loop and `with` targets, `self.a.b = ...` (an object self holds is another object), and
    setattr/delattr(x, ...) with any name."""
    out = []
    for path, tree in found.values():
        where = _where(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
                owner, attr = ast.unparse(node.value), node.attr
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in _STORES_BY_NAME and len(node.args) >= 2:
                owner, attr = _named(node) or (ast.unparse(node.args[0]), f"<{ast.unparse(node.args[1])}>")
            else:
                continue
            if owner not in OWN and (where, owner) not in ALLOWED_STORES:
                out.append(f"{where}:{node.lineno}: {owner}.{attr}")
    return _in_order(out)


def test_no_module_reaches_into_another_objects_underscored_names():
    found = reaches(modules())
    assert found == [], "\n".join(found)


def test_no_module_stores_into_another_objects_attributes():
    found = stores(modules())
    assert found == [], "\n".join(found)


def _runtime_nodes(tree: ast.Module) -> List[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (imports for type hints only run no code)."""
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
               ast.unparse(block.test).endswith("TYPE_CHECKING") for n in ast.walk(block)}
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _import_lines(name: str, path: Path, tree: ast.Module, known: Set[str]) -> List[Tuple[str, int]]:
    """(module of the package, line) for each import in `name` that runs (at its top or in a function): the
    module named, or for `from package import name` the submodule `name` when there is one."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.append((candidate if candidate in known else base, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
    return [(m, line) for m, line in out if m in known and m != name]


def _imports(name: str, path: Path, tree: ast.Module, known: Set[str]) -> Set[str]:
    """The modules that importing `name` runs, directly: each module it imports and the packages on the way
    there (`from ..storage.local import x` runs storage/__init__.py first), but not its own packages, which
    Python imports before `name` itself (they have started already, whatever they import)."""
    own = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    out = set()
    for target, _ in _import_lines(name, path, tree, known):
        parts = target.split(".")
        out |= {target} | ({".".join(parts[:k]) for k in range(1, len(parts))} - own)
    return (out & known) - {name}


def _layer(name: str) -> str:
    return name.split(".")[1] if "." in name else "the package"


def layer_breaks(found: Modules) -> List[str]:
    """Imports that LAYERS does not allow, as file:line: layer imports module."""
    out = []
    for name, (path, tree) in found.items():
        layer, where = _layer(name), _where(path)
        if name == "spgdataset":
            continue
        if layer not in LAYERS:
            out.append(f"{where}: in no layer of the table (add it to LAYERS and docs/architecture.md)")
            continue
        for target, line in sorted(_import_lines(name, path, tree, set(found)), key=lambda t: t[1]):
            other = _layer(target)
            if other != layer and other not in LAYERS[layer] and (name, other) not in LAYER_EXCEPTIONS:
                out.append(f"{where}:{line}: {layer} imports {target}")
    return _in_order(out)


def test_layers_import_only_what_the_table_allows():
    found = layer_breaks(modules())
    assert found == [], "\n".join(found)


def _graph(found: Modules) -> Dict[str, Set[str]]:
    return {name: _imports(name, path, tree, set(found)) for name, (path, tree) in found.items()}


def _shortest_cycle(graph: Dict[str, Set[str]], start: str) -> List[str]:
    """start -> ... -> start, fewest steps (breadth first)."""
    parent: Dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")


def cycles(found: Modules) -> List[List[str]]:
    """One cycle for each group of modules that import each other round about (a strongly connected group).

    The edges are those of `_imports`: a package __init__ importing its own child (`from . import s3` in
    storage/__init__.py) is an edge like any other but no cycle by itself, since the child's implicit import of
    its parent packages is not an edge (Python imports them first; they have started). A child that imports its
    parent package back by name (`from .. import read_bytes` in storage/s3/cache.py) is an edge, and with the
    parent's import of the child a cycle: imported from the parent, the child finds it half made. Imports in
    functions count too: a cycle that only a lazy import closes is still a knot in the design."""
    graph = _graph(found)
    reach = {}
    for node in graph:
        seen, todo = set(), [node]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        reach[node] = seen
    out, covered = [], set()
    for node in sorted(graph):
        if node in reach[node] and node not in covered:
            covered |= {m for m in reach[node] if node in reach[m]}
            out.append(_shortest_cycle(graph, node))
    return out


def test_no_import_cycle():
    found = [" -> ".join(cycle) for cycle in cycles(modules())]
    assert found == [], "\n".join(found)


def _docstring_lines(node: ast.AST) -> int:
    """Lines of a function's docstring (an `Args:` section documents a public entry point's every parameter)."""
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def test_functions_and_modules_are_short():
    long = []
    for name, (path, tree) in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_MODULE_LINES:
            long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1 - _docstring_lines(node)  # code, not its documentation
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


# --------------------------------------------------------------------------- the checks fail when they should

_REACHES = {
    "ds._memory": "x.py:1: ds._memory",
    "getattr(ds, '_memory')": "x.py:1: getattr(ds, '_memory')",
    "hasattr(ds, '_memory')": "x.py:1: hasattr(ds, '_memory')",
    "setattr(ds, '_memory', None)": "x.py:1: setattr(ds, '_memory')",
    "object.__setattr__(ds, '_memory', None)": "x.py:1: object.__setattr__(ds, '_memory')",
    "operator.attrgetter('loader._ring')": "x.py:1: operator.attrgetter('loader._ring')",
    "attrgetter('name', '_ring')": "x.py:1: attrgetter('_ring')",
    "methodcaller('_fill')": "x.py:1: methodcaller('_fill')",
    "from .batching import _chunks": "x.py:1: imports _chunks",
}
_NOT_REACHES = ["self._memory", "cls._memory", "getattr(self, '_memory')", "getattr(ds, 'memory')",
                "getattr(ds, '__len__')", "getattr(ds, name)", "attrgetter('ring.slots')", "ds.__dict__"]


@pytest.mark.parametrize("source", sorted(_REACHES))
def test_reaching_into_underscored_names_is_found(source):
    assert reaches(made_up({"x.py": source})) == [_REACHES[source]]


@pytest.mark.parametrize("source", _NOT_REACHES)
def test_own_and_public_names_are_not_reaching(source):
    assert reaches(made_up({"x.py": source})) == []


_STORES = {
    "source.batch_size = 4": "source.batch_size",
    "ds.num_workers += n": "ds.num_workers",
    "ds.num_workers: int = n": "ds.num_workers",
    "del ds.cache": "ds.cache",
    "a, ds.seed = 1, 2": "ds.seed",
    "for ds.epoch in range(3): pass": "ds.epoch",
    "with open(p) as ds.stream: pass": "ds.stream",
    "self.cursor.epoch = 1": "self.cursor.epoch",
    "ds.loader.ring = None": "ds.loader.ring",
    "setattr(ds, 'num_workers', n)": "ds.num_workers",
    "setattr(ds, name, n)": "ds.<name>",
    "delattr(ds, 'cache')": "ds.cache",
    "object.__setattr__(config, 'n_mels', 40)": "config.n_mels",
}
_NOT_STORES = ["self.batch_size = 4", "cls.count += 1", "del self.cache", "self.items[0] = 1", "ds.items[0] = 1",
               "x = ds.batch_size", "object.__setattr__(self, 'n_mels', 40)", "info.size = 3"]


@pytest.mark.parametrize("source", sorted(_STORES))
def test_stores_into_other_objects_are_found(source):
    assert stores(made_up({"x.py": source})) == [f"x.py:1: {_STORES[source]}"]


@pytest.mark.parametrize("source", _NOT_STORES)
def test_stores_into_own_objects_are_not(source):
    rel = "format/tar.py" if source.startswith("info.") else "x.py"  # an allowed object, in its own file
    assert stores(made_up({rel: source})) == []


def test_layer_breaks_are_found():
    found = made_up({
        "__init__.py": "from .read.dataset import SpectrogramDataset\nfrom .vak import x",
        "rules/frames.py": "from ..errors import SpgError",
        "format/manifest.py": "from ..storage import read_bytes\nfrom ..rules.labels import label_token",
        "storage/__init__.py": "from . import s3\nfrom ..format.manifest import is_sha256",
        "read/source.py": "def f():\n    from ..write.inputs import AUDIO_EXTENSIONS",
        "read/reference.py": "from ..write.job import write_shards",
        "read/dataset.py": "from .. import __version__",
        "show/cli.py": "from ..write import job",
        "tools.py": "import os",
        **{rel: "" for rel in ("errors.py", "vak.py", "rules/labels.py", "write/__init__.py",
                               "write/job.py", "write/inputs.py")},
    })
    assert layer_breaks(found) == ["format/manifest.py:1: format imports spgdataset.storage",
                                   "read/dataset.py:1: read imports spgdataset",
                                   "read/source.py:2: read imports spgdataset.write.inputs",
                                   "rules/frames.py:1: rules imports spgdataset.errors",
                                   "show/cli.py:1: show imports spgdataset.write.job",
                                   "tools.py: in no layer of the table (add it to LAYERS and docs/architecture.md)"]


# The storage package as it is laid out: storage/__init__ imports s3, whose __init__ imports cache, which uses
# format.manifest.
_STORAGE = {"__init__.py": "", "format/__init__.py": "", "format/manifest.py": "import re",
            "storage/__init__.py": "from . import s3\nfrom .local import open_regular\nfrom .s3 import is_s3_url",
            "storage/local.py": "import os", "storage/s3/__init__.py": "from .cache import open_shard",
            "storage/s3/cache.py": "from ...format.manifest import is_sha256\nfrom .. import local"}


def test_packages_importing_their_own_modules_are_no_cycle():
    assert cycles(made_up(_STORAGE)) == []


@pytest.mark.parametrize("manifest_imports", ["from ..storage import read_bytes", "from .. import storage",
                                              "from ..storage.local import open_regular",
                                              "def f():\n    import spgdataset.storage.local"])
def test_a_cycle_through_a_package_and_its_modules_is_found(manifest_imports):
    """format/manifest -> storage -> storage/s3 -> storage/s3/cache -> format/manifest, however manifest names
    storage: storage.local runs storage/__init__.py first."""
    found = made_up(dict(_STORAGE, **{"format/manifest.py": manifest_imports}))
    assert cycles(found) == [["spgdataset.format.manifest", "spgdataset.storage", "spgdataset.storage.s3",
                              "spgdataset.storage.s3.cache", "spgdataset.format.manifest"]]


def test_a_module_importing_its_parent_package_back_is_a_cycle():
    found = made_up(dict(_STORAGE, **{"storage/s3/cache.py": "from ... import storage\nfrom .. import is_s3_url"}))
    assert cycles(found) == [["spgdataset.storage", "spgdataset.storage.s3", "spgdataset.storage.s3.cache",
                              "spgdataset.storage"]]
