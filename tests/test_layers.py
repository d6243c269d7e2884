"""Layers without cycles (issue 17): the package's import graph, read from the source with imports
inside functions counted, has no cycle between its units (a subpackage `tampkit.X`, or a top-level
module such as `tampkit.cli`); no module imports another's private name; the shared types and the
pure math (`tampkit.core`) import nothing heavier than torch; and the organism reaches the rest only
through the registries a user's plug-in uses, so nothing below it imports it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tampkit.pipeline.imports import PACKAGE, import_graph, module_files

REPO = Path(__file__).resolve().parents[1]
#: Where the private-name rule is checked (the package, the Prefect drivers, the tests).
CHECKED_TREES = ("tampkit", "flows", "tasks", "tests")
#: Top-level modules a project of ours may import from.
OWN_TOP_LEVEL = (PACKAGE, "flows", "tasks")
#: What tampkit.core may import besides itself and the standard library: torch, and numpy (torch's
#: array interchange; the AMIA greedy loop and the packed mask format run on it), nothing heavier.
CORE_MAY_IMPORT = {"torch", "numpy"}
#: The only units that may import the organism: itself, the CLI (`tamp organism`) and lmms-eval's
#: integration at the top (the tamp_scene_qa task). Everything else reaches it through a registry.
MAY_IMPORT_ORGANISM = {"tampkit.organism", "tampkit.lmms", "tampkit.cli"}


def unit(module: str) -> str | None:
    """`tampkit.X` for `tampkit.X` and everything under it; None for the root package itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else None


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph(with_plugins=False).items():
        source = unit(module)
        if source is None:
            continue
        edges = graph.setdefault(source, set())
        edges |= {t for t in map(unit, targets) if t is not None and t != source}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its nodes, the first repeated at the end) or None; depth-first, deterministic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_units_import_one_another_without_a_cycle() -> None:
    graph = unit_graph()
    assert "tampkit.core" in graph and "tampkit.cli" in graph  # the graph was read
    cycle = find_cycle(graph)
    edges = "\n".join(f"  {u} -> {', '.join(sorted(graph[u]))}" for u in sorted(graph))
    assert cycle is None, f"import cycle between units: {' -> '.join(cycle)}\nunit graph:\n{edges}"


def _resolved(node: ast.ImportFrom, path: Path) -> str:
    """The dotted module an ImportFrom reads from (relative imports resolved against `path`)."""
    if not node.level:
        return node.module or ""
    package = list(path.relative_to(REPO).with_suffix("").parts)[:-1]  # a module's or __init__'s package
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_a_private_name_of_another() -> None:
    found = []
    for tree in CHECKED_TREES:
        for path in sorted((REPO / tree).rglob("*.py")):
            module = _module_name(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom):
                    origin = _resolved(node, path)
                    if origin.split(".")[0] not in OWN_TOP_LEVEL or origin == module:
                        continue
                    found += [f"{path.relative_to(REPO)}:{node.lineno}: {alias.name} from {origin}"
                              for alias in node.names if _is_private(alias.name)]
                elif isinstance(node, ast.Import):
                    found += [f"{path.relative_to(REPO)}:{node.lineno}: {alias.name}" for alias in node.names
                              if alias.name.split(".")[0] in OWN_TOP_LEVEL
                              and any(_is_private(part) for part in alias.name.split("."))]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_core_imports_only_the_standard_library_torch_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | CORE_MAY_IMPORT | {"__future__"}
    found = []
    files = {m: p for m, p in module_files().items() if m == "tampkit.core" or m.startswith("tampkit.core.")}
    assert "tampkit.core.types" in files and "tampkit.core.masks" in files
    for module, path in sorted(files.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [_resolved(node, path)] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                inside = name == "tampkit.core" or name.startswith("tampkit.core.")
                if not inside and (top == PACKAGE or top not in allowed):
                    found.append(f"{module}:{node.lineno}: imports {name}")
    assert not found, "tampkit.core imports more than the standard library, torch and itself:\n" + "\n".join(found)


def test_nothing_below_the_organism_imports_it() -> None:
    graph = import_graph(with_plugins=False)
    found = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                   if unit(target) == "tampkit.organism" and unit(module) not in MAY_IMPORT_ORGANISM)
    assert not found, "imports of the organism from below it (register a plug-in instead):\n" + "\n".join(found)


def test_the_organism_is_installed_as_a_plugin_of_each_registry() -> None:
    """The three registries find the organism through its entry points (pyproject.toml): the graph
    with plug-ins reaches it from each registry, and each registry serves its names."""
    from tampkit.calibration.sources import calibration_sources, plugin_source
    from tampkit.evaluation.suites import get_suite, reference_prefixes, suite_names
    from tampkit.models.loading import alias_names
    from tampkit.models.plugins import claiming_plugin
    graph = import_graph(with_plugins=True)
    for registry in ("tampkit.models.plugins", "tampkit.calibration.sources", "tampkit.evaluation.suites"):
        assert any(unit(t) == "tampkit.organism" for t in graph[registry]), registry
    assert claiming_plugin("organism-mini").family == "organism" and claiming_plugin("tiny-llama") is None
    assert {"organism", "organism-mini"} <= set(alias_names())
    assert "scenes" in calibration_sources() and plugin_source("scenes") is not None
    assert "scene_qa" in suite_names() and get_suite("scene_qa").agreement_inputs is not None
    assert "blind_text_prior_" in reference_prefixes()
