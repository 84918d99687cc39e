"""The CLI and lineage on a package made by the real pipeline (tiny model, two trials, one INT8
recipe): runs, trials, leaderboard, cost, lineage, verify, registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stages.export import export_and_check
from stages.prepare import prepare_run
from stages.publish import publish_run
from stages.quantize import quantize_model
from stages.select import select_best
from tests.registry_helpers import tamper
from tests.tiny import ROOT, tiny_config
from trainflow.app.cli import main as cli
from trainflow.core.config import parse_config_dict
from trainflow.data.dataset import load_split
from trainflow.records.cost import TaskTiming
from trainflow.records.store import query
from trainflow.release.lineage import check_lineage, load_lineage
from trainflow.search.worker import run_worker


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are parsed by column: a $COLUMNS from the calling shell would fold them."""
    monkeypatch.delenv("COLUMNS", raising=False)


@dataclass(frozen=True)
class Published:
    root: Path
    package: Path
    meta: dict
    run_dir: Path


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Published:
    tmp = tmp_path_factory.mktemp("cli")
    raw = tiny_config(tmp, tiny_model_dir)
    raw["hpo"].update(n_trials=2, n_workers=1, pruner="none")
    raw["quantize"].update(search=False, recipes=[{"name": "u8s8-minmax"}])
    cfg = parse_config_dict(raw)
    timings = []

    def timed(step: str, task: str, fn, **kwargs):  # the stage calls' real wall times stand in for tasks
        started = datetime.now(UTC)
        out = fn(**kwargs)
        timings.append(TaskTiming(step, task, started, datetime.now(UTC)))
        return out

    ctx = timed("start", "1", prepare_run, cfg=cfg, run_key="r1")
    timed("train", "2", run_worker, cfg=cfg, storage=ctx.storage, study_name=ctx.study_name, worker=0,
          train=load_split(ctx.snapshot, "train"), validation=load_split(ctx.snapshot, "validation"),
          work_dir=ctx.path, group="r1")  # fmt: skip
    best, records = timed("join", "3", select_best, cfg=cfg, ctx=ctx)
    exported = timed("export", "4", export_and_check, cfg=cfg, ctx=ctx, model_dir=best.model_dir)
    quant = timed("quantize", "5", quantize_model, cfg=cfg, ctx=ctx, exported=exported)
    timings.append(TaskTiming("publish", "6", datetime.now(UTC), None))
    package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                          pathspec="TrainFlow/r1/publish/6", version="v1", timings=timings)  # fmt: skip
    path = Path(package.path)
    return Published(path.parent.parent, path, json.loads((path / "metadata.json").read_text()), ctx.path)


def nodes_by_id(meta: dict) -> dict[str, dict]:
    return {n["id"]: n for n in meta["lineage"]["nodes"]}


def manifest(package: Path) -> dict[str, str]:
    return {line.split("  ")[1]: line.split("  ")[0] for line in (package / "SHA256SUMS").read_text().splitlines()}


def test_metadata_lineage_links_every_artifact_to_its_parents(published: Published) -> None:
    meta, nodes = published.meta, nodes_by_id(published.meta)
    dataset = nodes[f"dataset:{meta['dataset']['version']}"]
    assert dataset["sha256"] == meta["dataset"]["sha256"] == meta["lineage"]["dataset_sha256"]
    assert {i for i in nodes if i.startswith("trial-")} == {
        "trial-0/checkpoint", "trial-0/model", "trial-1/checkpoint", "trial-1/model",
    }  # fmt: skip
    best = meta["hpo"]["best_trial"]
    assert nodes["best-model"]["sha256"] == nodes[f"trial-{best}/model"]["sha256"]
    assert nodes["best-model"]["parents"] == [{"id": f"trial-{best}/model", "sha256": nodes["best-model"]["sha256"]}]
    sums = manifest(published.package)
    assert nodes["onnx-fp32"]["sha256"] == sums["model.onnx"]
    assert nodes["onnx-int8"]["sha256"] == sums["model_int8.onnx"]
    assert [p["id"] for p in nodes["onnx-int8"]["parents"]] == ["onnx-fp32", dataset["id"]]
    for node in nodes.values():  # each parent reference carries that parent's id and checksum
        for parent in node["parents"]:
            assert nodes[parent["id"]]["sha256"] == parent["sha256"], (node["id"], parent["id"])
    # The same lineage in the Parquet store.
    cols, rows = query(published.root, "SELECT node_id, sha256, parents FROM lineage WHERE version = 'v1'")
    assert {r[0]: (r[1], json.loads(r[2])) for r in rows} == {i: (n["sha256"], n["parents"]) for i, n in nodes.items()}


