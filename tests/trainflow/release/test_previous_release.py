"""A package published by the previous release (tests/fixtures/previous_release, made by trainflow
at git bccdf19 before the library was regrouped) still verifies, registers and loads, and predicts
what it predicted then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tiny import ROOT
from trainflow.app.cli import main as cli
from trainflow.package import load
from trainflow.release.metadata import read_metadata
from trainflow.release.package import verify_package

FIXTURE = ROOT / "tests" / "fixtures" / "previous_release"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    target = tmp_path / "art" / EXPECTED["package"]
    shutil.copytree(FIXTURE / EXPECTED["package"], target)
    return target


def test_it_verifies_and_reads_with_its_typed_lineage_and_cost(copied: Path) -> None:
    assert set(verify_package(copied)) >= {"model.onnx", "model_int8.onnx", "metadata.json", "README.md"}
    meta = read_metadata(copied)
    assert (
        meta.lineage.node("onnx_int8") is not None and meta.lineage.node("onnx_int8").package_file == "model_int8.onnx"
    )
    assert meta.cost.measured is False and meta.quantization.search[0].name == meta.quantization.chosen_recipe


def test_it_loads_outside_a_registry_and_predicts_as_it_did(copied: Path) -> None:
    preds = load(copied).predict(EXPECTED["texts"])
    assert [p.label for p in preds] == EXPECTED["labels"]
    for got, want in zip(preds, EXPECTED["probabilities"]):
        assert got.probabilities == pytest.approx(want, abs=1e-6)


def test_it_registers_verifies_and_loads_inside_a_registry(copied: Path, capsys) -> None:
    root = copied.parent.parent
    version = copied.name
    assert cli(["register", version, "--artifact-root", str(root)]) == 0
    assert cli(["verify", version, "--artifact-root", str(root)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert [p.label for p in load(copied).predict(EXPECTED["texts"][:3])] == EXPECTED["labels"][:3]
