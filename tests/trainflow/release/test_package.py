from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.registry_helpers import sample_metadata
from trainflow.app.cli import main as cli
from trainflow.core.errors import PackageVerificationError, PublishError
from trainflow.records.store import PackageRow, TrialRow, package_scores, query, write_rows
from trainflow.release.package import verify_package
from trainflow.release.publish import publish_package


@pytest.fixture
def fake_onnx_dir(tmp_path: Path, tiny_onnx: Path) -> Path:
    """The real tiny export plus a stand-in INT8 file (publishing copies files, it does not run them)."""
    src = tmp_path / "src"
    src.mkdir()
    for p in tiny_onnx.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "model_int8.onnx").write_bytes((tiny_onnx / "model.onnx").read_bytes()[:1000])
    return src


def _publish(root: Path, src: Path, version: str = "v1"):
    return publish_package(artifact_root=root, sources=[src], metadata=sample_metadata(version))


def test_publish_writes_a_complete_verified_package(tmp_path: Path, fake_onnx_dir: Path) -> None:
    pkg = _publish(tmp_path / "art", fake_onnx_dir)
    path = Path(pkg.path)
    assert path == tmp_path / "art" / "m" / "v1"
    assert {"model.onnx", "model_int8.onnx", "tokenizer.json", "head.json", "metadata.json", "SHA256SUMS"} <= {
        p.name for p in path.iterdir()
    }
    assert json.loads((path / "metadata.json").read_text())["version"] == "v1"
    assert verify_package(path) == pkg.files
    assert [p.name for p in path.parent.iterdir()] == ["v1"], "no temporary folder is left behind"
    assert cli(["verify", str(path)]) == 0


@pytest.mark.parametrize("tamper", ["change", "delete", "add"])
def test_verify_refuses_a_tampered_package(tmp_path: Path, fake_onnx_dir: Path, tamper: str, capsys) -> None:
    path = Path(_publish(tmp_path / "art", fake_onnx_dir).path)
    if tamper == "change":
        data = bytearray((path / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (path / "model.onnx").write_bytes(bytes(data))
        expected = "model.onnx: SHA-256 does not match"
    elif tamper == "delete":
        (path / "tokenizer.json").unlink()
        expected = "tokenizer.json: listed but missing"
    else:
        (path / "backdoor.py").write_text("print('hi')")
        expected = "backdoor.py: present but not in the manifest"
    with pytest.raises(PackageVerificationError, match=expected):
        verify_package(path)
    assert cli(["verify", str(path)]) == 1
    assert expected in capsys.readouterr().err


def test_versions_are_immutable_and_incomplete_sources_are_refused(tmp_path: Path, fake_onnx_dir: Path) -> None:
    _publish(tmp_path / "art", fake_onnx_dir)
    with pytest.raises(PublishError, match="exists already"):
        _publish(tmp_path / "art", fake_onnx_dir)
    (fake_onnx_dir / "model_int8.onnx").unlink()
    with pytest.raises(PublishError, match=r"missing \['model_int8.onnx'\]"):
        _publish(tmp_path / "art", fake_onnx_dir, "v2")
    assert sorted(p.name for p in (tmp_path / "art" / "m").iterdir()) == ["v1"]


def _package_row(version: str, acc: float, labels: str = '["neg", "pos"]') -> PackageRow:
    return PackageRow(
        model_name="m", version=version, path=f"/p/{version}", task="classification", dataset_version="d-1",
        metric="accuracy", val_metric=acc, test_accuracy=acc, test_metric=acc, int8_metric=acc - 0.01,
        int8_accuracy=acc - 0.01, int8_accuracy_drop=0.01, majority_baseline_accuracy=0.5, parity_max_abs_diff=0.0,
        n_trials=4, git_commit="abc", pathspec="TrainFlow/1/publish/1", created_at="2026-01-01", labels=labels,
    )  # fmt: skip


def test_records_and_leaderboard_through_duckdb(tmp_path: Path, capsys) -> None:
    root = tmp_path / "art"
    assert package_scores(root) == []
    for version, acc in [("a", 0.7), ("b", 0.9)]:
        write_rows(root, version, [_package_row(version, acc)])
    trials = [
        TrialRow(run_key="r1", model_name="m", task="classification", number=i, state="COMPLETE", worker=0,
                 params=json.dumps({"lr": i}), value=i / 10, metrics="{}", model_dir=None, duration_s=1.0, steps=6,
                 resumed_from_step=0)
        for i in range(3)
    ]  # fmt: skip
    write_rows(root, "r1", trials)
    assert sorted((r.version, r.test) for r in package_scores(root)) == [("a", 0.7), ("b", 0.9)]
    assert query(root, "SELECT count(*) FROM trials WHERE json_extract(params, '$.lr') = 2")[1] == [(1,)]
    assert cli(["leaderboard", "--artifact-root", str(root)]) == 0
    assert cli(["trials", "r1", "--artifact-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.index(" b ") < out.index(" a ") and "COMPLETE" in out


def test_the_leaderboard_never_ranks_different_label_sets_together(tmp_path: Path, capsys) -> None:
    root = tmp_path / "art"
    write_rows(root, "sent", [_package_row("sent", 0.8)])
    write_rows(root, "news", [_package_row("news", 0.9, labels='["business", "sport", "tech"]')])
    assert cli(["leaderboard", "--artifact-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert (
        "classification [business, sport, tech] · dataset d-1" in out
        and "classification [neg, pos] · dataset d-1" in out
    )
    assert out.count("│ 1 ") == 2, "each package ranks first in a table of its own"
