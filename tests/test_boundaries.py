"""Imports point one way (DESIGN.md §3): layers <- models <- detection; data imports none of them;
engine may import all but the CLI; the CLI sits on top. Walks every module's imports with ``ast``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kinetix"

# subpackage -> subpackages it must never import
FORBIDDEN = {
    "utils": {"layers", "models", "detection", "data", "engine", "config", "cli"},
    "layers": {"models", "detection", "data", "engine", "config", "cli"},
    "models": {"detection", "data", "engine", "config", "cli"},
    "detection": {"engine", "config", "cli"},
    "data": {"layers", "models", "detection", "engine", "config", "cli"},
    "config": {"layers", "models", "detection", "data", "engine", "cli"},
    "engine": {"cli"},
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
        + f": kinetix.{sub} must not depend on these (DESIGN.md §3)"
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
                    f"{path}: imports {m}, which cannot work here (DESIGN.md §1)"
                )
