"""The Parquet records of runs, trials, packages, lineage, costs and registry events: one typed
row class per kind (its Arrow schema is derived from the class), the writer, and the named
DuckDB queries the CLI and the reports use.

Files live under `<artifact_root>/_records/<kind>/<key>.parquet`: one file per run (runs,
trials, costs), per package (packages, lineage) or per registry event, each written atomically,
so concurrent writers never append to the same file.

Schema versions: every row written now carries `schema_version` (SCHEMA_VERSION). Files written
before that column existed count as version 1 and are read (their missing columns are NULL);
a file with a newer version raises RecordsError naming it. File names never enter SQL text:
DuckDB reads the file list through its Python API.
"""

from __future__ import annotations

import json
import time
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

import pyarrow as pa
import pyarrow.parquet as pq

from trainflow.core.errors import RecordsError
from trainflow.core.io import atomic_write
from trainflow.core.layout import RUN_HEARTBEAT, records_dir

T = TypeVar("T")

SCHEMA_VERSION = 2
Kind = Literal["runs", "trials", "packages", "lineage", "costs", "registry"]


@dataclass_transform(frozen_default=True)
class _Row:
    """Base of the row classes: each subclass is a frozen dataclass of one record `kind`."""

    KIND: ClassVar[Kind]

    def __init_subclass__(cls, *, kind: Kind, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.KIND = kind
        dataclass(frozen=True)(cls)


class RunRow(_Row, kind="runs"):
    """One run: written by `start` before anything else (status running), replaced when a step
    fails (failed, with the step and the error line) or by publish (published)."""

    run_key: str
    model_name: str
    pathspec: str
    status: str
    started_at: str
    finished_at: str | None
    duration_s: float | None
    cost: float | None
    cost_currency: str | None
    cost_cpu: float | None
    cost_gpu: float | None
    cost_memory: float | None
    task_seconds: float | None
    dataset_version: str | None
    package_version: str | None
    best_trial: int | None
    config: str  # the resolved run config as JSON (URL passwords redacted)
    failed_step: str | None = None  # status failed: the step that failed
    error: str | None = None  # status failed: its error, one line
    run_dir: str | None = None  # where its tasks touch their heartbeat (records/runs.py)
    grace_s: float | None = None  # silent this long while running: shown interrupted
    resumed_as: str | None = None  # the Metaflow run id of its latest resume, if it was resumed


class TrialRow(_Row, kind="trials"):
    """One Optuna trial of a run (trainflow.search.study.TrialRecord, params and metrics as JSON)."""

    run_key: str
    model_name: str
    task: str
    number: int
    state: str
    worker: int | None
    params: str  # JSON
    value: float | None
    metrics: str  # JSON
    model_dir: str | None
    duration_s: float | None
    steps: int | None
    resumed_from_step: int | None
    latency_ms: float | None = None  # hpo.constraints: the deployed INT8 model's p50 (per architecture)
    size_mb: float | None = None
    feasible: bool | None = None  # within hpo.constraints; None when none were set


class PackageRow(_Row, kind="packages"):
    """One published package: its headline metrics, for the leaderboard."""

    model_name: str
    version: str
    path: str
    task: str
    dataset_version: str
    metric: str
    val_metric: float | None
    test_accuracy: float | None  # classification and ordinal tasks; None for multilabel and regression
    test_metric: float | None
    int8_metric: float | None
    int8_accuracy: float | None
    int8_accuracy_drop: float  # the drop of the INT8 gate's metric (accuracy; micro_f1; pearson)
    majority_baseline_accuracy: float | None
    parity_max_abs_diff: float
    n_trials: int
    git_commit: str
    pathspec: str
    created_at: str
    labels: str | None = None  # the task's label names, JSON list (the leaderboard groups by them)
    baseline_metric: float | None = None  # the trivial predictor's test value of `metric`


class LineageRow(_Row, kind="lineage"):
    """One node of a package's lineage (trainflow.release.lineage.Node)."""

    model_name: str
    version: str
    node_id: str
    kind: str
    path: str
    sha256: str
    package_file: str | None
    trial: int | None
    parents: str  # JSON list of {"id", "sha256"}


class CostRow(_Row, kind="costs"):
    """One task priced: wall time x the resources its step declared (trainflow/records/cost.py)."""

    run_key: str
    model_name: str
    currency: str
    step: str
    task_id: str
    started_at: str
    finished_at: str | None
    seconds: float
    running: bool
    cpus: int
    gpus: int
    gpu_type: str
    memory_gb: float
    cpu_cost: float
    gpu_cost: float
    memory_cost: float
    cost: float


class RegistryEvent(_Row, kind="registry"):
    """One registry change (trainflow/release/registry.py)."""

    seq: int
    model_name: str
    version: str
    action: str
    from_stage: str | None
    to_stage: str
    who: str
    at: str
    detail: str = ""
    manifest_sha256: str | None = None  # the package's SHA256SUMS digest when this happened


ROW_TYPES: dict[str, type[_Row]] = {
    t.KIND: t for t in (RunRow, TrialRow, PackageRow, LineageRow, CostRow, RegistryEvent)
}
KINDS: tuple[str, ...] = tuple(ROW_TYPES)

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(hint: Any) -> pa.DataType:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _arrow_type(args[0])
    return _ARROW[hint]


def arrow_schema(row_type: type) -> pa.Schema:
    """The Parquet schema of a row class: its fields in order, then `schema_version`."""
    hints = typing.get_type_hints(row_type)
    cols = [pa.field(f.name, _arrow_type(hints[f.name])) for f in fields(row_type)]
    return pa.schema([*cols, pa.field("schema_version", pa.int64())])


def _folder(artifact_root: Path, kind: str) -> Path:
    return records_dir(artifact_root, kind)


def write_rows(artifact_root: Path, key: str, rows: list[Any]) -> Path:
    """Write `rows` (all of one row class) to `_records/<kind>/<key>.parquet`, replacing the file."""
    if not rows:
        raise ValueError("write_rows needs at least one row")
    row_type = type(rows[0])
    if row_type not in ROW_TYPES.values() or any(type(r) is not row_type for r in rows):
        raise TypeError(f"rows must all be one of {sorted(t.__name__ for t in ROW_TYPES.values())}")
    schema = arrow_schema(row_type)
    table = pa.Table.from_pylist([{**asdict(r), "schema_version": SCHEMA_VERSION} for r in rows], schema=schema)
    target = _folder(artifact_root, row_type.KIND) / f"{key}.parquet"
    with atomic_write(target) as tmp:
        pq.write_table(table, tmp)
    return target


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def files_of(artifact_root: Path, kind: str) -> list[Path]:
    return sorted(_folder(artifact_root, kind).glob("*.parquet"))


def has_records(artifact_root: Path, kind: str) -> bool:
    return bool(files_of(artifact_root, kind))


def schema_version_of(table: pa.Table) -> int:
    """The newest schema version among `table`'s rows (1: written before the column existed)."""
    import pyarrow.compute as pc

    if "schema_version" not in table.column_names:
        return 1
    newest = pc.max(table["schema_version"]).as_py()
    return 1 if newest is None else int(newest)


def _check_versions(kind: str, files: list[Path]) -> None:
    for f in files:
        columns = ["schema_version"] if "schema_version" in pq.read_schema(f).names else []
        newest = schema_version_of(pq.read_table(f, columns=columns))
        if newest > SCHEMA_VERSION:
            raise RecordsError(
                f"{f}: {kind} records of schema version {newest}; this trainflow reads up to {SCHEMA_VERSION}"
            )


def connect(artifact_root: Path) -> Any:
    """A DuckDB connection in which each kind is a view (`runs`, `trials`, ...): every column of
    the current row class (NULL where an older file lacks it) plus any extra older column."""
    import duckdb

    con = duckdb.connect()
    for kind, row_type in ROW_TYPES.items():
        empty = pa.Table.from_pylist([], schema=arrow_schema(row_type))
        con.register(f"_empty_{kind}", empty)
        files = files_of(artifact_root, kind)
        if not files:
            con.execute(f"CREATE VIEW {kind} AS SELECT * FROM _empty_{kind}")
            continue
        _check_versions(kind, files)
        try:
            con.read_parquet([str(f) for f in files], union_by_name=True).create_view(f"_files_{kind}")
        except duckdb.Error as err:
            raise RecordsError(f"cannot read the {kind} records under {_folder(artifact_root, kind)}: {err}") from None
        con.execute(f"CREATE VIEW {kind} AS SELECT * FROM _empty_{kind} UNION ALL BY NAME SELECT * FROM _files_{kind}")
    return con


def query(artifact_root: Path, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run DuckDB SQL over the record views; (column names, rows)."""
    con = connect(artifact_root)
    try:
        cur = con.execute(sql, params or [])
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


# --- named queries ------------------------------------------------------------------------------

RECENT_RUNS = """
SELECT run_key, model_name, status, failed_step AS step, error, started_at, round(duration_s, 1) AS duration_s,
       package_version, round(cost, 4) AS cost, cost_currency, run_dir, grace_s, resumed_as
FROM runs ORDER BY started_at DESC NULLS LAST LIMIT ?
"""

TRIALS_OF_RUN = """
SELECT number, state, worker, round(value, 4) AS value, params, round(duration_s, 1) AS seconds,
       round(latency_ms, 2) AS latency_ms, round(size_mb, 1) AS size_mb, feasible
FROM trials WHERE run_key = ? ORDER BY number LIMIT ?
"""

# Records written before test_metric/int8_metric existed only have the accuracies.
PACKAGE_SCORES = """
SELECT task, coalesce(labels, '?') AS labels, dataset_version, metric, model_name, version,
       round(coalesce(test_metric, CASE WHEN metric = 'accuracy' THEN test_accuracy END), 4) AS test,
       round(coalesce(int8_metric, CASE WHEN metric = 'accuracy' THEN int8_accuracy END), 4) AS int8,
       round(coalesce(baseline_metric, CASE WHEN metric = 'accuracy' THEN majority_baseline_accuracy END), 4)
         AS baseline, round(val_metric, 4) AS val_metric, n_trials, created_at
FROM packages
"""

COST_BY_STEP = """
SELECT step, count(*) AS tasks, round(sum(seconds), 1) AS task_seconds, max(cpus) AS cpus, max(gpus) AS gpus,
       max(memory_gb) AS memory_gb, sum(cpu_cost) AS cpu, sum(gpu_cost) AS gpu, sum(memory_cost) AS memory,
       sum(cost) AS cost, bool_or(running) AS running, any_value(currency) AS currency
FROM costs WHERE run_key = ? GROUP BY step ORDER BY min(started_at)
"""

LINEAGE_NODES = """
SELECT model_name, version, node_id, kind, path, sha256, package_file, trial, parents FROM lineage
WHERE model_name = ? AND version = ?
"""

LINEAGE_OWNERS = "SELECT DISTINCT model_name FROM lineage WHERE version = ?"

REGISTRY_EVENTS = """
SELECT seq, model_name, version, action, from_stage, to_stage, who, "at", detail, manifest_sha256
FROM registry ORDER BY seq
"""


@dataclass(frozen=True)
class RecentRun:
    run_key: str
    model_name: str
    status: str
    step: str | None  # the step that failed
    error: str | None
    started_at: str
    duration_s: float | None
    package_version: str | None
    cost: float | None
    cost_currency: str | None
    run_dir: str | None = None
    grace_s: float | None = None
    resumed_as: str | None = None


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str
    worker: int | None
    value: float | None
    params: str  # JSON
    seconds: float | None
    latency_ms: float | None = None
    size_mb: float | None = None
    feasible: bool | None = None


@dataclass(frozen=True)
class PackageScore:
    task: str
    labels: str  # JSON list of the label names, or '?' for records written before they were kept
    dataset_version: str
    metric: str
    model_name: str
    version: str
    test: float | None
    int8: float | None
    baseline: float | None
    val_metric: float | None
    n_trials: int
    created_at: str


@dataclass(frozen=True)
class StepCost:
    step: str
    tasks: int
    task_seconds: float
    cpus: int
    gpus: int
    memory_gb: float
    cpu: float
    gpu: float
    memory: float
    cost: float
    running: bool
    currency: str


def query_as(row_type: type[T], artifact_root: Path, sql: str, params: list[Any] | None = None) -> list[T]:
    """`query`, each row as a `row_type` (a dataclass whose fields are the query's columns)."""
    cols, rows = query(artifact_root, sql, params)
    return [row_type(**dict(zip(cols, r))) for r in rows]


def shown_status(status: str, *, started_at: str | None, run_dir: str | None, grace_s: float | None,
                 now: float | None = None) -> str:  # fmt: skip
    """`interrupted` for a run recorded `running` that has shown no sign of life (its heartbeat, or
    its start) for longer than its grace period; the recorded status otherwise."""
    if status != "running" or grace_s is None:
        return status
    now = time.time() if now is None else now
    signs = []
    if started_at:
        signs.append(datetime.fromisoformat(started_at).timestamp())
    if run_dir:
        beat = Path(run_dir) / RUN_HEARTBEAT
        if beat.is_file():
            signs.append(beat.stat().st_mtime)
    return "interrupted" if signs and now - max(signs) > grace_s else status


def recent_runs(artifact_root: Path, limit: int) -> list[RecentRun]:
    """The newest runs; a `running` one whose tasks have been silent past its grace period is
    shown `interrupted` (trainflow/records/runs.py)."""
    return [
        replace(r, status=shown_status(r.status, started_at=r.started_at, run_dir=r.run_dir, grace_s=r.grace_s))
        for r in query_as(RecentRun, artifact_root, RECENT_RUNS, [limit])
    ]


def trials_of_run(artifact_root: Path, run_key: str, limit: int) -> list[TrialSummary]:
    return query_as(TrialSummary, artifact_root, TRIALS_OF_RUN, [run_key, limit])


def package_scores(artifact_root: Path) -> list[PackageScore]:
    return query_as(PackageScore, artifact_root, PACKAGE_SCORES)


def cost_by_step(artifact_root: Path, run_key: str) -> list[StepCost]:
    return query_as(StepCost, artifact_root, COST_BY_STEP, [run_key])


def lineage_rows(artifact_root: Path, model_name: str, version: str) -> list[LineageRow]:
    return query_as(LineageRow, artifact_root, LINEAGE_NODES, [model_name, version])


def lineage_owners(artifact_root: Path, version: str) -> list[str]:
    return [r[0] for r in query(artifact_root, LINEAGE_OWNERS, [version])[1]]


def registry_events(artifact_root: Path) -> list[RegistryEvent]:
    return query_as(RegistryEvent, artifact_root, REGISTRY_EVENTS)
