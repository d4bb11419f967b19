"""The layering the project documents (docs/ARCHITECTURE.md), checked on the source: each package imports only the
packages its row of the table allows (the app and the CLI: the service and the presentation, nothing else), no import
cycles, only the app imports Gradio, no module special-cases a model key or the original's name, and every module
stays small."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deit_demo"
# What each package may import (docs/ARCHITECTURE.md shows the same table). The floors run one way; the entry points
# (app, cli) enter the library through its one door, `service`, and show what comes back with `present`.
ALLOWED = {
    "core": set(),
    "train": {"core"},
    "variants": {"core", "train"},
    "measure": {"core", "train", "variants"},
    "serve": {"core", "train", "variants", "measure"},
    "present": {"core", "train", "variants", "measure", "serve"},
    "cluster": {"core", "train", "variants", "measure", "serve"},
    "service": {"core", "train", "variants", "measure", "serve", "present", "cluster"},
    "app": {"service", "present"},
    "cli": {"service", "present"},
}
MAX_LINES = 350
MAX_JS_LINES = 250  # the page's ES modules (app/web/), one job each


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
        # The pipeline and the converter's child process need every family registered; they are not families.
        if name.startswith("deit_demo.variants.") and name.rsplit(".", 1)[1] not in ("base", "registry", "converter"):
            assert "deit_demo.variants" not in imports_of(name), name


def package_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_every_module_lives_in_a_role_package_with_a_docstring_that_says_what_it_may_import():
    loose = [n for n in MODULES if n.count(".") == 1 and n.split(".")[1] not in {*ALLOWED, "__main__"}]
    assert not loose, f"modules outside the role packages: {loose}"
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), package


@pytest.mark.parametrize("name", sorted(n for n in MODULES if package_of(n)))
def test_packages_import_only_what_their_row_allows(name):
    mine = package_of(name)
    for other in {package_of(m) for m in imports_of(name)} - {None, mine}:
        assert other in ALLOWED[mine], f"{name} imports deit_demo.{other}; {mine} may import {sorted(ALLOWED[mine])}"


def test_the_table_has_no_cycle_and_every_package_has_a_row():
    done: set[str] = set()
    while len(done) < len(ALLOWED):  # peel the packages whose imports are all peeled: a cycle would stop it
        ready = {p for p, allowed in ALLOWED.items() if p not in done and allowed <= done}
        assert ready, f"the table has a cycle among {sorted(set(ALLOWED) - done)}"
        done |= ready
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED)


def test_the_architecture_document_shows_the_same_table():
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", text, flags=re.M))
    shown = {p: set(re.findall(r"`(\w+)`", rows.get(p, ""))) for p in ALLOWED}
    assert shown == ALLOWED


def third_party_imports(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if package_of(n) != "cluster"))
def test_only_the_cluster_package_imports_ray(name):
    assert "ray" not in third_party_imports(name), name


def test_without_a_cluster_nothing_of_ray_loads():
    import subprocess
    import sys

    script = ("import sys; from deit_demo.app.ui import build_app; from deit_demo.cli import main; "
              "from deit_demo.service import AppConfig; build_app(AppConfig(model='deit_digits', auto_prepare=False)); "
              "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-1000:]


@pytest.mark.parametrize("name", sorted(set(MODULES) - {n for n in MODULES if package_of(n) == "app"}))
def test_only_the_app_imports_gradio(name):
    tree = ast.parse(MODULES[name].read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {n for n in names if n.split(".")[0] == "gradio"}, name


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"deit_demo.core.models"}))
def test_no_module_special_cases_a_model_key(name):
    text = MODULES[name].read_text()
    assert not re.search(r"""(==|!=|\bin\b)\s*\(?["']deit_\w+["']""", text), name
    assert not re.search(r"""\.key\s*(==|!=)""", text), name


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"deit_demo.variants.registry", "deit_demo.core.models"}))
def test_the_original_is_named_once(name):
    # `ORIGINAL` (variants.registry) is the one name; the catalog's default ticks are data, below the registry.
    assert not re.search(r"""(==|!=)\s*["']original["']""", MODULES[name].read_text()), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES, name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.js")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_page_modules_stay_small_and_narrow(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_JS_LINES, path.name
    assert not [i for i, line in enumerate(lines, 1) if len(line) > 120], f"{path.name}: lines over 120 columns"


def test_the_library_changes_nothing_process_wide_on_import_build_or_benchmark():
    # The GIL switch interval, torch.fx's patches, Gradio's retried imports, thread environment variables and logging
    # belong to the entry points (app.py, the CLI): a fresh interpreter that imports everything, builds the app and
    # runs a benchmark finds them as Python left them.
    import json
    import subprocess
    import sys

    script = """
import json, logging, os, sys
env_before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
switch = sys.getswitchinterval()
from deit_demo.app.ui import build_app
from deit_demo.cli import build_parser
from deit_demo.measure.bench import BenchSettings
from deit_demo.service.config import AppConfig
build_app(AppConfig(model="deit_digits", auto_prepare=False, isolate_conversions=False))
from deit_demo.service.lab import Lab
Lab(AppConfig(model="deit_digits", auto_prepare=False)).benchmark(
    "deit_digits", BenchSettings(runs=2, warmup=0, threads=1, profile=False))
from torch.fx._symbolic_trace import _Patcher
logger = logging.getLogger("deit_demo")
print(json.dumps({"switch": sys.getswitchinterval() == switch, "fx": getattr(_Patcher, "confined_to_thread", False),
                  "none_modules": [k for k, v in sys.modules.items() if v is None and k in ("matplotlib", "bokeh")],
                  "env": {k: os.environ.get(k) for k in env_before} == env_before,
                  "logging": [logger.propagate, len(logger.handlers)]}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"switch": True, "fx": False, "none_modules": [], "env": True, "logging": [True, 0]}, found
