"""`trainflow`: runs, trials, leaderboard, lineage, cost, package verification, registry and
retention over an artifact root.

trainflow check --config FILE       the config and its data, checked as a run would, nothing written
trainflow runs                      recent runs: status (failed ones with step and error), duration, cost
trainflow trials RUN                a run's Optuna trials
trainflow leaderboard               packages ranked by test metric, per task and metric
trainflow lineage VERSION           dataset -> checkpoints -> (teacher -> student) -> ONNX -> INT8, re-hashed
trainflow verify PACKAGE            a package folder (or version) against its SHA256SUMS and the registry's record
trainflow register VERSION          adopt a package folder the registry never saw, as staging
trainflow cost RUN                  a run's cost per step
trainflow registry                  every version with its stage
trainflow promote VERSION           staging/archived -> production (gated)
trainflow rollback                  previous production version back to production
trainflow retention [--dry-run]     delete old staging versions and trial checkpoints (+ @checkpoint copies)
trainflow journal-repair J --from-byte N   move a corrupt Optuna journal record and those after it aside
trainflow predict PACKAGE [TEXT ...]       a verified package's predictions for texts or a file, as JSONL or CSV
trainflow serve PACKAGE | --model NAME     the package (or the registry's version of a stage) over HTTP

Every command takes --artifact-root (default `artifacts`). Errors print one line to stderr
and exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trainflow.core.config import METRIC_DIRECTIONS, RegistryConfig, RetentionConfig, load_config
from trainflow.core.errors import TrainflowError
from trainflow.core.layout import records_dir

app = typer.Typer(
    name="trainflow",
    help="Runs, trials, leaderboard, lineage, cost, verification, registry and retention of trainflow packages.",
    no_args_is_help=True,
    add_completion=False,
)

ArtifactRoot = Annotated[
    Path, typer.Option("--artifact-root", help="Folder holding the packages, _records/ and _registry/.")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name; needed only if ambiguous.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Run config YAML whose registry/retention sections apply.")
]
Limit = Annotated[int, typer.Option("--limit", min=1, help="At most this many rows (per group).")]
PublicKey = Annotated[
    Path | None, typer.Option("--public-key", help="PEM public key the package's model.sig must verify with.")
]


class CliFailure(Exception):
    """A command's failure, printed as one line."""


def _width(stream: Any) -> int | None:
    # Not a terminal and no usable $COLUMNS (logs, tests; some shells export it empty): wide, so
    # checksums and paths are not folded.
    return None if stream.isatty() or os.environ.get("COLUMNS", "").strip().isdigit() else 220


def _out() -> Console:
    return Console(width=_width(sys.stdout), highlight=False)


