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


# --- the library's groups and its import graph -------------------------------------------------

GROUPS = ("core", "records", "tasks", "data", "training", "search", "convert", "release", "app")
# Modules outside the groups: the package itself and the consumer's entry point (the model card
# of every package shows `trainflow.package.load`). They may import any group.
FACADES = ("trainflow", "trainflow.package")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def trainflow_imports(path: Path, known: set[str]) -> set[str]:
    """The trainflow modules `path` imports, anywhere in the file (inside functions and under
    TYPE_CHECKING too): `from trainflow.a import b` counts as trainflow.a.b when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("trainflow")}
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("trainflow")
        ):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    paths = _modules("trainflow")
    known = {module_name(p) for p in paths}
    return {module_name(p): trainflow_imports(p, known) - {module_name(p)} for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def group_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in GROUPS else None


def test_no_import_cycle_in_the_library() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from trainflow.x import y\n")
    assert trainflow_imports(a, {"trainflow.x", "trainflow.x.y"}) == {"trainflow.x.y"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_in_a_group_and_no_group_imports_a_later_one() -> None:
    graph = import_graph()
    loose = sorted(m for m in graph if group_of(m) is None and m not in FACADES and m.split(".")[-1] not in GROUPS)
    assert loose == [], "every library module belongs to one of the groups"
    upward = sorted(
        f"{m} imports {dep}"
        for m, deps in graph.items()
        if (g := group_of(m)) is not None
        for dep in deps
        if (d := group_of(dep)) is not None and GROUPS.index(d) > GROUPS.index(g)
    )
    assert upward == []


def test_the_groups_are_the_library_folders() -> None:
    folders = sorted(p.name for p in (ROOT / "trainflow").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(GROUPS)


def test_checking_a_config_and_its_data_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from trainflow.app.check import check_run\n"
        "from trainflow.core.config import load_config\n"
        f"check_run(load_config({str(ROOT / 'config' / 'default.yaml')!r}))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