def test_cli_lineage_verifies_and_detects_a_changed_file(published: Published, capsys) -> None:
    args = ["--artifact-root", str(published.root)]
    assert cli(["lineage", "v1", *args]) == 0
    out = capsys.readouterr().out
    for node in published.meta["lineage"]["nodes"]:
        assert node["id"] in out and node["sha256"] in out
    assert " → onnx-fp32 → onnx-int8" in out and "changed" not in out

    nodes = nodes_by_id(published.meta)
    checkpoint = Path(nodes["trial-1/checkpoint"]["path"])
    original = checkpoint.read_bytes()
    try:
        tamper(checkpoint)
        assert cli(["lineage", "v1", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: lineage of tiny v1: 1 file(s) changed since publishing: trial-1/checkpoint")
        assert "\n" not in err
    finally:
        checkpoint.write_bytes(original)
    int8 = published.package / "model_int8.onnx"
    original = int8.read_bytes()
    try:
        tamper(int8)
        checks = check_lineage(nodes=load_lineage(artifact_root=published.root, model_name="tiny", version="v1")[0],
                               package=published.package)  # fmt: skip
        assert [(c.node.id, c.location) for c in checks if c.status == "changed"] == [("onnx-int8", str(int8))]
    finally:
        int8.write_bytes(original)
    # A deleted checkpoint (retention) is reported, not an error.
    moved = checkpoint.with_name("moved")
    checkpoint.rename(moved)
    try:
        assert cli(["lineage", "v1", *args]) == 0
        assert "missing" in capsys.readouterr().out
    finally:
        moved.rename(checkpoint)


def test_lineage_survives_the_package_folder(published: Published, capsys) -> None:
    away = published.root / ".away"
    published.package.rename(away)
    try:
        assert cli(["lineage", "v1", "--artifact-root", str(published.root)]) == 0
        out = capsys.readouterr().out
        assert "package folder gone" in out and nodes_by_id(published.meta)["onnx-int8"]["sha256"] in out
    finally:
        away.rename(published.package)
    assert cli(["lineage", "v9", "--artifact-root", str(published.root)]) == 1
    assert "no package version 'v9'" in capsys.readouterr().err


def test_cost_is_recorded_and_printed_per_step(published: Published, capsys) -> None:
    cost = published.meta["cost"]
    steps = [s["step"] for s in cost["by_step"]]
    assert steps == ["start", "train", "join", "export", "quantize", "publish"]
    assert cost["total"] == pytest.approx(sum(s["cost"] for s in cost["by_step"])) and cost["total"] > 0
    _, rows = query(published.root, "SELECT cost, cost_currency, task_seconds, finished_at FROM runs")
    assert rows[0][0] == pytest.approx(cost["total"]) and rows[0][1] == "USD" and rows[0][3]
    assert cli(["cost", "r1", "--artifact-root", str(published.root)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "│" in line]
    assert [line.split("│")[1].strip() for line in lines] == [*steps, "total"]
    assert f"{cost['total']:.4f}" in lines[-1]
    assert "still running when priced" in out  # the publish task priced itself
    assert cli(["cost", "nope", "--artifact-root", str(published.root)]) == 1
    assert "no cost records for run 'nope'" in capsys.readouterr().err


def test_runs_trials_leaderboard_verify_registry(published: Published, capsys) -> None:
    args = ["--artifact-root", str(published.root)]
    assert cli(["runs", *args]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "│ r1 " in line)
    assert "published" in row and "v1" in row and "USD" in row
    assert cli(["trials", "r1", *args]) == 0
    assert capsys.readouterr().out.count("COMPLETE") == 2
    assert cli(["leaderboard", *args]) == 0
    out = capsys.readouterr().out
    assert (
        "classification [rotten, fresh] · dataset rotten_tomatoes-" in out and "test accuracy (higher is better)" in out
    )
    assert "│ 1 " in out and " v1 " in out
    assert cli(["verify", "v1", *args]) == 0
    assert "files match SHA256SUMS" in capsys.readouterr().out
    assert cli(["registry", *args]) == 0
    assert "staging" in capsys.readouterr().out, "publish registers the version as staging"
    assert cli(["trials", "r404", *args]) == 1
    assert capsys.readouterr().err.strip() == "error: no trials recorded for run 'r404'"


def test_commands_on_an_empty_root_fail_with_one_line(tmp_path: Path, capsys) -> None:
    for command in (["runs"], ["cost", "r1"], ["registry"], ["lineage", "v1"], ["rollback"], ["promote", "v1"]):
        assert cli([*command, "--artifact-root", str(tmp_path)]) == 1, command
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (command, err)
    assert cli(["leaderboard", "--artifact-root", str(tmp_path)]) == 0
    assert cli([]) == 2 and "promote" in capsys.readouterr().out, "no command: help, as a usage error"


def test_shipped_config_drives_promote(published: Published, tmp_path: Path, capsys) -> None:
    root = tmp_path / "art"
    for folder in ("tiny", "_registry"):  # the package and the registry that vouches for it
        shutil.copytree(published.root / folder, root / folder)
    config = ROOT / "config" / "default.yaml"
    assert cli(["promote", "v1", "--artifact-root", str(root), "--config", str(config)]) == 0
    assert "tiny v1: staging → production" in capsys.readouterr().out
