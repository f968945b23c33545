"""The tree in layers: imports point down only, and no module imports itself in a circle.

Every module of ``mosixd`` and ``mosrun`` is read as an AST. An import counts wherever it
stands: at the top, inside a function, under ``TYPE_CHECKING``; so does a module named by a
string in ``sys.modules[...]`` or ``importlib.import_module(...)``. The check is a small graph
walk, shown failing on cycles and layer breaches made on purpose.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mosixd", "mosrun")

# Bottom first. Each layer may import its own modules and those named here; the docstring of
# the layer's __init__.py says the same in its "May import" paragraph.
LAYERS: dict[str, set[str]] = {
    "mosrun.runtime": set(),
    "mosixd.core": set(),
    "mosixd.settings": {"mosrun.runtime"},
    "mosixd.wire": {"mosixd.core"},
    "mosixd.host": {"mosrun.runtime", "mosixd.core", "mosixd.wire"},
    "mosixd.home": {"mosrun.runtime", "mosixd.core", "mosixd.wire"},
    "mosixd.daemon": {"mosrun.runtime", "mosixd.core", "mosixd.settings", "mosixd.wire", "mosixd.host",
                      "mosixd.home"},
    "mosrun.commands": {"mosrun.runtime", "mosixd.core", "mosixd.settings", "mosixd.wire"},
}
# The package roots: what ``import mosrun`` and ``python -m mosixd`` load.
ROOTS: dict[str, set[str]] = {"mosrun": {"mosrun.runtime"}, "mosixd": set(), "mosixd.__main__": {"mosixd.daemon"}}

# What a layer may import from outside the project (None: anything).
STDLIB = set(sys.stdlib_module_names)
SANS_IO_BANNED = {"asyncio", "socket", "select", "selectors", "subprocess", "threading", "multiprocessing",
                  "signal", "time", "os"}
OUTSIDE: dict[str, set[str] | None] = {
    # The picklers and the checksum are imported when first used, inside functions.
    "mosrun.runtime": STDLIB | {"cloudpickle", "dill", "xxhash"},
    "mosixd.core": STDLIB - SANS_IO_BANNED,
    "mosixd.settings": STDLIB,
}


@dataclass
class ImportGraph:
    """Modules of a tree and the project modules each imports (``outside``: other top-level names)."""

    edges: dict[str, set[str]] = field(default_factory=dict)
    outside: dict[str, set[str]] = field(default_factory=dict)
    lazy_outside: dict[str, set[str]] = field(default_factory=dict)  # imported inside a function


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _named_module(node: ast.AST) -> str | None:
    """A module named by a constant in ``sys.modules[...]``, ``sys.modules.get(...)`` or
    ``importlib.import_module(...)``."""
    def is_sys_modules(expr: ast.AST) -> bool:
        return (isinstance(expr, ast.Attribute) and expr.attr == "modules"
                and isinstance(expr.value, ast.Name) and expr.value.id == "sys")

    arg: ast.AST | None = None
    if isinstance(node, ast.Subscript) and is_sys_modules(node.value):
        arg = node.slice
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        if node.func.attr in ("get", "setdefault", "pop") and is_sys_modules(node.func.value):
            arg = node.args[0]
        elif node.func.attr == "import_module":
            arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def read_graph(root: Path) -> ImportGraph:
    """The import graph of every module of PACKAGES under ``root``."""
    files = {module_name(root, p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    graph = ImportGraph()
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges, outside, lazy = set(), set(), set()

        def project(target: str) -> None:
            if target.split(".")[0] in PACKAGES and target != name:
                edges.add(target)

        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_function = {id(sub) for f in functions for sub in ast.walk(f)}
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif (named := _named_module(node)) is not None:
                project(named)
                continue
            for target in found:
                top = target.split(".")[0]
                if top in PACKAGES:
                    project(target)
                elif top != "__future__":
                    (lazy if id(node) in in_function else outside).add(top)
        graph.edges[name], graph.outside[name], graph.lazy_outside[name] = edges, outside, lazy
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(edges, WHITE)
    for start in sorted(edges):
        if colour[start] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        colour[start] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = BLACK
                stack.pop()
                continue
            nxt = todo.pop(0)
            if nxt not in colour:
                continue  # not a module of the tree (a name that is not there; reported apart)
            if colour[nxt] == GREY:
                path = [n for n, _ in stack]
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, sorted(edges[nxt])))
    return None


def layer_of(module: str) -> str:
    for layer in sorted([*LAYERS, *ROOTS], key=len, reverse=True):
        if module == layer or module.startswith(layer + ".") and layer in LAYERS:
            return layer
    raise AssertionError(f"module {module} belongs to no layer: add it to a layer folder")


def breaches(graph: ImportGraph) -> list[str]:
    """Every import that points to a layer its own may not import."""
    found = []
    for module, targets in sorted(graph.edges.items()):
        mine = layer_of(module)
        allowed = LAYERS.get(mine, ROOTS.get(mine, set()))
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs != mine and theirs not in allowed:
                found.append(f"{module} ({mine}) imports {target} ({theirs})")
    return found


def layer_graph(graph: ImportGraph) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for module, targets in graph.edges.items():
        folders.setdefault(layer_of(module), set()).update(
            layer_of(t) for t in targets if layer_of(t) != layer_of(module))
    return folders


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return read_graph(ROOT)


# ---- the tree as it is -----------------------------------------------------------------------

def test_no_module_imports_itself_in_a_circle(graph: ImportGraph) -> None:
    assert find_cycle(graph.edges) is None, " -> ".join(find_cycle(graph.edges) or [])


def test_every_import_points_down_the_layers(graph: ImportGraph) -> None:
    assert breaches(graph) == []
    assert find_cycle(layer_graph(graph)) is None


def test_every_module_lives_in_a_layer_folder(graph: ImportGraph) -> None:
    for module in graph.edges:
        assert layer_of(module) in {*LAYERS, *ROOTS}
    for layer in LAYERS:
        assert (ROOT / layer.replace(".", "/") / "__init__.py").exists()


def test_every_imported_project_module_exists(graph: ImportGraph) -> None:
    missing = {f"{m} imports {t}" for m, targets in graph.edges.items() for t in targets if t not in graph.edges}
    assert not missing


@pytest.mark.parametrize("layer", sorted(OUTSIDE))
def test_lower_layers_import_only_what_they_may_from_outside(graph: ImportGraph, layer: str) -> None:
    allowed = OUTSIDE[layer]
    assert allowed is not None
    for module in graph.edges:
        if layer_of(module) != layer:
            continue
        assert graph.outside[module] <= (allowed - {"cloudpickle", "dill", "xxhash"}), module
        assert graph.lazy_outside[module] <= allowed, module


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_says_what_it_is_and_what_it_may_import(layer: str) -> None:
    init = ROOT / layer.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert len(doc.splitlines()) >= 3, f"{init}: say in a few lines what the layer is"
    said = doc.partition("May import:")[2]
    assert said, f"{init}: the docstring must say what the layer may import ('May import: ...')"
    said = said.split("\n\n")[0]
    named = {name for name in LAYERS if f"``{name}``" in said}
    assert named == LAYERS[layer], f"{init} says it may import {sorted(named)}"


def test_a_tasks_runtime_and_mosrun_load_neither_grpc_nor_the_daemon() -> None:
    # What the mosrun command and a task import at start, in a fresh interpreter.
    probe = ("import sys, mosrun, mosrun.commands.mosrun, mosrun.runtime.program; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'google', 'psutil'}), "
             "sorted(m for m in sys.modules if m.startswith('mosixd.') and not m.startswith('mosixd.settings')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[] []\n"


# ---- the checks themselves, on trees broken on purpose --------------------------------------------

def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_check_finds_a_cycle_made_of_imports_in_functions_and_for_typing(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "mosixd/__init__.py": "", "mosrun/__init__.py": "", "mosixd/core/__init__.py": "",
        "mosixd/core/a.py": "from mosixd.core import b\n",
        "mosixd/core/b.py": """\
            TYPE_CHECKING = False
            if TYPE_CHECKING:
                from mosixd.core.c import C
            """,
        "mosixd/core/c.py": """\
            import sys

            def later():
                from . import a
                return sys.modules["mosixd.core.b"]
            """,
    })
    assert find_cycle(read_graph(tmp_path).edges) == ["mosixd.core.a", "mosixd.core.b", "mosixd.core.c",
                                                      "mosixd.core.a"]


def test_the_check_finds_a_cycle_through_sys_modules(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "mosixd/__init__.py": "", "mosrun/__init__.py": "", "mosrun/runtime/__init__.py": "",
        "mosrun/runtime/x.py": "import mosrun.runtime.y\n",
        "mosrun/runtime/y.py": "import sys\nx = sys.modules.get('mosrun.runtime.x')\n",
    })
    assert find_cycle(read_graph(tmp_path).edges) == ["mosrun.runtime.x", "mosrun.runtime.y", "mosrun.runtime.x"]


def test_the_old_circle_put_back_into_the_real_tree_fails_both_checks(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    # The circle this tree once had: the home sessions reaching back for the daemon class.
    sessions = tmp_path / "mosixd" / "home" / "sessions.py"
    sessions.write_text(sessions.read_text() + textwrap.dedent("""

        def _daemon():
            from mosixd.daemon.node import NodeDaemon
            return NodeDaemon
        """))
    broken = read_graph(tmp_path)
    cycle = find_cycle(broken.edges)
    assert cycle is not None and "mosixd.home.sessions" in cycle and "mosixd.daemon.node" in cycle
    assert breaches(broken) == ["mosixd.home.sessions (mosixd.home) imports mosixd.daemon.node (mosixd.daemon)"]
    assert find_cycle(layer_graph(broken)) == ["mosixd.daemon", "mosixd.home", "mosixd.daemon"]


def test_the_check_finds_a_core_that_does_io(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "mosixd/__init__.py": "", "mosrun/__init__.py": "", "mosixd/core/__init__.py": "",
        "mosixd/core/clocky.py": "import time\n\ndef now():\n    import grpc\n    return time.time()\n",
    })
    broken = read_graph(tmp_path)
    assert broken.outside["mosixd.core.clocky"] - OUTSIDE["mosixd.core"] == {"time"}  # type: ignore[operator]
    assert broken.lazy_outside["mosixd.core.clocky"] == {"grpc"}


# ---- README's table -----------------------------------------------------------------------------

def readme_layers() -> list[tuple[str, str, list[str]]]:
    """README's layering table: (layer folder, what it may import, names in its module cells)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("**Layering.**"):].split("\n\n")[1]
    rows: list[tuple[str, str, list[str]]] = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [n.strip("`") for n in cells[2].split(", ")]
        if cells[0]:
            rows.append((cells[0].strip("`"), cells[1], names))
        else:
            rows[-1][2].extend(names)
    return rows


def test_readmes_layering_table_matches_the_tree() -> None:
    rows = readme_layers()
    assert [folder.rstrip("/").replace("/", ".") for folder, _, _ in rows] == list(LAYERS)
    short = {layer: layer.rsplit(".", 1)[1] for layer in LAYERS}
    for index, (folder, may, names) in enumerate(rows):
        layer = folder.rstrip("/").replace("/", ".")
        if may == "all of the above":
            said = {short[name] for name in list(LAYERS)[:index]}
        elif may.startswith("the standard library"):
            said = set()
        else:
            said = set(may.split(", "))
        assert said == {short[name] for name in LAYERS[layer]}, f"README: {folder} may import {may!r}"
        directory = ROOT / folder
        named: set[Path] = set()
        for name in names:
            found = sorted(directory.glob(name.rstrip("/") + ("/*.py" if name.endswith("/") else "")))
            assert found, f"README names {folder}{name}, which is not in the tree"
            named.update(found)
        in_tree = {p for p in directory.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts}
        assert in_tree - named == set(), f"README's table leaves out {sorted(map(str, in_tree - named))}"
