"""Typed Parquet records: schemas from the row classes, older and newer files, odd file names."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainflow.core.errors import RecordsError
from trainflow.core.layout import RECORDS_DIR as RECORDS
from trainflow.records.store import (
    SCHEMA_VERSION,
    RegistryEvent,
    RunRow,
    arrow_schema,
    recent_runs,
    registry_events,
    write_rows,
)


def _run(key: str, started: str, **over) -> RunRow:
    fields = dict(run_key=key, model_name="m", pathspec=f"TrainFlow/{key}", status="published", started_at=started,
                  finished_at=None, duration_s=12.34, cost=0.5, cost_currency="USD", cost_cpu=0.5, cost_gpu=0.0,
                  cost_memory=0.0, task_seconds=10.0, dataset_version="d-1", package_version="v", best_trial=0,
                  config="{}")  # fmt: skip
    return RunRow(**{**fields, **over})


def test_the_schema_follows_the_row_class() -> None:
    schema = arrow_schema(RunRow)
    assert schema.names[:3] == ["run_key", "model_name", "pathspec"] and schema.names[-1] == "schema_version"
    assert schema.field("duration_s").type == pa.float64() and schema.field("best_trial").type == pa.int64()


def test_records_of_the_old_schema_still_read(tmp_path: Path) -> None:
    """A runs file from before typed rows: no schema_version and fewer columns."""
    folder = tmp_path / RECORDS / "runs"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"run_key": "old", "started_at": "2026-01-01", "status": "published"}]),
                   folder / "old.parquet")  # fmt: skip
    write_rows(tmp_path, "new", [_run("new", "2026-02-01")])
    got = {r.run_key: r for r in recent_runs(tmp_path, 10)}
    assert got["old"].cost is None and got["new"].cost == 0.5


def test_records_of_a_newer_schema_fail_naming_the_version(tmp_path: Path) -> None:
    path = write_rows(tmp_path, "r", [_run("r", "2026-01-01")])
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                             pa.array([SCHEMA_VERSION + 1]))  # fmt: skip
    pq.write_table(table, path)
    with pytest.raises(RecordsError, match=rf"runs records of schema version {SCHEMA_VERSION + 1}"):
        recent_runs(tmp_path, 10)


def test_file_names_never_enter_the_sql(tmp_path: Path) -> None:
    write_rows(tmp_path, "o'brien\"; DROP", [_run("q", "2026-01-01")])
    assert [r.run_key for r in recent_runs(tmp_path, 10)] == ["q"]


def test_registry_events_come_back_typed_in_order(tmp_path: Path) -> None:
    for seq in (2, 1):
        write_rows(tmp_path, f"e{seq}", [RegistryEvent(seq, "m", "v", "publish", None, "staging", "me", "t")])
    assert [e.seq for e in registry_events(tmp_path)] == [1, 2]
    with pytest.raises(TypeError, match="rows must all be one of"):
        write_rows(tmp_path, "x", [object()])
