"""`trainflow dashboard`: a static site over the Parquet records, queried in the browser by
DuckDB-WASM (no server-side database, nothing fetched from the internet when it is viewed).

The site is index.html + app.js (trainflow/app/dashboard_site/, each panel one SQL query), the
DuckDB-WASM and Vega-Lite files from `node_modules/` (pinned in package.json and
package-lock.json, installed by `make setup`: `npm ci` and `npm run bundle`), and copies of the
record files under `data/`, listed in `data/manifest.json` (a page cannot list folders). DuckDB-WASM
reads Parquet through an extension it downloads from extensions.duckdb.org on first use, which an
offline page cannot do, so each Parquet file also goes as an Arrow IPC stream of the same table
(Arrow is built into DuckDB-WASM); the page loads each file as a table and unions them by name in
SQL, as `trainflow.records.store.connect` does with the Parquet files. Two
derived tables are written beside them, both from what the artifact root already holds: `recipes`
(each package's INT8 search table from its metadata.json) and `trial_params` (one row per trial
parameter, from the trials records). Each kind also gets an empty Parquet file with the current
schema (its columns and DuckDB types in the manifest), so a view has every current column even
when all its files are older. Record files of a
newer schema than this trainflow reads are left out and named in a note on the page.

`serve()` serves the folder on 127.0.0.1: browsers do not start WebAssembly workers from file://.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainflow.core.config import METRIC_DIRECTIONS
from trainflow.core.errors import TrainflowError
from trainflow.core.layout import RECORDS_DIR as RECORDS
from trainflow.records.store import KINDS, ROW_TYPES, SCHEMA_VERSION, arrow_schema, files_of, schema_version_of

SITE = Path(__file__).with_name("dashboard_site")
REPO = Path(__file__).resolve().parents[2]  # the checkout (trainflow/app/dashboard.py)
# Files of the site taken from node_modules: (path under node_modules, name under vendor/).
VENDOR = (
    (".trainflow/duckdb.mjs", "duckdb.mjs"),  # the ESM bundle `npm run bundle` makes
    ("@duckdb/duckdb-wasm/dist/duckdb-eh.wasm", "duckdb-eh.wasm"),
    ("@duckdb/duckdb-wasm/dist/duckdb-browser-eh.worker.js", "duckdb-browser-eh.worker.js"),
    ("vega/build/vega.min.js", "vega.min.js"),
    ("vega-lite/build/vega-lite.min.js", "vega-lite.min.js"),
    ("vega-embed/build/vega-embed.min.js", "vega-embed.min.js"),
)
PRODUCERS = {
    "runs": "the flow's start step writes one, publish or a failed step updates it",
    "trials": "publish writes a run's trials",
    "packages": "publish writes one per package",
    "lineage": "publish writes a package's lineage",
    "costs": "publish prices a run's tasks",
    "registry": "publish and `trainflow promote/rollback` write registry events",
}
RECIPES_SCHEMA = pa.schema([
    ("model_name", pa.string()), ("version", pa.string()), ("position", pa.int64()), ("recipe", pa.string()),
    ("status", pa.string()), ("screen_accuracy", pa.float64()), ("accuracy", pa.float64()),
    ("accuracy_drop_points", pa.float64()), ("p50_ms", pa.float64()), ("fp32_p50_ms", pa.float64()),
    ("size_mb", pa.float64()), ("seconds", pa.float64()), ("schema_version", pa.int64()),
])  # fmt: skip
TRIAL_PARAMS_SCHEMA = pa.schema([
    ("run_key", pa.string()), ("number", pa.int64()), ("name", pa.string()), ("value", pa.float64()),
    ("schema_version", pa.int64()),
])  # fmt: skip


class DashboardError(TrainflowError):
    """The dashboard cannot be built or served (missing browser files, no records)."""


@dataclass(frozen=True)
class Site:
    folder: Path
    files: dict[str, int]  # kind -> record files copied
    notes: list[str]


def node_modules() -> Path:
    """Where the npm packages are: $TRAINFLOW_NODE_MODULES, else the checkout's node_modules/."""
    return Path(os.environ.get("TRAINFLOW_NODE_MODULES", REPO / "node_modules"))


def _vendor(out: Path) -> None:
    root = node_modules()
    absent = [src for src, _ in VENDOR if not (root / src).is_file()]
    if absent:
        raise DashboardError(
            f"{root}: the dashboard's browser files are not installed ({absent[0]} missing); run `make setup`"
            " (npm ci && npm run bundle) in the checkout, or set TRAINFLOW_NODE_MODULES"
        )
    (out / "vendor").mkdir(parents=True)
    for src, name in VENDOR:
        shutil.copyfile(root / src, out / "vendor" / name)


_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}


