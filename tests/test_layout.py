"""The layout the README promises: the library and the stages never import metaflow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.tiny import ROOT

PLAIN_PACKAGES = ("trainflow", "stages")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def metaflow_imports(path: Path) -> list[str]:
    """`import metaflow...` / `from metaflow... import` statements anywhere in the file (also
    inside functions), as 'line N: module'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [
            f"line {node.lineno}: {n}" for n in names if n == "metaflow" or n.startswith(("metaflow.", "metaflow_"))
        ]
    return found


@pytest.mark.parametrize("package", PLAIN_PACKAGES)
def test_no_module_outside_flows_imports_metaflow(package: str) -> None:
    modules = _modules(package)
    assert modules, f"{package}/ has no modules"
    offenders = {str(p.relative_to(ROOT)): found for p in modules if (found := metaflow_imports(p))}
    assert offenders == {}


def test_the_scan_finds_a_metaflow_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from metaflow import current\n    import metaflow_extensions.x\n")
    assert metaflow_imports(module) == ["line 4: metaflow", "line 5: metaflow_extensions.x"]
