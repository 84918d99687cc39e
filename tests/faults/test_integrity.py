"""Nothing forged, nothing lost: packages and the registry under forgery, path tricks, races
with retention, and resumed publishes (issue 11, points 1-5 and 12). Each test failed on the code
before the fix (see the closing note for how that was checked)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.registry_helpers import make_package, package_sources, sample_metadata
from trainflow.app.cli import main as cli
from trainflow.core.config import RegistryConfig, RetentionRule
from trainflow.core.errors import PackageVerificationError, RegistryError
from trainflow.records.store import RunRow, write_rows
from trainflow.release.package import MANIFEST, assemble_package, remove_stale_temps, verify_package
from trainflow.release.registry import list_versions, promote, rollback
from trainflow.release.retention import apply_retention

POLICY = RegistryConfig(max_regression=0.01)


@pytest.fixture
def src(tmp_path: Path, tiny_onnx: Path) -> Path:
    return package_sources(tmp_path, tiny_onnx)


def _rewrite_manifest(pkg: Path, extra: str = "") -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(pkg.iterdir())
             if p.name != MANIFEST and p.is_file() and not p.is_symlink()]  # fmt: skip
    (pkg / MANIFEST).write_text("".join(lines) + extra)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_forged_package_with_a_rewritten_manifest_is_refused(tmp_path: Path, src: Path, capsys) -> None:
    """1. A byte of model_int8.onnx flipped, the test metrics raised, SHA256SUMS rewritten to match."""
    root = tmp_path / "art"
    make_package(root, src, "v1", accuracy=0.70)
    make_package(root, src, "v2", accuracy=0.70)
    promote(artifact_root=root, version="v1", policy=POLICY)
    pkg = root / "m" / "v2"
    _flip(pkg / "model_int8.onnx")
    meta = json.loads((pkg / "metadata.json").read_text())
    meta["metrics"]["test_fp32_onnx"]["accuracy"] = meta["metrics"]["test_int8_onnx"]["accuracy"] = 0.99
    (pkg / "metadata.json").write_text(json.dumps(meta))
    _rewrite_manifest(pkg)
    verify_package(pkg)  # the package alone vouches for itself: self-consistent
    assert cli(["verify", str(pkg)]) == 1
    err = capsys.readouterr().err
    assert "model_int8.onnx: differs from what the registry recorded" in err
    assert "metadata.json: differs" in err and "SHA256SUMS: differs" in err
    with pytest.raises(PackageVerificationError, match=r"refusing to promote m v2: .*model_int8.onnx: differs"):
        promote(artifact_root=root, version="v2", policy=POLICY)
    assert {v.version: v.stage for v in list_versions(artifact_root=root)} == {"v1": "production", "v2": "staging"}


def test_a_rollback_target_forged_after_publishing_is_refused(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    for v in ("v1", "v2"):
        make_package(root, src, v)
        promote(artifact_root=root, version=v, policy=POLICY)
    _flip(root / "m" / "v1" / "model.onnx")
    _rewrite_manifest(root / "m" / "v1")
    with pytest.raises(PackageVerificationError, match=r"refusing to roll back to m v1: .*model.onnx: differs"):
        rollback(artifact_root=root)


def test_a_folder_the_registry_never_saw_is_unregistered_not_ok(tmp_path: Path, src: Path, capsys) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1")
    shutil.copytree(root / "m" / "v1", root / "m" / "copy")  # self-consistent, never published
    assert cli(["verify", str(root / "m" / "copy")]) == 1
    assert "m copy is unregistered" in capsys.readouterr().err
    with pytest.raises(PackageVerificationError, match="unregistered"):
        promote(artifact_root=root, version="copy", policy=POLICY)
    # A renamed copy is still v1 by its metadata: register refuses to adopt it under another name.
    assert cli(["register", "copy", "--artifact-root", str(root)]) == 1
    assert "its metadata.json names m v1, not m copy" in capsys.readouterr().err
    make_package(root, src, "v2", registered=False)  # put in place by hand, never published
    assert cli(["register", "v2", "--artifact-root", str(root)]) == 0  # adopted by an explicit act
    assert cli(["verify", "v2", "--artifact-root", str(root)]) == 0


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/hostname", "sub/file"])
def test_manifest_names_outside_the_package_are_refused(tmp_path: Path, src: Path, entry: str) -> None:
    """2. A manifest line naming a file outside the package, with that file's right digest."""
    root = tmp_path / "art"
    pkg = Path(make_package(root, src, "v1").path)
    target = (pkg / entry) if not entry.startswith("/") else Path(entry)
    if not target.exists():  # where the old reader looked: a real file with the listed digest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("root:x:0:0::/root:/bin/sh\n")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    with (pkg / MANIFEST).open("a") as fh:
        fh.write(f"{digest}  {entry}\n")
    with pytest.raises(PackageVerificationError, match="is not a plain file name of the package"):
        verify_package(pkg)


