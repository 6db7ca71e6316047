"""The layout's rules (ARCHITECTURE.md), checked on the source: the import graph, counted with every
import statement wherever it stands: function-level ones, and those under `if TYPE_CHECKING:` too (an
annotation that needs a module is a dependency all the same, and a circle through one is still a circle)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "vggtune"
# Packages in the order data flows; a module may import only from its own package and those before it.
# "" is the foundation (errors, fsutil, progress, distributed, version), importing nothing after it.
ORDER = ["", "data", "model", "features", "training", "deploy", "results", "api", "cliapi", "cli"]
# The API's two faces (api.py for users, cliapi.py for the command line): they import what the verbs need.
FACE = {"vggtune", "vggtune.__main__", "vggtune.api", "vggtune.cliapi"}
MAX_IMPORTS = 8


def module_name(path: Path) -> str:
    parts = ["vggtune", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SOURCE.rglob("*.py")}


def _annotation_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        or isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def imported(path: Path, annotations: bool = True) -> set[str]:
    """The package modules one file imports, wherever the import statement stands (with `annotations`
    False, not those under `if TYPE_CHECKING:`, which never run)."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if not annotations and _annotation_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith("vggtune"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("vggtune"):
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.add(full if full in MODULES else child.module)
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}: a relative import; the package imports by absolute names")
            visit(child)
    visit(ast.parse(path.read_text()))
    return found - {module_name(path)}


GRAPH = {name: imported(path) for name, path in MODULES.items()}
RUNTIME = {name: imported(path, annotations=False) for name, path in MODULES.items()}  # what runs: the fan-out cap


def layer(name: str) -> int:
    """The place of a module's package in ORDER; the face (vggtune, vggtune.__main__) comes last."""
    if name in FACE - {"vggtune.api", "vggtune.cliapi"}:
        return len(ORDER)
    part = name.split(".")[1]
    return ORDER.index(part) if part in ORDER else ORDER.index("")


def test_the_graph_sees_the_modules_and_their_imports():
    assert {"vggtune.api", "vggtune.cli", "vggtune.model.arch", "vggtune.training.schedule"} <= set(GRAPH)
    assert "vggtune.model.arch" in GRAPH["vggtune.training.config"]
    assert "vggtune.training.schedule" in GRAPH["vggtune.api"]          # a function-level import, counted
    assert "vggtune.model.classifier" in GRAPH["vggtune.training.session"]   # under TYPE_CHECKING, counted


def test_no_import_cycle():
    state: dict[str, str] = {}

    def walk(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(GRAPH.get(name, ())):
            if state.get(other) == "open":
                cycle = trail[trail.index(other):] + [other] if other in trail else [name, other]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if other not in state:
                walk(other, trail + [other])
        state[name] = "done"
    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])


@pytest.mark.parametrize("name", sorted(set(MODULES) - FACE))
def test_a_module_imports_at_most_eight_package_modules(name):
    assert len(RUNTIME[name]) <= MAX_IMPORTS, sorted(RUNTIME[name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_packages_import_only_what_comes_before_them(name):
    later = sorted(other for other in GRAPH[name] if other in MODULES and layer(other) > layer(name))
    assert not later, f"{name} imports {later}, which come after it in {ORDER}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n == "vggtune.cli" or n.startswith("vggtune.cli.")))
def test_the_command_line_calls_the_api_and_nothing_past_it(name):
    faces = ("vggtune.api", "vggtune.cliapi")
    past = sorted(other for other in GRAPH[name] if other not in faces and not other.startswith(("vggtune.cli.",)))
    assert not past, f"{name} imports {past}"


def test_every_package_says_what_it_holds():
    for package in sorted(path.parent for path in SOURCE.rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert docstring and len(docstring.split()) >= 15, f"{package.name}/__init__.py needs its paragraph"


ARCHITECTURE = (SOURCE.parents[1] / "ARCHITECTURE.md").read_text()


@pytest.mark.parametrize("name", sorted(n for n, path in MODULES.items() if path.stem not in ("__init__", "__main__")))
def test_every_module_is_on_the_map(name):
    file = MODULES[name].name              # in a table as `similar.py`, or `cli/text.py`
    assert re.search(rf"[`/]{re.escape(file)}`", ARCHITECTURE), f"{file} is missing from ARCHITECTURE.md"


def private_imports(source: str) -> list[str]:
    """`from vggtune.x import _name`: another module's private name, wherever the statement stands."""
    return [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vggtune")
            for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]


def test_private_imports_are_seen():
    assert private_imports("from vggtune.results.html import _style, table") == ["vggtune.results.html._style"]
    assert private_imports("from vggtune.results.tuning import tune as _tune") == []     # a public name, renamed
    assert private_imports("from vggtune.version import __version__") == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_private_name(name):
    found = private_imports(MODULES[name].read_text())
    assert not found, f"{name} imports {found}"


MAX_FUNCTION_LINES = 100


def long_functions(source: str) -> list[str]:
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_long_functions_are_seen():
    assert long_functions("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES) == ["f (101 lines)"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_over_a_hundred_lines(name):
    found = long_functions(MODULES[name].read_text())
    assert not found, f"{name}: {found}"


def run_file_names_spelled(source: str) -> set[str]:
    from vggtune import runfiles

    constants = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)}
    return constants & set(runfiles.NAMES)


def test_the_model_files_have_one_name():
    from vggtune import runfiles
    from vggtune.model import spec

    assert (spec.MODEL_FILE, spec.WEIGHTS_FILE) == (runfiles.MODEL, runfiles.WEIGHTS)
    assert run_file_names_spelled('path = run / "metrics.json"') == {"metrics.json"}


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"vggtune.runfiles"}))
def test_run_folder_file_names_are_spelled_by_their_owners_alone(name):
    owned = {"model.json", "model.safetensors"} if name == "vggtune.model.spec" else set()
    spelled = run_file_names_spelled(MODULES[name].read_text()) - owned
    assert not spelled, f"{name} spells {sorted(spelled)}: name them through vggtune.runfiles or RunDir"


RECORDS_OF_FIGURES = {"Metrics", "MultiLabelMetrics", "Figures"}


def figures_type_checks(source: str) -> list[int]:
    """Lines that ask which record a set's figures are (`isinstance(x, Metrics)`), instead of asking the task
    or the record itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            names = {getattr(kind, "attr", None) or getattr(kind, "id", None) for kind in kinds}
            if names & RECORDS_OF_FIGURES:
                found.append(node.lineno)
    return found


def test_figures_type_checks_are_seen():
    assert figures_type_checks("if isinstance(pooled, api.Metrics):\n    pass") == [1]
    assert figures_type_checks("isinstance(x, (int, MultiLabelMetrics))") == [1]
    assert figures_type_checks("isinstance(x, float)") == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_asks_which_record_the_figures_are(name):
    """The task chooses (its `several`, or a registry by the record's `task`), the protocol answers."""
    found = figures_type_checks(MODULES[name].read_text())
    assert not found, f"{name}: isinstance on the figures' record at lines {found}"
