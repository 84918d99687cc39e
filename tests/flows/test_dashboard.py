"""`trainflow dashboard`: the static DuckDB-WASM site over the records of a real tiny run, served
by the CLI on 127.0.0.1 and opened by headless Chromium (as the card tests do). The numbers the
page's SQL shows are compared with what `trainflow leaderboard` and `trainflow runs` print."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.browser import rendered_page
from tests.tiny import ROOT
from trainflow.app.cli import main as cli
from trainflow.records.store import RunRow, write_rows

PANELS = ("leaderboard", "runs", "history", "pareto", "states", "recipes", "registry", "lineage")


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's tables are read cell by cell: wide enough that rich never folds a cell."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="module")
def records(tiny_flow_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run's artifact root (records, registry and package)."""
    root = tmp_path_factory.mktemp("dashboard") / "artifacts"
    shutil.copytree(tiny_flow_run.root / "artifacts", root)
    return root


def serve(artifact_root: Path, out: Path) -> Iterator[str]:
    """`trainflow dashboard --out OUT --serve --port 0`: yields the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainflow.app.cli", "dashboard", "--artifact-root", str(artifact_root), "--out", str(out),
         "--serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            if found:
                yield found.group(1)
                return
        pytest.fail(f"no URL from trainflow dashboard: {''.join(lines)}{proc.stderr.read()}")  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def page(chromium: str, url: str, tmp: Path) -> str:
    """The DOM once the page has drawn every panel (DuckDB-WASM queries, Vega charts)."""
    shots = os.environ.get("TRAINFLOW_DASHBOARD_SHOT")
    dom, console = rendered_page(chromium, url, tmp, screenshot=Path(shots) if shots else None)
    assert 'data-ready="1"' in dom, f"the page did not finish drawing: {console} {dom[:3000]}"
    return dom


def tables(dom: str) -> dict[str, list[list[str]]]:
    """caption -> body rows (cell texts) of every table the panels drew."""
    out = {}
    for caption, body in re.findall(r'<table data-panel-table="([^"]*)".*?<tbody>(.*?)</tbody>', dom, flags=re.S):
        rows = []
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S):
            rows.append(
                [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            )
        out[html.unescape(caption)] = rows
    return out


def panel(dom: str, name: str) -> str:
    found = re.search(rf'<section class="panel" id="p-{name}">(.*?)</section>', dom, flags=re.S)
    assert found, f"panel {name} missing"
    return found.group(1)


def cli_rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[list[str]]:
    """The body rows of the tables a CLI command prints (rich box drawing, one row per line)."""
    assert cli(list(args)) == 0
    rows = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return [r for r in rows if r and r[0] not in {"#", "run_key"}]


@pytest.fixture(scope="module")
def rendered(records: Path, chromium: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("dash-page")
    for url in serve(records, tmp / "site"):
        return page(chromium, url, tmp / "profile")
    raise AssertionError("unreachable")


def test_every_panel_renders_from_the_records(rendered: str) -> None:
    for name in PANELS:
        body = panel(rendered, name)
        assert 'class="error"' not in body, body[:2000]
        assert "<table" in body or 'class="note"' in body, f"panel {name} is blank"
    for name in PANELS:
        assert "<table" in panel(rendered, name), f"panel {name} drew no table from a published run"
    assert re.search(r'class="chart[^"]*".*?<svg', panel(rendered, "history"), flags=re.S), "the Optuna history chart"
    assert re.search(r'class="chart[^"]*".*?<svg', panel(rendered, "pareto"), flags=re.S), "metric against latency"


def test_the_pareto_panel_shows_each_trials_deployed_cost_as_recorded(rendered: str, records: Path) -> None:
    from trainflow.records.store import query

    (rows,) = [r for caption, r in tables(rendered).items() if caption.startswith("deployed cost of the trials of")]
    _, recorded = query(records, "SELECT number, state, latency_ms, feasible FROM trials ORDER BY number")
    assert [(int(r[0]), r[1], r[5]) for r in rows] == [(n, s, "yes") for n, s, _, f in recorded if f]
    assert all(float(r[3]) == pytest.approx(lat, abs=1e-3) for r, (_, _, lat, _) in zip(rows, recorded, strict=True))
    assert any(r[6] == "true" for r in rows), "the best trial is on the Pareto front"


def test_leaderboard_and_runs_equal_the_cli(rendered: str, records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = tables(rendered)
    board = [rows for caption, rows in shown.items() if " · dataset " in caption]
    assert len(board) == 1 and board[0]
    expected = cli_rows(capsys, "leaderboard", "--artifact-root", str(records))
    assert [[c.replace("–", "") for c in r] for r in board[0]] == expected

    runs = shown["runs"]
    printed = cli_rows(capsys, "runs", "--artifact-root", str(records))
    assert len(runs) == len(printed) >= 1
    for page_row, cli_row in zip(runs, printed):
        # page: run_key, model, status, step, error, started_at, duration_s, package_version, cost, currency
        # CLI:  the same, cost and currency in one cell ("0.0001 USD")
        assert page_row[:8] == [c or "–" for c in cli_row[:8]]
        assert float(page_row[8]) == pytest.approx(float(cli_row[8].split()[0]), abs=5e-5)
        assert cli_row[8].split()[1] == page_row[9]


def test_a_failed_run_an_older_and_a_newer_schema_file_still_render(
    records: Path, chromium: str, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(records, root)
    write_rows(root, "failed-run", [RunRow(
        run_key="failed-run", model_name="tiny-old", pathspec="TrainFlow/failed-run", status="failed",
        started_at="2026-12-01T10:00:00+00:00", finished_at=None, duration_s=12.5, cost=None, cost_currency=None,
        cost_cpu=None, cost_gpu=None, cost_memory=None, task_seconds=None, dataset_version=None, package_version=None,
        best_trial=None, config="{}", failed_step="train", error="TrainingResourceError: out of memory at micro-batch 1",
    )])  # fmt: skip
    packages = sorted((root / "_records" / "packages").glob("*.parquet"))[0]
    old = pq.read_table(packages).drop_columns(["test_metric", "int8_metric", "labels", "schema_version"])
    old = old.set_column(old.schema.get_field_index("version"), "version", [["0-old"] * old.num_rows])
    pq.write_table(old, root / "_records" / "packages" / "old.parquet")
    newer = pq.read_table(packages)
    newer = newer.set_column(newer.schema.get_field_index("schema_version"), "schema_version", [[99] * newer.num_rows])
    pq.write_table(newer, root / "_records" / "packages" / "zz-newer.parquet")

    for url in serve(root, tmp_path / "site"):
        dom = page(chromium, url, tmp_path / "profile")
    for name in PANELS:
        assert 'class="error"' not in panel(dom, name)
    shown = tables(dom)
    failed = [r for r in shown["runs"] if r[0] == "failed-run"]
    assert failed and failed[0][2:5] == ["failed", "train", "TrainingResourceError: out of memory at micro-batch 1"]
    assert any(" [labels not recorded] " in caption for caption in shown), "the older package, grouped apart"
    assert "1 package row(s) come from records of an older schema" in panel(dom, "leaderboard")
    assert "zz-newer.parquet left out: packages records of schema version 99" in dom


def test_no_records_and_no_browser_files_are_one_line_errors(
    records: Path, chromium: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(["dashboard", "--artifact-root", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: no records under {tmp_path / 'none' / '_records'}: publish a run first (make run)"
    )
    monkeypatch.setenv("TRAINFLOW_NODE_MODULES", str(tmp_path / "nm"))
    assert cli(["dashboard", "--artifact-root", str(records), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: {tmp_path / 'nm'}: the dashboard's browser files are not installed") and "\n" not in err
    )
    assert not (tmp_path / "s").exists()


def test_an_empty_record_folder_shows_notes_not_blank_panels(chromium: str, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "_records").mkdir(parents=True)
    for url in serve(root, tmp_path / "site"):
        dom = page(chromium, url, tmp_path / "profile")
    assert "No packages records in" in panel(dom, "leaderboard")
    assert "No runs records in" in panel(dom, "runs")
    for name in PANELS:
        assert 'class="note"' in panel(dom, name) and 'class="error"' not in panel(dom, name), name


def test_the_dashboard_javascript_passes_eslint() -> None:
    eslint = ROOT / "node_modules" / ".bin" / "eslint"
    assert eslint.is_file(), "make setup installs the npm dev dependencies (npm ci)"
    done = subprocess.run(
        [str(eslint), "trainflow/app/dashboard_site"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
