"""Imports point one way (docs/architecture.md): layers <- models <- detection; data imports none of them;
engine, deploy and explain may import those but not the CLI; nothing below the CLI imports deploy or
explain; the CLI sits on top. And no import cycle between files, inside a package or across
packages. Walks every module's imports with ``ast`` (function-level imports included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kinetix"

# subpackage -> subpackages it must never import
_TOP = {"deploy", "explain", "cli"}  # only the CLI may import deploy / explain
FORBIDDEN = {
    "utils": {"layers", "models", "detection", "data", "engine", "config", *_TOP},
    "layers": {"models", "detection", "data", "engine", "config", *_TOP},
    "models": {"detection", "data", "engine", "config", *_TOP},
    "detection": {"engine", "config", *_TOP},
    "data": {"layers", "models", "detection", "engine", "config", *_TOP},
    "config": {"layers", "models", "detection", "data", "engine", *_TOP},
    "engine": _TOP,
    "deploy": {"explain", "cli"},
    "explain": {"cli"},
}


def _imported_subpackages(path: Path) -> set[tuple[str, int]]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1])  # the package holding this module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:  # from . import x
                    names = [".".join([*base, a.name]) for a in node.names]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kinetix" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if len(p.relative_to(ROOT).parts) > 1)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    sub = path.relative_to(ROOT).parts[0]
    bad = [(s, line) for s, line in _imported_subpackages(path) if s in FORBIDDEN.get(sub, set())]
    assert not bad, (
        f"{path.relative_to(ROOT.parent)} imports "
        + ", ".join(f"kinetix.{s} (line {line})" for s, line in sorted(bad))
        + f": kinetix.{sub} must not depend on these (docs/architecture.md)"
    )


def test_walker_detects_wrong_way_import(tmp_path, monkeypatch):
    # The checker itself must be able to fail: a fake data module importing models is caught.
    fake_root = tmp_path / "kinetix"
    (fake_root / "data").mkdir(parents=True)
    bad = fake_root / "data" / "bad.py"
    bad.write_text("from ..models import create_model\nimport kinetix.engine.x\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    found = {s for s, _ in _imported_subpackages(bad)}
    assert found == {"models", "engine"}


def test_no_torchvision_or_timm():
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            for m in mods:
                assert m.split(".")[0] not in {"torchvision", "timm", "mmcv", "detectron2"}, (
                    f"{path}: imports {m}, which kinetix does not depend on (its ops are pure PyTorch)"
                )


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root.parent).with_suffix("").parts)


def _file_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the files of ``root`` (package ``__init__`` files are
    re-export hubs and left out: ``from . import x`` points at ``x``'s file)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        if path.name == "__init__.py":
            continue
        pkg = mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1] if node.level else []
                m = ".".join([*base, node.module] if node.module else base)
                targets = [m] + [f"{m}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in files and files[t].name != "__init__.py" and t != mod:
                    deps.add(t)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_file_graph(ROOT))
    assert not cycles, "import cycles between files (docs/architecture.md): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_cycle_check_can_fail(tmp_path):
    # two files of one package importing each other (one inside a function), and a cross-package
    # cycle through a third file: both are found, a one-way chain is not
    root = tmp_path / "kinetix"
    for pkg in ("engine", "models"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("from .a import *\n")
    (root / "engine" / "a.py").write_text("from .b import f\n")
    (root / "engine" / "b.py").write_text("def f():\n    from . import a\n")
    (root / "engine" / "c.py").write_text("from kinetix.models.a import g\n")
    (root / "models" / "a.py").write_text("import kinetix.engine.c\n")
    (root / "models" / "b.py").write_text("from .a import g\n")
    assert sorted(_cycles(_file_graph(root))) == [
        ["kinetix.engine.a", "kinetix.engine.b"],
        ["kinetix.engine.c", "kinetix.models.a"],
    ]
