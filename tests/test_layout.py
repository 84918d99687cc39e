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


MAX_FUNCTION_LINES = 60
LONG_MARK = "# long-function:"  # followed by why the function stays long


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions whose body (docstring excluded) is longer than `limit` lines and that carry no
    `# long-function: <why>` comment."""
    source = path.read_text()
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            body = body[1:] or body
        length = node.end_lineno - body[0].lineno + 1  # type: ignore[operator]
        text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        if length > limit and LONG_MARK not in text:
            out.append(f"{node.name} ({length} lines)")
    return out


@pytest.mark.parametrize("package", PLAIN_PACKAGES)
def test_no_function_is_longer_than_60_lines_without_saying_why(package: str) -> None:
    offenders = {str(p.relative_to(ROOT)): found for p in _modules(package) if (found := long_functions(p))}
    assert offenders == {}


def test_the_length_check_counts_bodies_and_honours_the_mark(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    module = tmp_path / "m.py"
    module.write_text(f'def f():\n    """Doc."""\n{body}\n\ndef g():\n    {LONG_MARK} a table\n{body}\n')
    assert long_functions(module) == ["f (61 lines)"]
