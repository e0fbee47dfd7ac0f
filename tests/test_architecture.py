"""The package's structure: imports point down the layers, no cycles, no module too long.

Every import of every module counts, the ones inside functions too. The layers are the ones
``docs/architecture.rst`` describes; a module missing from :data:`LAYERS` fails the test,
so a new module has to be given its place.
"""

from __future__ import annotations

import ast
import pathlib

import networkx as nx

import kitsune_backend

PACKAGE = pathlib.Path(kitsune_backend.__file__).parent
MAX_LINES = 400

LAYERS = {  # higher imports lower; never the other way
    "core": 0, "runtime": 1, "codegen": 2, "passes": 3, "binding": 4, "pipeline": 5,
    "compile": 6, "entry": 7, "training": 8, "package": 9,
}
LAYER_OF_MODULE = {
    **dict.fromkeys(("ir", "record", "repro", "invariants", "graph_utils", "config", "errors", "log", "philox",
                     "dot", "models", "timing", "session", "torch_compat", "schedule_picture"), "core"),
    **dict.fromkeys(("pipeline", "plugins", "plugin_check", "process", "inspection", "debug_dump",
                     "schedule_probe"), "pipeline"),
    "compiler": "compile",
    **dict.fromkeys(("__main__", "backend", "repro_run", "cli", "doctor"), "entry"),
    **dict.fromkeys(("__init__", "demo"), "package"),
}
FOLDER_LAYERS = {"runtime": "runtime", "codegen": "codegen", "passes": "passes",
                 "binding": "binding", "optim": "training"}


def _name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def _layer(module: str) -> str:
    head = module.split(".")[0]
    if head in FOLDER_LAYERS:
        return FOLDER_LAYERS[head]
    assert module in LAYER_OF_MODULE, f"{module} has no layer: add it to LAYER_OF_MODULE"
    return LAYER_OF_MODULE[module]


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """The package modules ``module`` imports (relative and absolute, anywhere in the file)."""
    found: set[str] = set()
    package = list(path.relative_to(PACKAGE).parent.parts)
    known = {_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("kitsune_backend"):
                target = node.module[len("kitsune_backend"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # ``from . import x`` names a module
                candidate = f"{target}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in known else target or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kitsune_backend."):
                    found.add(alias.name[len("kitsune_backend."):])
    found = {f if f in known else f + ".__init__" for f in found}
    found.discard(module)
    return {f for f in found if f in known}


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _name(path)
        graph.add_node(module)
        for target in _imports(path, module):
            graph.add_edge(module, target)
    return graph


def test_the_package_has_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], cycles


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for source, target in import_graph().edges:
        if target.endswith("__init__") and "." in target:
            continue  # a sub-package's docstring-only __init__ runs on any import of it
        if LAYERS[_layer(target)] > LAYERS[_layer(source)]:
            upward.append(f"{source} ({_layer(source)}) imports {target} ({_layer(target)})")
    assert upward == []


def test_the_checks_see_what_they_check():
    """The import graph is the real one: known edges and layers are found."""
    graph = import_graph()
    assert graph.has_edge("pipeline", "passes.fusion")
    assert graph.has_edge("passes.fusion", "codegen.plans")
    assert graph.has_edge("compiler", "debug_dump")
    assert graph.has_edge("__init__", "backend") and graph.has_edge("passes.cleanup", "ir")
    assert _layer("binding.capture") == "binding" and _layer("ir") == "core"


def test_no_module_is_over_400_lines():
    long = {_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