def _one_line(err: BaseException) -> str:
    lines = [line.strip().removeprefix("- ").strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    return f"{lines[0].rstrip(':')}: " + "; ".join(lines[1:])


def _table(title: str | None, cols: list[str], rows: list[tuple] | list[list]) -> Table:
    table = Table(title=escape(title) if title else None, title_justify="left")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        # Text cells: paths and versions are shown as they are, never read as rich markup.
        cells = [Text("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))) for v in r]
        table.add_row(*cells)
    return table


def _config_sections(config: Path | None) -> tuple[RegistryConfig, RetentionConfig]:
    if config is None:
        return RegistryConfig(), RetentionConfig()
    cfg = load_config(config)
    return cfg.registry, cfg.retention


# --- check -------------------------------------------------------------------------------------


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML to check (extends: applied).")],
) -> None:
    """Check a config and its data as a run would, in seconds, without creating a run: every
    config problem and every data problem (per kind, with row numbers) at once."""
    from trainflow.app.check import check_model, check_run

    err = Console(stderr=True, width=_width(sys.stderr), highlight=False)
    try:
        cfg = load_config(config)
        report = check_run(cfg)
        models = check_model(cfg)
    except TrainflowError as failure:  # every problem, one per line (the run would refuse the same)
        lines = str(failure).splitlines()
        err.print("\n".join([f"error: {lines[0]}", *lines[1:]]), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out = _out()
    for line in [*report.lines(), *(line for m in models for line in m.lines())]:
        out.print(line, markup=False, soft_wrap=True)
    out.print(f"OK: {config} is ready to run (python flows/train_flow.py --config config {config} run)", markup=False)


@app.command()
def dashboard(
    artifact_root: ArtifactRoot = Path("artifacts"),
    out: Annotated[Path, typer.Option("--out", help="Folder the static site is written to (replaced).")] = Path(
        "dashboard"
    ),
    serve: Annotated[bool, typer.Option("--serve", help="Serve it on 127.0.0.1 until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0: any free port).")] = 8765,
) -> None:
    """Write a static dashboard of the records (DuckDB-WASM in the browser: leaderboard, runs,
    Optuna history, INT8 recipes, registry, lineage) and optionally serve it."""
    from trainflow.app.dashboard import build_site, server

    site = build_site(artifact_root, out)
    console = _out()
    counts = ", ".join(f"{n} {kind}" for kind, n in site.files.items())
    console.print(f"dashboard written to {site.folder} (record files: {counts})", markup=False, soft_wrap=True)
    for line in site.notes:
        console.print(f"note: {line}", markup=False, soft_wrap=True)
    if not serve:
        console.print(f"view it with: trainflow dashboard --out {out} --serve (browsers do not run its WebAssembly"
                      " from file://)", markup=False, soft_wrap=True)  # fmt: skip
        return
    httpd = server(site.folder, port)
    host, bound = httpd.server_address[0], httpd.server_address[1]
    host = host.decode() if isinstance(host, bytes) else host
    console.print(f"serving http://{host}:{bound}/ (Ctrl-C stops)", markup=False)
    sys.stdout.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@app.command("check-pins")
def check_pins_command(
    requirements: Annotated[Path, typer.Option("--requirements", help="The pins (name==version lines).")] = Path(
        "requirements.txt"
    ),
    cuda: Annotated[bool, typer.Option("--cuda", help="Also require a CUDA build of torch (GPU images).")] = False,
) -> None:
    """Check that this Python runs exactly the pinned packages (the container build runs this):
    every pin installed at its version; a local build label such as +cu128 is shown, not refused."""
    from trainflow.core.pins import check_pins, read_pins, torch_cuda_build

    if not requirements.is_file():
        raise CliFailure(f"{requirements}: no such requirements file")
    try:
        pins = read_pins(requirements)
    except ValueError as err:
        raise CliFailure(str(err)) from None
    report = check_pins(pins)
    out = _out()
    for line in report.lines():
        out.print(line, markup=False, soft_wrap=True)
    if not report.ok:
        raise CliFailure(f"{len(report.missing) + len(report.wrong)} package(s) differ from {requirements}")
    if cuda and torch_cuda_build() is None:
        raise CliFailure("torch is a CPU build; this image needs the CUDA build of the pinned torch")
    out.print(f"OK: {len(pins)} packages match {requirements}", markup=False)


# --- runs, trials, leaderboard ---------------------------------------------------------------


@app.command()
def runs(artifact_root: ArtifactRoot = Path("artifacts"), limit: Limit = 20) -> None:
    """Recent runs from the Parquet `runs` records, newest first."""
    from trainflow.records.store import has_records, recent_runs

    if not has_records(artifact_root, "runs"):
        raise CliFailure(f"no run records under {records_dir(artifact_root, 'runs')}")
    cols = ["run_key", "model_name", "status", "step", "error", "started_at", "duration_s", "package_version", "cost"]
    rows = [
        (r.run_key, r.model_name, r.status, r.step, r.error, r.started_at,
         None if r.duration_s is None else round(r.duration_s, 1), r.package_version,
         None if r.cost is None else f"{r.cost:.4f} {r.cost_currency or ''}".strip())
        for r in recent_runs(artifact_root, limit)
    ]  # fmt: skip
    _out().print(_table(f"Runs in {artifact_root}", cols, rows))


@app.command()
def trials(run: Annotated[str, typer.Argument(help="Run key (Metaflow run id).")],
           artifact_root: ArtifactRoot = Path("artifacts"), limit: Limit = 100) -> None:  # fmt: skip
    """The Optuna trials of one run: parameters, metric, duration and, under deployment limits
    (hpo.constraints), each trial's INT8 latency, size and whether it was within them."""
    from trainflow.records.store import has_records, trials_of_run

    if not has_records(artifact_root, "trials"):
        raise CliFailure(f"no trial records under {records_dir(artifact_root, 'trials')}")
    found = trials_of_run(artifact_root, run, limit)
    if not found:
        raise CliFailure(f"no trials recorded for run {run!r}")
    cols = ["number", "state", "worker", "value", "params", "seconds"]
    rows: list[tuple[Any, ...]] = [(t.number, t.state, t.worker, t.value, t.params, t.seconds) for t in found]
    if any(t.latency_ms is not None for t in found):
        cols += ["latency_ms", "size_mb", "feasible"]
        rows = [(*row, t.latency_ms, t.size_mb, t.feasible) for row, t in zip(rows, found, strict=True)]
    _out().print(_table(f"Trials of run {run}", cols, rows))


@app.command()
def leaderboard(artifact_root: ArtifactRoot = Path("artifacts"), limit: Limit = 20) -> None:
    """Packages ranked by their test metric (FP32 ONNX), one table per task and metric."""
    from trainflow.records.store import has_records, package_scores

    if not has_records(artifact_root, "packages"):
        _out().print(f"(no package records under {records_dir(artifact_root, 'packages')})", markup=False)
        return
    # One table per task, label set, dataset version and metric: a 5-class news model and a binary
    # sentiment model are not ranked against each other.
    groups: dict[tuple[str, str, str, str], list[Any]] = {}
    for r in package_scores(artifact_root):
        groups.setdefault((r.task, r.labels, str(r.dataset_version), r.metric), []).append(r)
    cols = ["#", "model_name", "version", "test", "int8", "baseline", "val_metric", "n_trials", "created_at"]
    out = _out()
    for (task, labels, dataset, metric), members in sorted(groups.items()):
        higher = METRIC_DIRECTIONS.get(metric, "maximize") == "maximize"
        # Best first; ties: newest first; packages without the metric last.
        ranked = sorted(members, key=lambda r: str(r.created_at), reverse=True)
        ranked = sorted(ranked, key=lambda r: (r.test is None, -(r.test or 0) if higher else (r.test or 0)))[:limit]
        shown = ", ".join(json.loads(labels)) if labels != "?" else "labels not recorded"
        title = f"{task} [{shown}] · dataset {dataset} · test {metric} ({'higher' if higher else 'lower'} is better)"
        rows = [(i + 1, r.model_name, r.version, r.test, r.int8, r.baseline, r.val_metric, r.n_trials, r.created_at)
                for i, r in enumerate(ranked)]  # fmt: skip
        out.print(_table(title, cols, rows))


# --- lineage, verify, cost -------------------------------------------------------------------


@app.command()
def lineage(version: Annotated[str, typer.Argument(help="Package version.")],
            artifact_root: ArtifactRoot = Path("artifacts"), model: ModelOpt = None) -> None:  # fmt: skip
    """Lineage of a version: dataset -> checkpoints -> best model -> FP32 ONNX -> INT8.

    Prints each node's id, SHA-256 and parents, re-hashes every recorded file still present and
    exits 1 if one changed (a missing file is reported, not an error)."""
    from trainflow.release.lineage import check_lineage, load_lineage

    model_name = _resolve_any(artifact_root, version, model)
    nodes, package = load_lineage(artifact_root=artifact_root, model_name=model_name, version=version)
    checks = check_lineage(nodes=nodes, package=package)
    out = _out()
    order = ["dataset", "dataset_split", "trial_checkpoint", "trial_model", "refit_model", "student_checkpoint",
             "student_model", "best_model", "onnx_fp32",
             "onnx_int8"]  # fmt: skip
    chain = " → ".join(
        ", ".join(n.id for n in nodes if n.kind == kind) for kind in order if any(n.kind == kind for n in nodes)
    )
    out.print(f"[bold]{escape(model_name)} {escape(version)}[/bold]"
              + ("" if package else " (package folder gone: read from the Parquet lineage records)"))  # fmt: skip
    out.print(chain, soft_wrap=True, markup=False)
    # One block per node, one fact per line (never folded): id and kind, SHA-256, parents,
    # then each place the file was checked.
    status_style = {"ok": "green", "changed": "bold red", "missing": "yellow"}
    for n in nodes:
        out.print(f"[bold]{escape(n.id)}[/bold] ({n.kind})", soft_wrap=True)
        out.print(f"    sha256   {n.sha256}", soft_wrap=True, markup=False)
        parents = ", ".join(f"{p.id} ({p.sha256[:12]})" for p in n.parents) or "-"
        out.print(f"    parents  {parents}", soft_wrap=True, markup=False)
        for c in (c for c in checks if c.node.id == n.id):
            out.print(f"    [{status_style[c.status]}]{c.status:<8}[/] {escape(c.location)}", soft_wrap=True)
    changed = [c for c in checks if c.status == "changed"]
    if changed:
        raise CliFailure(
            f"lineage of {model_name} {version}: {len(changed)} file(s) changed since publishing: "
            + ", ".join(f"{c.node.id} ({c.location})" for c in changed)
        )


def _resolve_any(artifact_root: Path, version: str, model: str | None) -> str:
    """The model of a version on disk, or (when its folder is gone) in the lineage records."""
    from trainflow.core.errors import RegistryError
    from trainflow.records.store import has_records, lineage_owners
    from trainflow.release.registry import resolve_model

    try:
        return resolve_model(artifact_root=artifact_root, version=version, model_name=model)
    except RegistryError:
        if not has_records(artifact_root, "lineage"):
            raise
        owners = lineage_owners(artifact_root, version)
        if len(owners) != 1:
            raise
        return owners[0]


@app.command()
def verify(package: Annotated[str, typer.Argument(help="Package folder, or a version under --artifact-root.")],
           artifact_root: ArtifactRoot = Path("artifacts"), model: ModelOpt = None,
           public_key: PublicKey = None) -> None:  # fmt: skip
    """Check a package against its SHA256SUMS and the digests the registry recorded when it was
    published (a folder the registry never saw is reported as unregistered), and with --public-key
    its signature. A folder outside any registry is checked against its own SHA256SUMS."""
    from trainflow.release.package import verify_package
    from trainflow.release.registry import has_registry, require_registry, resolve_model
    from trainflow.release.registry import verify as verify_registered
    from trainflow.release.signing import key_path, signature_status, verify_signature

    key = None if public_key is None else key_path(str(public_key), "public key")
    if Path(package).is_dir() or "/" in package:
        folder = Path(os.path.abspath(package))  # as named: a symbolic link is not followed here
        root, model_name, version = folder.parent.parent, folder.parent.name, folder.name
    else:
        require_registry(artifact_root)
        root, version = artifact_root, package
        model_name = resolve_model(artifact_root=artifact_root, version=version, model_name=model)
        folder = root / model_name / version
    if has_registry(root):
        files = verify_registered(artifact_root=root, model_name=model_name, version=version, public_key=key)
        against = "SHA256SUMS and the registry's record"
    else:
        files = verify_package(folder)
        if key is not None:
            verify_signature(folder, key)
        against = "SHA256SUMS (not in a registry: no record to compare with)"
    signature = f"signature verified with {key}" if key else {
        "signed": "signed (pass --public-key to check the signature)", "unsigned": "unsigned"}[signature_status(folder)]  # fmt: skip
    _out().print(f"OK: {folder} ({len(files)} files match {against}; {signature})", markup=False, soft_wrap=True)


@app.command()
def cost(run: Annotated[str, typer.Argument(help="Run key (Metaflow run id).")],
         artifact_root: ArtifactRoot = Path("artifacts")) -> None:  # fmt: skip
    """A run's cost per step: tasks, task-hours and CPU/GPU/memory cost."""
    from trainflow.records.store import cost_by_step, has_records

    if not has_records(artifact_root, "costs"):
        raise CliFailure(f"no cost records under {records_dir(artifact_root, 'costs')}")
    steps = cost_by_step(artifact_root, run)
    if not steps:
        raise CliFailure(f"no cost records for run {run!r} (published without task timings, or unknown run)")
    # Costs to 4 decimals in the currency; cpus/gpus/memory_gb are what the step declared.
    cols = ["step", "tasks", "task_seconds", "cpus", "gpus", "memory_gb", "cpu", "gpu", "memory", "cost", "note"]
    shown = [
        (c.step, c.tasks, c.task_seconds, c.cpus, c.gpus, c.memory_gb,
         *(f"{v:.4f}" for v in (c.cpu, c.gpu, c.memory, c.cost)), "still running when priced" if c.running else "")
        for c in steps
    ]  # fmt: skip
    table = _table(f"Cost of run {run} ({steps[0].currency})", cols, shown)
    table.add_row("total", str(sum(c.tasks for c in steps)), f"{sum(c.task_seconds for c in steps):.1f}", "", "", "",
                  *(f"{sum(getattr(c, k) for c in steps):.4f}" for k in ("cpu", "gpu", "memory", "cost")), "",
                  style="bold")  # fmt: skip
    _out().print(table)


# --- registry and retention ------------------------------------------------------------------


@app.command("registry")
def registry_list(artifact_root: ArtifactRoot = Path("artifacts"),
                  metric: Annotated[str, typer.Option(help="Test metric to show.")] = "accuracy") -> None:  # fmt: skip
    """Every version with its stage (staging, production, archived, deleted)."""
    from trainflow.release.registry import list_versions

    versions = list_versions(artifact_root=artifact_root)
    if not versions:
        raise CliFailure(f"no packages under {artifact_root}")
    style = {
        "production": "bold green",
        "archived": "dim",
        "staging": "yellow",
        "deleted": "red",
        "unregistered": "red",
    }
    table = Table(title=escape(f"Registry of {artifact_root}"), title_justify="left")
    for c in ("model", "version", "stage", "created_at", f"test {metric} fp32", f"test {metric} int8", "on disk"):
        table.add_column(c, overflow="fold")
    for v in versions:
        fp32 = v.metrics.test_metric("fp32", metric) if v.metrics else None
        int8 = v.metrics.test_metric("int8", metric) if v.metrics else None
        table.add_row(
            escape(v.model_name), escape(v.version), f"[{style[v.stage]}]{v.stage}[/]", escape(v.created_at or ""),
            "" if fp32 is None else f"{fp32:.4f}", "" if int8 is None else f"{int8:.4f}", "yes" if v.present else "no",
        )  # fmt: skip
    _out().print(table)


@app.command()
def register(version: Annotated[str, typer.Argument(help="Package version (a folder under the model).")],
             artifact_root: ArtifactRoot = Path("artifacts"), model: ModelOpt = None) -> None:  # fmt: skip
    """Adopt a package folder the registry never saw (copied in by hand, published by an older
    trainflow) as staging, recording its files' digests as they are now."""
    from trainflow.release.registry import register as do_register
    from trainflow.release.registry import resolve_model

    model_name = resolve_model(artifact_root=artifact_root, version=version, model_name=model)
    _out().print(_event_line(do_register(artifact_root=artifact_root, model_name=model_name, version=version)),
                 markup=False, soft_wrap=True)  # fmt: skip


@app.command()
def promote(version: Annotated[str, typer.Argument(help="Package version.")],
            artifact_root: ArtifactRoot = Path("artifacts"), model: ModelOpt = None,
            config: ConfigOpt = None, public_key: PublicKey = None) -> None:  # fmt: skip
    """Make VERSION production; the current production version becomes archived.

    Refused if the package fails verification, its signature does not verify with --public-key
    (or the config's registry.public_key), or its FP32 or INT8 test metric is worse than
    production's by more than registry.max_regression."""
    from trainflow.release.registry import promote as do_promote
    from trainflow.release.signing import key_path

    policy, _ = _config_sections(config)
    if config is None:  # the metric the package's own run compared by (its task's default, unless set)
        policy = _package_registry_policy(artifact_root, version, model) or policy
    key = None if public_key is None else key_path(str(public_key), "public key")
    events = do_promote(artifact_root=artifact_root, version=version, model_name=model, policy=policy, public_key=key)
    for e in events:
        _out().print(_event_line(e), markup=False, soft_wrap=True)


def _package_registry_policy(artifact_root: Path, version: str, model: str | None) -> RegistryConfig | None:
    """The promotion policy with the metric of the candidate's own run config (a multi-label or
    regression package has no accuracy to compare); None when it cannot be read."""
    from trainflow.release.registry import metadata_or_none, resolve_model

    try:
        name = resolve_model(artifact_root=artifact_root, version=version, model_name=model)
    except TrainflowError:
        return None  # promote itself says what is wrong
    meta = metadata_or_none(artifact_root / name / version)
    metric = (meta.config.get("registry") or {}).get("metric") if meta is not None else None
    return RegistryConfig(metric=metric) if metric in METRIC_DIRECTIONS else None


def _event_line(e: Any) -> str:
    return f"{e.model_name} {e.version}: {e.from_stage} → {e.to_stage} ({e.action} by {e.who} at {e.at})"


@app.command()
def rollback(artifact_root: ArtifactRoot = Path("artifacts"), model: ModelOpt = None) -> None:
    """Make the previous production version production again; the current one becomes archived."""
    from trainflow.release.registry import rollback as do_rollback

    for e in do_rollback(artifact_root=artifact_root, model_name=model):
        _out().print(_event_line(e), markup=False, soft_wrap=True)


@app.command()
def retention(
    artifact_root: ArtifactRoot = Path("artifacts"),
    run_root: Annotated[Path, typer.Option("--run-root", help="Folder holding the runs' trial checkpoints.")] = Path(
        "runs"
    ),
    config: ConfigOpt = None,
    environment: Annotated[
        str | None, typer.Option("--environment", help="dev, staging or prod; default retention.environment.")
    ] = None,
    datastore_root: Annotated[
        Path | None,
        typer.Option(
            "--datastore-root",
            help="Local Metaflow datastore (.metaflow folder) whose @checkpoint copies are cleaned too;"
            " default $METAFLOW_DATASTORE_SYSROOT_LOCAL/.metaflow or ./.metaflow when it exists.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete old staging versions and trial checkpoints, also metaflow-checkpoint's copies in a
    local datastore (never production or archived versions).

    The rule is retention.rules[environment] of --config (or the defaults)."""
    from trainflow.release.retention import apply_retention

    if datastore_root is None:
        default = Path(os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or ".") / ".metaflow"
        datastore_root = default if default.is_dir() else None
    elif not datastore_root.is_dir():
        raise CliFailure(f"--datastore-root {datastore_root} is not a folder (expected a Metaflow .metaflow folder)")

    _, ret = _config_sections(config)
    env = environment or ret.environment
    if env not in ret.rules:
        raise CliFailure(f"--environment {env!r} has no rule; rules exist for {sorted(ret.rules)}")
    rule = ret.rules[env]  # type: ignore[index]
    plan = apply_retention(
        artifact_root=artifact_root, run_root=run_root, rule=rule, dry_run=dry_run, datastore_root=datastore_root
    )
    out = _out()
    verb = "would delete" if dry_run else "deleted"
    out.print(
        f"retention ({env}: keep_last_versions={rule.keep_last_versions},"
        f" keep_checkpoints_days={rule.keep_checkpoints_days}): {verb} {len(plan)} item(s),"
        f" {sum(d.bytes for d in plan) / 1e6:.1f} MB" + (" (dry run: nothing deleted)" if dry_run else ""),
        markup=False,
    )
    if plan:
        out.print(
            _table(
                None,
                ["kind", "path", "MB", "reason"],
                [(d.kind, d.path, f"{d.bytes / 1e6:.1f}", d.reason) for d in plan],
            )
        )


@app.command("journal-repair")
def journal_repair(
    journal: Annotated[Path, typer.Argument(help="The Optuna journal file (runs/<name>/<run>/optuna.journal).")],
    from_byte: Annotated[int, typer.Option("--from-byte", min=0, help="Offset of the corrupt record, from the error.")],
) -> None:
    """Move a journal's records from a byte offset to the end aside (into JOURNAL.corrupt-<time>,
    nothing deleted) so the study can be read again; their trials run again on resume."""
    from trainflow.search.journal import repair_journal

    if not journal.is_file():
        raise CliFailure(f"{journal}: no such journal file")
    aside = repair_journal(journal, from_byte)
    _out().print(f"moved {aside.stat().st_size} bytes from byte {from_byte} of {journal} to {aside}", markup=False)


def _package_folder(package: str, artifact_root: Path, model: str | None) -> Path:
    """A package folder, or a version under --artifact-root."""
    if Path(package).is_dir() or "/" in package:
        return Path(package)
    from trainflow.release.registry import require_registry, resolve_model

    require_registry(artifact_root)
    return artifact_root / resolve_model(artifact_root=artifact_root, version=package, model_name=model) / package


@app.command()
def predict(
    package: Annotated[str, typer.Argument(help="Package folder, or a version under --artifact-root.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts (a pair model: 'text<TAB>pair text').")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="CSV/TSV/JSONL/Parquet file of texts.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help=".jsonl or .csv; default JSONL on stdout.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per model call.")] = 32,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Default: the package's own.")] = None,
    pair_column: Annotated[str | None, typer.Option("--pair-column", help="Default: the package's own.")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Copied to each output row.")] = None,
    public_key: PublicKey = None,
    artifact_root: ArtifactRoot = Path("artifacts"),
    model: ModelOpt = None,
) -> None:
    """Verify a package, then predict texts given as arguments or read from --input (the text and
    pair columns named as in the package's config, or by --text-column / --pair-column); write each
    text with its label and probabilities (or label set, or value) as JSONL or CSV."""
    from rich.progress import Progress

    from trainflow.app.predict import PredictInputError, inputs_from_arguments, inputs_from_file, predict_all, records
    from trainflow.app.predict import write as write_predictions
    from trainflow.release.loader import load

    if bool(texts) == (input_file is not None):
        raise CliFailure("give texts as arguments or --input FILE (one of the two)")
    loaded = load(_package_folder(package, artifact_root, model), public_key=public_key)
    try:
        if input_file is not None:
            ids, inputs = inputs_from_file(loaded, input_file, text_column=text_column, pair_column=pair_column,
                                           id_column=id_column)  # fmt: skip
        else:
            ids, inputs = None, inputs_from_arguments(loaded, list(texts or []))
        if input_file is not None:
            with Progress(console=Console(stderr=True, width=_width(sys.stderr)), transient=True,
                          disable=not sys.stderr.isatty()) as bar:  # fmt: skip
                task = bar.add_task(f"predicting {len(inputs)} texts", total=len(inputs))
                predictions = predict_all(loaded, inputs, batch_size, lambda n: bar.advance(task, n))
        else:
            predictions = predict_all(loaded, inputs, batch_size, lambda n: None)
        text = write_predictions(records(loaded, inputs, predictions, ids), loaded.labels, output)
    except (PredictInputError, ValueError) as err:
        raise CliFailure(str(err)) from None
    if text is not None:
        sys.stdout.write(text)
    else:
        Console(stderr=True, width=_width(sys.stderr), highlight=False).print(
            f"wrote {len(predictions)} predictions to {output}", markup=False, soft_wrap=True)  # fmt: skip


@app.command()
def serve(
    package: Annotated[str | None, typer.Argument(help="Package folder (or use --model with --artifact-root).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Serve the registry's version of this model.")] = None,
    stage: Annotated[str, typer.Option("--stage", help="Registry stage followed with --model.")] = "production",
    artifact_root: ArtifactRoot = Path("artifacts"),
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8080,
    public_key: PublicKey = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Texts per model call; 1: batching off.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="Wait for company under load.")] = 5.0,
    max_texts: Annotated[int, typer.Option("--max-texts", min=1, help="Texts per request.")] = 256,
    max_text_chars: Annotated[int, typer.Option("--max-text-chars", min=1, help="Characters per text.")] = 20_000,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Request body size.")] = 1 << 20,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", min=0.05, help="Registry poll interval.")] = 1.0,
    onnx: Annotated[str, typer.Option("--onnx", help="The package's primary, int8 or fp32 model.")] = "primary",
) -> None:
    """Serve a package over HTTP (/v1/predict, the Open Inference Protocol v2 under /v2, /metrics)
    with micro-batching. The package is verified (SHA256SUMS, the registry's digests, the signature
    with --public-key) before the port opens. With --model the registry's --stage version is served
    and followed: a promote or rollback swaps it without failing a request. SIGTERM drains."""
    import logging as _logging

    from trainflow.app.serve import Limits, Source
    from trainflow.app.serve import serve as run_server

    if (package is None) == (model is None):
        raise CliFailure("give a package folder or --model NAME (with --artifact-root), one of the two")
    if onnx not in ("primary", "int8", "fp32"):
        raise CliFailure(f"--onnx {onnx!r}: use primary, int8 or fp32")
    if stage not in ("production", "staging", "archived"):
        raise CliFailure(f"--stage {stage!r}: use production, staging or archived")
    source = Source(package=None if package is None else Path(os.path.abspath(package)), artifact_root=artifact_root,
                    model_name=model, stage=stage, public_key=public_key, poll_seconds=poll_seconds, onnx=onnx)  # fmt: skip
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_texts=max_texts, max_text_chars=max_text_chars,
                    max_body_bytes=max_body_bytes)  # fmt: skip
    _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    err = Console(stderr=True, width=_width(sys.stderr), highlight=False)
    run_server(
        source, limits, host=host, port=port, on_ready=lambda line: err.print(line, markup=False, soft_wrap=True)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code."""
    err = Console(stderr=True, width=_width(sys.stderr), highlight=False)
    command = typer.main.get_command(app)
    try:
        result: Any = command.main(
            args=list(sys.argv[1:] if argv is None else argv), prog_name="trainflow", standalone_mode=False
        )
    except typer.TyperException as e:  # usage errors (exit 2): usage line and the problem
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"error: {e}", markup=False)
        return e.exit_code
    except typer.Abort:
        err.print("error: aborted")
        return 1
    except (CliFailure, TrainflowError) as e:
        err.print(f"error: {_one_line(e)}", soft_wrap=True, markup=False)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
