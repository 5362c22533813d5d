"""The house rules of ARCHITECTURE.md, checked on the source: no import cycles, no arrow running up.

Imports are read with `ast` (nothing is imported), including the ones inside functions: a lazy
import is still a dependency, it only moves the failure to call time. `if TYPE_CHECKING:` blocks
are left out (annotations only).
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maskcheck"

# ARCHITECTURE.md's layers, bottom first: a module may import its own layer and the ones below, never above.
LAYERS: list[set[str]] = [
    {"maskcheck", "errors", "limits", "fileio"},  # `maskcheck` itself: only __version__ (its exports load lazily)
    {"guard", "validate", "results", "config"},
    {"data"},
    {"models"},
    {"attacks"},  # also the inner attacks of adversarial training
    {"methods", "training", "checkpoint"},
    {"adaptive", "checks"},
    {"auditing"},
    {"report"},
    {"api", "testing", "controls", "zoo", "regress", "temperature", "sweep", "launch", "robustbench_models", "schema",
     "docs", "cli", "__main__"},
]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("maskcheck",) + path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The maskcheck modules that `module` imports anywhere in its file (TYPE_CHECKING blocks excepted)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else [])) if child.level else child.module or ""
                submodules = {f"{target}.{a.name}" for a in child.names} & known
                found.update(submodules or ({target} & known))  # `from . import plots` depends on plots only
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in known)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    names = _module_names()
    return {m: _imports(m, p, set(names)) for m, p in names.items()}


def _layer(module: str) -> int:
    short = module.removeprefix("maskcheck.").split(".")[0] if module != "maskcheck" else "maskcheck"
    hits = [i for i, layer in enumerate(LAYERS) if short in layer]
    assert hits, f"{module} is in no layer of tests/test_architecture.py::LAYERS; add it where ARCHITECTURE.md puts it"
    return hits[0]


def test_the_package_has_no_import_cycles() -> None:
    try:
        list(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{m} -> {d}" for m, deps in sorted(import_graph().items()) for d in sorted(deps) if _layer(d) > _layer(m)]
    assert upward == []


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path) -> None:
    """The rules above can fail: a lazy import is found, and a two-module cycle is reported."""
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("from .a import f\n")
    known = {"pkg.a", "pkg.b"}
    graph = {"pkg.a": _imports("pkg.a", tmp_path / "a.py", known), "pkg.b": _imports("pkg.b", tmp_path / "b.py", known)}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    with pytest.raises(CycleError):
        list(TopologicalSorter(graph).static_order())
