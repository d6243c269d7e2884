"""The package's import graph, read from the source (imports inside functions count too).

Two users: a stage's code fingerprint and its DVC `deps` are the files its module reaches through
imports (so nobody keeps a list of them by hand), and the layering test fails on any import cycle
between subpackages. Plug-ins that this package registers through its own entry points (the
organism) count as imported by the registry that loads them, since their code then runs too: a
registry is a module with a module-level `GROUP = "<entry point group>"`, and the entry points are
read from pyproject.toml (the source, not what an install left in site-packages).
"""

from __future__ import annotations

import ast
import functools
import tomllib
from pathlib import Path

PACKAGE = "tampkit"
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT.parent / "pyproject.toml"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _parents(module: str) -> list[str]:
    """Packages whose __init__ runs when `module` is imported."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_by(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Package modules a source file imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            while name and name not in modules:  # `from x import function`: the module is x
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def registry_group(tree: ast.Module) -> str | None:
    """The entry point group a registry module loads (its module-level `GROUP = "..."`), if any."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["GROUP"]
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


@functools.lru_cache(maxsize=1)
def own_entry_points() -> dict[str, set[str]]:
    """Entry point group -> the package modules pyproject.toml registers in it."""
    if not PYPROJECT.exists():  # an installed wheel: no plug-ins of our own to follow
        return {}
    groups = tomllib.loads(PYPROJECT.read_text()).get("project", {}).get("entry-points", {})
    return {group: {value.split(":")[0] for value in points.values()} for group, points in groups.items()}


@functools.lru_cache(maxsize=1)
def import_graph(with_plugins: bool = True) -> dict[str, frozenset[str]]:
    """module -> the package modules importing it runs (its parents' __init__ included)."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        edges = imported_by(path, module, modules)
        group = registry_group(ast.parse(path.read_text())) if with_plugins else None
        if group is not None:
            edges |= {m for m in own_entry_points().get(group, ()) if m in modules}
        edges |= {p for m in list(edges) for p in _parents(m)}
        graph[module] = frozenset(edges - {module})
    return graph


def closure(module: str) -> list[str]:
    """`module` and every package module it reaches, sorted."""
    graph = import_graph()
    seen = {module, *_parents(module)}
    todo = list(seen)
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return sorted(seen)


def data_files(modules: list[str]) -> list[Path]:
    """Package data read by these modules: the files of a `data/` folder beside any of them."""
    files = module_files()
    folders = {files[m].parent / "data" for m in modules}
    return sorted(f for folder in folders if folder.is_dir() for f in folder.rglob("*") if f.is_file())


def code_files(module: str) -> list[Path]:
    """The source and data files whose content a module's results depend on."""
    reached = closure(module)
    files = module_files()
    return sorted({files[m] for m in reached} | set(data_files(reached)))


def relative(path: Path) -> str:
    """A package file as the repository spells it (`tampkit/core/amia.py`)."""
    return path.relative_to(ROOT.parent).as_posix()
