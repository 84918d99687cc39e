"""Parquet records of runs, trials and packages under `<artifact_root>/_records/`, and DuckDB
queries over them.

One file per run (trials, runs, costs), per package (packages, lineage) or per registry event
(registry), written atomically, so concurrent writers never append to the same file:
`_records/<kind>/<key>.parquet`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

RECORDS = "_records"
KINDS = ("runs", "trials", "packages", "lineage", "costs", "registry")


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v


def write_records(artifact_root: Path, kind: str, key: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows (dict/list values become JSON strings) to `_records/<kind>/<key>.parquet`."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; one of {KINDS}")
    folder = artifact_root / RECORDS / kind
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.parquet"
    tmp = folder / f".{key}.parquet.tmp"
    table = pa.Table.from_pylist([{k: _cell(v) for k, v in r.items()} for r in rows])
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return target


def query(artifact_root: Path, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run DuckDB SQL in which each kind with records (`runs`, `trials`, `packages`, `lineage`,
    `costs`, `registry`) is a view over the Parquet store."""
    import duckdb

    con = duckdb.connect()
    for kind in KINDS:
        files = sorted(str(f) for f in (artifact_root / RECORDS / kind).glob("*.parquet"))
        if files:
            con.execute(f"CREATE VIEW {kind} AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
    cur = con.execute(sql, params or [])
    return [d[0] for d in cur.description], cur.fetchall()


LEADERBOARD_SQL = """
SELECT model_name, version, task, dataset_version, round(test_accuracy, 4) AS test_acc,
       round(int8_accuracy, 4) AS int8_acc, round(majority_baseline_accuracy, 4) AS baseline_acc,
       round(val_metric, 4) AS val_metric, metric, n_trials, created_at
FROM packages
ORDER BY task, test_accuracy DESC, created_at DESC
LIMIT ?
"""


def leaderboard(artifact_root: Path, limit: int = 20) -> tuple[list[str], list[tuple]]:
    if not any((artifact_root / RECORDS / "packages").glob("*.parquet")):
        return [], []
    return query(artifact_root, LEADERBOARD_SQL, [limit])


def format_table(cols: list[str], rows: list[tuple]) -> str:
    if not cols:
        return "(no records)"
    cells = [[str(c) for c in cols]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def has_records(artifact_root: Path, kind: str) -> bool:
    return any((artifact_root / RECORDS / kind).glob("*.parquet"))
