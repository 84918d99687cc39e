"""`trainflow check-pins`: the container build's gate that the image runs exactly the pinned
packages, run here against this machine's own environment (the venv `make setup` built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import ROOT
from trainflow.app.cli import main as cli
from trainflow.core.pins import canonical, read_pins


def test_this_environment_matches_requirements(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["check-pins", "--requirements", str(ROOT / "requirements.txt")]) == 0
    out = capsys.readouterr().out
    n = len(read_pins(ROOT / "requirements.txt"))
    assert f"OK: {n} packages match" in out
    assert f"build: torch {torch.__version__}" in out or "+" not in torch.__version__


def test_wrong_and_missing_pins_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# a comment\ntorch==2.9.1\nno-such-package-trainflow==1.0\nPyYAML==6.0.3  # canonical name\n")
    assert cli(["check-pins", "--requirements", str(req)]) == 1
    captured = capsys.readouterr()
    assert f"wrong version: torch {torch.__version__} installed, 2.9.1 pinned" in captured.out
    assert "missing: no-such-package-trainflow (pinned)" in captured.out
    assert "pyyaml" not in captured.out.lower(), "a matching pin is not reported"
    assert captured.err.strip() == f"error: 2 package(s) differ from {req}"


def test_a_range_is_refused_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("pyyaml==6.0.3\n\ntorch>=2.0\n")
    assert cli(["check-pins", "--requirements", str(req)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {req}:3: 'torch>=2.0' is not an exact pin (name==version)"


def test_missing_requirements_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["check-pins", "--requirements", str(tmp_path / "nope.txt")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.txt'}: no such requirements file"


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_cuda_flag_refuses_a_cpu_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    assert cli(["check-pins", "--requirements", str(req)]) == 0
    assert cli(["check-pins", "--requirements", str(req), "--cuda"]) == 1
    assert "torch is a CPU build" in capsys.readouterr().err


def test_canonical_names() -> None:
    assert canonical("Optimum_ONNX") == canonical("optimum.onnx") == "optimum-onnx"
