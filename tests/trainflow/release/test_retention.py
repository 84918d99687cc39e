"""Retention on real packages, checkpoint folders and metaflow-checkpoint's copies in a real
run's datastore: what goes, what never goes, dry runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.registry_helpers import make_package, package_sources
from trainflow.app.cli import main as cli
from trainflow.core.config import RegistryConfig, RetentionRule
from trainflow.release.package import verify_package
from trainflow.release.registry import list_versions, promote, registry_events
from trainflow.release.retention import apply_retention

POLICY = RegistryConfig(max_regression=1.0)


@pytest.fixture(autouse=True)
def _no_default_datastore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default datastore is $METAFLOW_DATASTORE_SYSROOT_LOCAL/.metaflow: none here."""
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))


@pytest.fixture
def src(tmp_path: Path, tiny_onnx: Path) -> Path:
    return package_sources(tmp_path, tiny_onnx)


def _versions(root: Path, src: Path, n: int) -> list[str]:
    names = [f"v{i}" for i in range(n)]
    for i, v in enumerate(names):
        make_package(root, src, v, created_at=f"2026-01-{i + 1:02d}T00:00:00+00:00")
    return names


def _checkpoint(run_root: Path, run: str, trial: int, age_days: float) -> Path:
    trial_dir = run_root / "tiny" / run / "trials" / f"trial-{trial:04d}"
    for sub in ("checkpoint", "best"):
        (trial_dir / sub).mkdir(parents=True)
        (trial_dir / sub / "model.safetensors").write_bytes(os.urandom(2048))
    stamp = time.time() - age_days * 86400
    for p in [*(trial_dir / "checkpoint").iterdir(), trial_dir / "checkpoint"]:
        os.utime(p, (stamp, stamp))
    return trial_dir


def stages_of(root: Path) -> dict[str, str]:
    return {v.version: v.stage for v in list_versions(artifact_root=root)}


def test_old_staging_versions_go_protected_versions_stay(tmp_path: Path, src: Path) -> None:
    root, run_root = tmp_path / "art", tmp_path / "runs"
    _versions(root, src, 6)
    promote(artifact_root=root, version="v0", policy=POLICY)
    promote(artifact_root=root, version="v1", policy=POLICY)  # v0 archived, v1 production
    plan = apply_retention(artifact_root=root, run_root=run_root, dry_run=False,
                           rule=RetentionRule(keep_last_versions=2, keep_checkpoints_days=7))  # fmt: skip
    assert sorted(d.version for d in plan) == ["v2", "v3"], "the two newest staging versions (v4, v5) stay"
    assert stages_of(root) == {"v0": "archived", "v1": "production", "v2": "deleted", "v3": "deleted",
                               "v4": "staging", "v5": "staging"}  # fmt: skip
    assert sorted(p.name for p in (root / "m").iterdir()) == ["v0", "v1", "v4", "v5"], "no .deleting-* left"
    deleted = [e for e in registry_events(artifact_root=root) if e.to_stage == "deleted"]
    assert [(e.version, e.from_stage, e.action) for e in deleted] == [
        ("v2", "staging", "retention"),
        ("v3", "staging", "retention"),
    ]


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_retention_never_deletes_production_or_archived(tmp_path: Path, src: Path, keep: int) -> None:
    root, run_root = tmp_path / "art", tmp_path / "runs"
    names = _versions(root, src, 5)
    # Oldest and middle versions protected: v0 archived twice over, v2 production.
    for v in ("v0", "v3", "v0", "v2"):
        promote(artifact_root=root, version=v, policy=POLICY)
    rule = RetentionRule(keep_last_versions=keep, keep_checkpoints_days=1)
    apply_retention(artifact_root=root, run_root=run_root, rule=rule, dry_run=False)
    apply_retention(artifact_root=root, run_root=run_root, rule=rule, dry_run=False)  # idempotent
    final = stages_of(root)
    protected = {v for v, s in final.items() if s in ("production", "archived")}
    assert protected == {"v0", "v2", "v3"}
    for v in protected:
        verify_package(root / "m" / v)
    staging_left = sorted(v for v in names if final[v] == "staging")
    assert staging_left == {0: [], 1: ["v4"], 3: ["v1", "v4"]}[keep], "the newest staging versions stay"
    assert all((root / "m" / v).is_dir() == (final[v] != "deleted") for v in names)


