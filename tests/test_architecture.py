"""The house rules that a reader of the code relies on: no import circles, no private names
borrowed across modules, and docs/architecture.md names only files that exist.

Imports are read with ``ast`` (top-level and function-local alike), so nothing is imported here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("upperson", "analysis", "demo", "scripts")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`PACKAGES` (a package is its ``__init__``)."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The project module that ``name`` (a module or a name inside one) lives in."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Each module's imported project modules (only those named in its import statements, not their
    implicit parent packages), and every ``from M import _private`` of another module's name."""
    edges: dict[str, set[str]] = {}
    private = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                out |= {t for a in node.names if (t := _owner(a.name, mods))}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:
                    full = f"{source}.{a.name}"
                    target = full if full in mods else _owner(source, mods)
                    if target:
                        out.add(target)
                        if a.name.startswith("_") and not a.name.startswith("__") and target != mod:
                            private.append((mod, source, a.name))
        out.discard(mod)
        edges[mod] = out
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(project_modules())


def test_the_checker_sees_a_circle_through_a_function_local_import_and_a_private_name(tmp_path):
    """The checker itself: a circle closed only inside a function is found, a parent package is not an
    edge, and a private name taken from another module is reported."""
    pkg = tmp_path / "upperson"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("from upperson.model.b import f\n")
    (pkg / "model" / "b.py").write_text("def f():\n    from upperson.model import a\n")
    (pkg / "c.py").write_text("from upperson.model.b import _hidden\nimport upperson.model.a\n")
    edges, private = import_graph(project_modules(tmp_path))
    assert cycles(edges) == [["upperson.model.a", "upperson.model.b"]]
    assert "upperson.model" not in edges["upperson.c"]  # the implicit parent package is no edge
    assert private == [("upperson.c", "upperson.model.b", "_hidden")]


def test_no_import_circles(graph):
    edges, _ = graph
    found = cycles(edges)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_names_imported_from_another_module(graph):
    _, private = graph
    assert not private, "private imports: " + "; ".join(f"{m} imports {n} from {s}" for m, s, n in private)


def test_the_model_imports_nothing_above_it(graph):
    """``upperson.model`` rests on config, io, the PETL layers and the asset checks only."""
    edges, _ = graph
    allowed = ("upperson.model", "upperson.petl", "upperson.config", "upperson.io", "upperson.assets")
    above = sorted({(m, t) for m, ts in edges.items() if m.startswith("upperson.model") for t in ts
                    if not t.startswith(allowed)})
    assert not above, f"the model imports upward: {above}"


def test_every_path_named_in_the_architecture_doc_exists():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    # a path of the repository: under one of its folders (bare names such as `config.yaml` are a run's files)
    top = "|".join(("upperson", "analysis", "demo", "scripts", "tests", "docs", "assets"))
    paths = {p.rstrip("/") for p in re.findall(rf"`((?:{top})/[\w./-]*)`", text)}
    paths |= set(re.findall(r"\]\(([\w./-]+\.md)\)", text))  # the links to other docs, relative to docs/
    assert paths, "docs/architecture.md names no files"
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not (ROOT / "docs" / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