def _write_arrow(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _recipes(artifact_root: Path, packages: list[pa.Table]) -> list[dict]:
    """The INT8 search table of every package these packages records name."""
    from trainflow.release.metadata import read_metadata

    rows: list[dict] = []
    for table in packages:
        for pkg in table.select(["model_name", "version"]).to_pylist():
            folder = artifact_root / pkg["model_name"] / pkg["version"]
            try:
                search = read_metadata(folder).quantization.search
            except (OSError, ValueError, TrainflowError, AttributeError):
                continue  # a pruned or older package: the page says it has no table
            for i, r in enumerate(search):
                drop = r.accuracy_drop
                rows.append({"model_name": pkg["model_name"], "version": pkg["version"], "position": i,
                             "recipe": r.name, "status": r.status, "screen_accuracy": r.screen_accuracy,
                             "accuracy": r.accuracy, "accuracy_drop_points": None if drop is None else 100 * drop,
                             "p50_ms": r.p50_ms, "fp32_p50_ms": r.fp32_p50_ms,
                             "size_mb": None if r.size_bytes is None else r.size_bytes / 1e6,
                             "seconds": r.seconds, "schema_version": SCHEMA_VERSION})  # fmt: skip
    return rows


def _trial_params(trials: list[pa.Table]) -> list[dict]:
    """One row per numeric trial parameter; parameters sampled on a log scale (all positive,
    spanning at least a factor 10) as their natural log, so that a correlation reads them as searched."""
    rows: list[dict] = []
    for table in trials:
        for t in table.select(["run_key", "number", "params"]).to_pylist():
            for name, value in json.loads(t["params"] or "{}").items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rows.append({"run_key": t["run_key"], "number": t["number"], "name": name, "value": float(value),
                                 "schema_version": SCHEMA_VERSION})  # fmt: skip
    by_name: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_name.setdefault((r["run_key"], r["name"]), []).append(r)
    for group in by_name.values():
        values = [r["value"] for r in group]
        if min(values) > 0 and max(values) >= 10 * min(values):
            for r in group:
                r["value"] = math.log(r["value"])
    return rows


def build_site(artifact_root: Path, out: Path) -> Site:
    """Write the static site for the records under `artifact_root` into `out` (replaced)."""
    artifact_root = Path(artifact_root)
    if not (artifact_root / RECORDS).is_dir():
        raise DashboardError(f"no records under {artifact_root / RECORDS}: publish a run first (make run)")
    out = Path(out)
    staging = out.with_name(f".{out.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _vendor(staging)
    for name in ("index.html", "app.js"):
        shutil.copyfile(SITE / name, staging / name)
    data = staging / "data"
    notes: list[str] = []
    files: dict[str, list[str]] = {}
    schema: dict[str, list[list[str]]] = {}
    schemas = {kind: arrow_schema(row_type) for kind, row_type in ROW_TYPES.items()}
    schemas.update(recipes=RECIPES_SCHEMA, trial_params=TRIAL_PARAMS_SCHEMA)
    kept: dict[str, list[pa.Table]] = {}  # kind -> the tables of the files copied
    for kind in KINDS:
        files[kind], kept[kind] = [], []
        (data / kind).mkdir(parents=True)
        for i, f in enumerate(files_of(artifact_root, kind)):
            try:
                table = pq.read_table(f)
                version = schema_version_of(table)
            except (OSError, pa.ArrowException) as err:
                notes.append(f"{f} left out: not a readable Parquet file ({err})")
                continue
            if version > SCHEMA_VERSION:
                notes.append(f"{f} left out: {kind} records of schema version {version}; this trainflow reads up to"
                             f" {SCHEMA_VERSION}")  # fmt: skip
                continue
            rel = f"data/{kind}/{i:05d}"
            shutil.copyfile(f, staging / f"{rel}.parquet")
            _write_arrow(table, staging / f"{rel}.arrow")
            files[kind].append(f"{rel}.arrow")
            kept[kind].append(table)
    derived_rows = {"recipes": _recipes(artifact_root, kept["packages"]), "trial_params": _trial_params(kept["trials"])}
    for kind, rows in derived_rows.items():
        files[kind] = []
        if rows:
            (data / kind).mkdir(parents=True)
            rel = f"data/{kind}/00000"
            derived = pa.Table.from_pylist(rows, schema=schemas[kind])
            pq.write_table(derived, staging / f"{rel}.parquet")
            _write_arrow(derived, staging / f"{rel}.arrow")
            files[kind].append(f"{rel}.arrow")
    for kind, s in schemas.items():
        schema[kind] = [[f.name, _DUCKDB_TYPES[f.type]] for f in s]
    manifest = {"artifact_root": str(artifact_root.resolve()), "built_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
                "schema_version": SCHEMA_VERSION, "kinds": list(schemas), "files": files, "schema": schema,
                "notes": notes, "directions": dict(METRIC_DIRECTIONS), "producers": PRODUCERS}  # fmt: skip
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return Site(folder=out, files={k: len(v) for k, v in files.items()}, notes=notes)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript", ".parquet": "application/octet-stream"}  # fmt: skip

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows the URL, not every request


def server(folder: Path, port: int = 8765, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server of `folder` on host:port (port 0: any free port); call serve_forever()."""
    if not (Path(folder) / "index.html").is_file():
        raise DashboardError(f"{folder} holds no dashboard (index.html): build it with `trainflow dashboard --out`")
    try:
        return ThreadingHTTPServer((host, port), partial(_Handler, directory=str(folder)))
    except OSError as err:
        raise DashboardError(f"cannot serve on {host}:{port}: {err.strerror}") from None