def test_dry_run_lists_and_deletes_nothing(tmp_path: Path, src: Path, capsys) -> None:
    root, run_root = tmp_path / "art", tmp_path / "runs"
    _versions(root, src, 4)
    old = _checkpoint(run_root, "r1", 0, age_days=10)
    new = _checkpoint(run_root, "r2", 0, age_days=1)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    args = ["--artifact-root", str(root), "--run-root", str(run_root)]
    assert cli(["retention", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "would delete 2 item(s)" in out and "nothing deleted" in out
    assert str(root / "m" / "v0") in out and str(old / "checkpoint") in out
    assert str(new / "checkpoint") not in out
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert [e.action for e in registry_events(artifact_root=root)] == ["publish"] * 4

    assert cli(["retention", *args]) == 0  # dev rule: keep 3 versions, checkpoints 7 days
    assert "deleted 2 item(s)" in capsys.readouterr().out
    assert stages_of(root) == {"v0": "deleted", "v1": "staging", "v2": "staging", "v3": "staging"}
    assert not (old / "checkpoint").exists() and (old / "best").is_dir(), "only the resumable state goes"
    assert (new / "checkpoint").is_dir()
    assert cli(["retention", "--environment", "qa", *args]) == 1
    assert "has no rule" in capsys.readouterr().err


def test_environment_rules_come_from_the_config(tmp_path: Path, src: Path, tiny_cfg: dict, capsys) -> None:
    from tests.tiny import write_config

    root, run_root = tmp_path / "art", tmp_path / "runs"
    _versions(root, src, 4)
    tiny_cfg["retention"] = {
        "environment": "prod",
        "rules": {"prod": {"keep_last_versions": 1, "keep_checkpoints_days": 30}},
    }
    cfg = write_config(tmp_path / "cfg.yaml", tiny_cfg)
    args = ["--artifact-root", str(root), "--run-root", str(run_root), "--config", str(cfg)]
    assert cli(["retention", *args]) == 0
    assert "retention (prod: keep_last_versions=1" in capsys.readouterr().out
    assert stages_of(root) == {"v0": "deleted", "v1": "deleted", "v2": "deleted", "v3": "staging"}


def _records_pointing_to(store: Path, key: str) -> list[Path]:
    found = []
    for record in (store / "mf.checkpoints" / "checkpoints").glob("*metadata/**/*"):
        if record.is_file() and json.loads(record.read_text()).get("key") == key:
            found.append(record)
    return found


@pytest.mark.integration
def test_old_checkpoint_copies_in_the_datastore_go_with_their_records(tmp_path: Path, tiny_flow_run, capsys) -> None:
    """The copies `@checkpoint` saved in the shared tiny run's datastore (copied here, one worker's
    made old): the old copy and every record pointing to it (its `latest` pointers included) go;
    the other worker's copy and records stay."""
    store = tmp_path / "ds" / ".metaflow"
    shutil.copytree(tiny_flow_run.root / ".metaflow" / "mf.checkpoints", store / "mf.checkpoints")
    copies = sorted((store / "mf.checkpoints" / "checkpoints" / "artifacts").rglob("*.mfchckpt.*"))
    copies = [c for c in copies if ".mfchckpt." not in c.parent.name]
    assert len(copies) == 2, "one checkpoint copy per foreach worker"
    old, new = copies
    stamp = time.time() - 10 * 86400
    for p in [old, *old.rglob("*")]:
        os.utime(p, (stamp, stamp))
    old_key, new_key = (c.relative_to(store).as_posix() for c in (old, new))
    assert {r.name for r in _records_pointing_to(store, old_key)} >= {"latest"}, "records point to the copy"
    new_records = _records_pointing_to(store, new_key)

    root, run_root = tmp_path / "art", tmp_path / "runs"
    args = ["--artifact-root", str(root), "--run-root", str(run_root), "--datastore-root", str(store)]
    before = sorted(str(p) for p in store.rglob("*"))
    assert cli(["retention", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 item(s)" in out and "datastore-checkpoint" in out and old.name in out
    assert sorted(str(p) for p in store.rglob("*")) == before

    assert cli(["retention", *args]) == 0  # dev rule: checkpoints older than 7 days go
    assert "deleted 1 item(s)" in capsys.readouterr().out
    assert not old.exists() and not _records_pointing_to(store, old_key)
    assert not [p for p in store.rglob(".deleting-*")]
    assert new.is_dir() and _records_pointing_to(store, new_key) == new_records
    assert cli(["retention", "--datastore-root", str(tmp_path / "nowhere"), *args[:4]]) == 1
    assert "is not a folder" in capsys.readouterr().err
