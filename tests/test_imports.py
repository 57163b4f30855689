"""The package's import graph: no circles, and no module reaches past what a package exports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "steerft"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return True
    return False


def imports_of(name: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import that runs, at top level or inside a function."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                exported = base in MODULES and alias.name in _exports(base)
                found.append((submodule, None) if submodule in MODULES and not exported else (base, alias.name))
    return [(module, name) for module, name in found if module == "steerft" or module.startswith("steerft.")]


def _exports(module: str) -> list[str]:
    """A module's `__all__`, read from its source (no import needed)."""
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def graph() -> dict[str, set[str]]:
    return {name: {module for module, _ in imports_of(name) if module in MODULES and module != name}
            for name in MODULES}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def _is_package_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert circles(graph()) == []


def test_modules_import_only_what_other_packages_export():
    """`from steerft.x.y import z` from outside package steerft.x must name something steerft.x exports.

    Importing a whole public module (`from steerft.jobs import train`) is fine: the module is its API.
    """
    reaches = []
    for name in MODULES:
        here = name if _is_package_init(name) else name.rpartition(".")[0]
        for module, imported in imports_of(name):
            if module not in MODULES or _is_package_init(module):
                continue
            owner = module.rpartition(".")[0]
            if owner in ("steerft", here) or here.startswith(owner + "."):
                continue  # the top-level modules, and a package's own modules
            if imported is None and not module.rpartition(".")[2].startswith("_"):
                continue
            if imported is None or imported not in _exports(owner):
                reaches.append(f"{name} imports {module}.{imported or ''}")
    assert reaches == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
