"""The layering the project documents (docs/ARCHITECTURE.md), checked on the source: no import cycles, the library
never imports Gradio, no module special-cases a model key, and the UI modules stay small."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deit_demo"
UI_MODULES = {"deit_demo.ui", "deit_demo.handlers", "deit_demo.agents"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every deit_demo module `name` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycles():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(node, path):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


def test_variant_families_import_base_and_registry_not_the_package():
    for name in MODULES:
        if name.startswith("deit_demo.variants.") and name.rsplit(".", 1)[1] not in ("base", "registry"):
            assert "deit_demo.variants" not in imports_of(name), name


@pytest.mark.parametrize("name", sorted(set(MODULES) - UI_MODULES))
def test_library_never_imports_gradio(name):
    tree = ast.parse(MODULES[name].read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {n for n in names if n.split(".")[0] == "gradio"}, name


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"deit_demo.models"}))
def test_no_module_special_cases_a_model_key(name):
    text = MODULES[name].read_text()
    assert not re.search(r"""(==|!=|\bin\b)\s*\(?["']deit_\w+["']""", text), name
    assert not re.search(r"""\.key\s*(==|!=)""", text), name


@pytest.mark.parametrize("name", sorted(UI_MODULES))
def test_ui_modules_stay_small(name):
    assert len(MODULES[name].read_text().splitlines()) <= 350