def test_a_symlink_inside_the_package_is_refused(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    pkg = Path(make_package(root, src, "v1").path)
    (pkg / "vocab.txt").unlink()
    outside = tmp_path / "vocab.txt"
    outside.write_text("[PAD]\n")
    (pkg / "vocab.txt").symlink_to(outside)
    _rewrite_manifest(pkg, extra=f"{hashlib.sha256(outside.read_bytes()).hexdigest()}  vocab.txt\n")
    with pytest.raises(PackageVerificationError, match="vocab.txt: a symbolic link"):
        verify_package(pkg)


@pytest.mark.parametrize("version", ["../../evilpkg", "..", "../x"])
def test_registry_names_must_be_one_path_component(tmp_path: Path, src: Path, version: str, capsys) -> None:
    """3. `promote ../../evilpkg` with a self-consistent package planted outside the root."""
    root = tmp_path / "a" / "art"
    make_package(root, src, "v1")
    evil = root.parent / "evilpkg"  # where root/m/../../evilpkg points
    shutil.copytree(root / "m" / "v1", evil)
    with pytest.raises(RegistryError, match="is not a plain name"):
        promote(artifact_root=root, version=version, model_name="m", policy=POLICY)
    assert cli(["promote", version, "--model", "m", "--artifact-root", str(root)]) == 1
    assert cli(["rollback", "--model", "../m", "--artifact-root", str(root)]) == 1
    assert "is not a plain name" in capsys.readouterr().err
    assert {v.stage for v in list_versions(artifact_root=root)} == {"staging"}


def test_retention_never_touches_unregistered_or_in_progress_packages(tmp_path: Path, src: Path) -> None:
    """4. Only versions the registry records as staging are candidates."""
    root = tmp_path / "art"
    make_package(root, src, "v1", created_at="2026-01-01T00:00:00+00:00")
    make_package(root, src, "hand-copied", registered=False, created_at="2026-01-02T00:00:00+00:00")
    live = assemble_package(artifact_root=root, sources=[src], metadata=sample_metadata("v3"))  # being published
    try:
        plan = apply_retention(artifact_root=root, run_root=tmp_path / "runs",
                               rule=RetentionRule(keep_last_versions=0, keep_checkpoints_days=1), dry_run=False)  # fmt: skip
        assert [d.version for d in plan] == ["v1"]
        assert (root / "m" / "hand-copied").is_dir() and live.tmp.is_dir()
    finally:
        live.release()


def test_a_second_attempt_never_removes_a_live_attempts_temp_folder(tmp_path: Path, src: Path) -> None:
    """4. Two resumes of one run: the cleaner removes only temp folders whose writer is gone."""
    root = tmp_path / "art"
    live = assemble_package(artifact_root=root, sources=[src], metadata=sample_metadata("v-run1"))
    assert remove_stale_temps(root / "m", ".tmp-*-run1-*") == []
    assert live.tmp.is_dir(), "the live attempt's folder stays"
    live.release()  # its writer is gone now (as after a kill: the lock dies with the process)
    assert remove_stale_temps(root / "m", ".tmp-*-run1-*") == [live.tmp]
    assert not live.tmp.exists()


def test_record_file_names_never_break_the_cli(tmp_path: Path, capsys) -> None:
    """12. A records file named `o'brien".parquet` (names used to be pasted into SQL)."""
    root = tmp_path / "art"
    row = RunRow(run_key="r1", model_name="m", pathspec="TrainFlow/r1", status="published", started_at="2026-01-01",
                 finished_at=None, duration_s=1.0, cost=None, cost_currency=None, cost_cpu=None, cost_gpu=None,
                 cost_memory=None, task_seconds=None, dataset_version=None, package_version="v1", best_trial=0,
                 config="{}")  # fmt: skip
    write_rows(root, "o'brien\"", [row])
    assert cli(["runs", "--artifact-root", str(root)]) == 0
    assert "r1" in capsys.readouterr().out


def test_a_published_version_is_recorded_with_its_digests(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    pkg = make_package(root, src, "v1")
    state = json.loads((root / "_registry" / "registry.json").read_text())
    entry = state["models"]["m"]["versions"]["v1"]
    assert entry["files"] == pkg.files
    assert entry["manifest_sha256"] == hashlib.sha256((root / "m" / "v1" / MANIFEST).read_bytes()).hexdigest()
    from trainflow.release.registry import registry_events

    assert registry_events(artifact_root=root)[0].manifest_sha256 == entry["manifest_sha256"]
    assert not [p for p in (root / "m").iterdir() if p.name.startswith(".")], "no temp folder or lock left"
    assert os.listdir(root / "m") == ["v1"]
