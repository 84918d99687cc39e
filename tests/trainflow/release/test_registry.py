"""The registry on real packages: stages, gates, rollback, events, and concurrent promotes."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

from tests.registry_helpers import make_package, package_sources, sample_metadata, tamper
from trainflow.app.cli import main as cli
from trainflow.core.config import RegistryConfig
from trainflow.core.errors import PackageVerificationError, RegistryError
from trainflow.core.layout import REGISTRY_DIR
from trainflow.core.layout import REGISTRY_STATE as STATE_FILE
from trainflow.release.publish import publish_package
from trainflow.release.registry import (
    list_versions,
    promote,
    register,
    registry_events,
    rollback,
)

POLICY = RegistryConfig(max_regression=0.01)


@pytest.fixture
def src(tmp_path: Path, tiny_onnx: Path) -> Path:
    return package_sources(tmp_path, tiny_onnx)


def stages_of(root: Path) -> dict[str, str]:
    return {v.version: v.stage for v in list_versions(artifact_root=root)}


def test_promote_archive_and_rollback_with_events(tmp_path: Path, src: Path, monkeypatch) -> None:
    monkeypatch.setenv("METAFLOW_USER", "alice")
    root = tmp_path / "art"
    for i, v in enumerate(["v1", "v2", "v3"]):
        make_package(root, src, v, accuracy=0.80 + i * 0.01, created_at=f"2026-01-0{i + 1}T00:00:00+00:00")
    assert stages_of(root) == {"v1": "staging", "v2": "staging", "v3": "staging"}

    promote(artifact_root=root, version="v1", policy=POLICY)
    promote(artifact_root=root, version="v2", policy=POLICY)
    promote(artifact_root=root, version="v3", policy=POLICY)
    assert stages_of(root) == {"v1": "archived", "v2": "archived", "v3": "production"}

    events = rollback(artifact_root=root)
    assert [(e.version, e.from_stage, e.to_stage) for e in events] == [
        ("v3", "production", "archived"),
        ("v2", "archived", "production"),
    ]
    assert stages_of(root) == {"v1": "archived", "v2": "production", "v3": "archived"}
    rollback(artifact_root=root)
    assert stages_of(root) == {"v1": "production", "v2": "archived", "v3": "archived"}
    with pytest.raises(RegistryError, match="no previous production version"):
        rollback(artifact_root=root)

    recorded = registry_events(artifact_root=root)
    assert [e.seq for e in recorded] == list(range(1, len(recorded) + 1))
    assert {e.who for e in recorded} == {"alice"}
    assert [(e.action, e.version, e.from_stage, e.to_stage) for e in recorded] == [
        ("publish", "v1", None, "staging"),
        ("publish", "v2", None, "staging"),
        ("publish", "v3", None, "staging"),
        ("promote", "v1", "staging", "production"),
        ("promote", "v1", "production", "archived"),
        ("promote", "v2", "staging", "production"),
        ("promote", "v2", "production", "archived"),
        ("promote", "v3", "staging", "production"),
        ("rollback", "v3", "production", "archived"),
        ("rollback", "v2", "archived", "production"),
        ("rollback", "v2", "production", "archived"),
        ("rollback", "v1", "archived", "production"),
    ]
    assert all(e.at for e in recorded)
    # The state file is the events replayed.
    state = json.loads((root / REGISTRY_DIR / STATE_FILE).read_text())
    assert state["models"]["m"]["production_history"] == ["v1"]
    assert {v: s["stage"] for v, s in state["models"]["m"]["versions"].items()} == stages_of(root)


def test_a_package_the_registry_never_saw_is_adopted_only_by_register(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    make_package(root, src, "old", registered=False)
    assert stages_of(root) == {"old": "unregistered"}
    with pytest.raises(RegistryError, match=r"no registry at .* \(is --artifact-root right\?\)"):
        promote(artifact_root=root, version="old", policy=POLICY)  # and nothing is created there
    assert not (root / REGISTRY_DIR).exists()
    make_package(root, src, "new")  # now a registry exists, which never saw "old"
    with pytest.raises(PackageVerificationError, match="m old is unregistered"):
        promote(artifact_root=root, version="old", policy=POLICY)
    register(artifact_root=root, model_name="m", version="old")
    promote(artifact_root=root, version="old", policy=POLICY)
    assert stages_of(root) == {"old": "production", "new": "staging"}
    assert [(e.action, e.from_stage, e.to_stage) for e in registry_events(artifact_root=root)] == [
        ("publish", None, "staging"), ("register", None, "staging"), ("promote", "staging", "production")]  # fmt: skip


@pytest.mark.parametrize("what", ["candidate", "rollback target"])
def test_a_tampered_package_is_refused(tmp_path: Path, src: Path, what: str) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1")
    make_package(root, src, "v2")
    promote(artifact_root=root, version="v1", policy=POLICY)
    if what == "candidate":
        tamper(root / "m" / "v2" / "model.onnx")
        with pytest.raises(
            PackageVerificationError, match=r"refusing to promote m v2: m v2 fails verification: model.onnx"
        ):
            promote(artifact_root=root, version="v2", policy=POLICY)
        expected = {"v1": "production", "v2": "staging"}
    else:
        promote(artifact_root=root, version="v2", policy=POLICY)
        (root / "m" / "v1" / "vocab.txt").unlink()
        with pytest.raises(
            PackageVerificationError, match=r"refusing to roll back to m v1: .*vocab.txt: listed but missing"
        ):
            rollback(artifact_root=root)
        expected = {"v1": "archived", "v2": "production"}
    assert stages_of(root) == expected
    assert registry_events(artifact_root=root)[-1].to_stage == "production", "a refused change records nothing"


def test_a_regressing_version_is_refused_within_the_margin_accepted(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    make_package(root, src, "prod", accuracy=0.85)
    make_package(root, src, "worse", accuracy=0.83)
    make_package(root, src, "int8-worse", accuracy=0.86, int8_accuracy=0.80)
    make_package(root, src, "close", accuracy=0.845, int8_accuracy=0.8405)
    promote(artifact_root=root, version="prod", policy=POLICY)
    with pytest.raises(RegistryError, match=r"test_fp32_onnx.accuracy 0.8300 is worse than production prod's 0.8500"):
        promote(artifact_root=root, version="worse", policy=POLICY)
    with pytest.raises(RegistryError, match=r"test_int8_onnx.accuracy 0.8000 .* > registry.max_regression 0.01"):
        promote(artifact_root=root, version="int8-worse", policy=POLICY)
    # A wider margin lets the same version through.
    promote(artifact_root=root, version="worse", policy=RegistryConfig(max_regression=0.05))
    promote(artifact_root=root, version="close", policy=RegistryConfig(max_regression=0.0))
    assert stages_of(root)["close"] == "production"


def test_lower_is_better_metrics_regress_upwards(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    for version, mae in [("a", 0.40), ("b", 0.45), ("c", 0.39)]:
        publish_package(artifact_root=root, sources=[src],
                        metadata=sample_metadata(version, test={"accuracy": 0.5, "mae": mae}))  # fmt: skip
    policy = RegistryConfig(metric="mae", max_regression=0.02)
    promote(artifact_root=root, version="a", policy=policy)
    with pytest.raises(RegistryError, match=r"test_fp32_onnx.mae 0.4500 is worse than production a's 0.4000"):
        promote(artifact_root=root, version="b", policy=policy)
    promote(artifact_root=root, version="c", policy=policy)
    assert stages_of(root) == {"a": "archived", "b": "staging", "c": "production"}


def test_unknown_ambiguous_and_repeated_promotions(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1")
    make_package(root, src, "v1", model_name="other")
    with pytest.raises(RegistryError, match=r"no package version 'nope'"):
        promote(artifact_root=root, version="nope", policy=POLICY)
    with pytest.raises(RegistryError, match=r"exists for models \['m', 'other'\]; name one with --model"):
        promote(artifact_root=root, version="v1", policy=POLICY)
    promote(artifact_root=root, version="v1", model_name="m", policy=POLICY)
    with pytest.raises(RegistryError, match="production already"):
        promote(artifact_root=root, version="v1", model_name="m", policy=POLICY)
    with pytest.raises(RegistryError, match=r"holds models \['m', 'other'\]"):
        rollback(artifact_root=root)
    with pytest.raises(RegistryError, match="no package at"):
        register(artifact_root=root, model_name="m", version="ghost")


def test_cli_registry_promote_rollback(tmp_path: Path, src: Path, capsys) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1", accuracy=0.8)
    make_package(root, src, "v2", accuracy=0.9)
    make_package(root, src, "v3", accuracy=0.5)
    args = ["--artifact-root", str(root)]
    assert cli(["promote", "v1", *args]) == 0
    assert cli(["promote", "v2", *args]) == 0
    out = capsys.readouterr().out
    assert "m v1: production → archived" in out and "m v2: staging → production" in out
    assert cli(["promote", "v3", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to promote m v3: test_fp32_onnx.accuracy 0.5000") and "\n" not in err
    assert cli(["registry", *args]) == 0
    table = capsys.readouterr().out
    rows = {line.split("│")[2].strip(): line for line in table.splitlines() if line.count("│") > 3}
    assert "archived" in rows["v1"] and "production" in rows["v2"] and "staging" in rows["v3"]
    assert cli(["rollback", *args]) == 0
    assert "m v1: archived → production" in capsys.readouterr().out
    assert cli(["rollback", *args]) == 1
    assert "no previous production version" in capsys.readouterr().err
    assert cli(["promote", *args]) == 2, "a missing argument is a usage error"


def _promote_in_process(root: str, version: str, start) -> None:  # runs in a child process
    from trainflow.app.cli import main

    start.wait(30)
    sys.exit(main(["promote", version, "--artifact-root", root]))


def test_concurrent_promotes_leave_one_production_and_every_event(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    versions = [f"v{i}" for i in range(6)]
    for v in versions:
        make_package(root, src, v, accuracy=0.8)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_promote_in_process, args=(str(root), v, start)) for v in versions]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(versions)

    final = stages_of(root)
    assert sorted(final.values()) == ["archived"] * 5 + ["production"]
    state = json.loads((root / REGISTRY_DIR / STATE_FILE).read_text())
    history = state["models"]["m"]["production_history"]
    assert sorted(history) == versions and final[history[-1]] == "production"
    events = registry_events(artifact_root=root)
    promotes = [e for e in events if e.action == "promote"]
    assert len(promotes) == 6 + 5, "each promote records itself and (after the first) the version it archives"
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no sequence number lost or repeated"
    # Replaying the events in order gives the state, and each promotion archived its predecessor.
    replay: dict[str, str] = {}
    for e in events:
        assert replay.get(e.version) == e.from_stage
        replay[e.version] = e.to_stage
    assert replay == final
    order = [e.version for e in promotes if e.to_stage == "production"]
    assert order == history
