"""The container's build, run without an engine (none exists where this is tested): the %files
and %post of container/apptainer.def under a scratch root with a fresh Python 3.11, resolving
from the package index alone, then %test and %runscript (scripts/apptainer_post.sh). Checks that
the image gets the CUDA build of the pinned torch and that its package list matches the pins
(the `trainflow check-pins --cuda` inside %post and %test fails the build otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
def test_the_image_build_installs_the_pins_with_the_cuda_torch(tmp_path: Path) -> None:
    scratch = tmp_path / "image"
    try:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "apptainer_post.sh"), str(scratch)],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line]
        assert re.search(rf"OK: {len(pins)} packages match requirements.txt", out), out[-3000:]
        listed = (line.split("==", 1) for line in (scratch / "packages.txt").read_text().splitlines() if "==" in line)
        packages = {norm(name): version for name, version in listed}
        for pin in pins:
            name, version = pin.split("#")[0].strip().split("==")
            assert packages.get(norm(name)) == version, f"{pin}: the image has {packages.get(norm(name))}"
        assert packages["torch"] == "2.13.0" and "nvidia-cudnn-cu13" in packages  # the CUDA build, not +cpu
        cuda = subprocess.run(
            [str(scratch / "venv" / "bin" / "python"), "-c", "import torch; print(torch.version.cuda)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert cuda not in ("", "None"), cuda
        assert "apptainer %test passed" in out
        steps = re.search(r"%runscript show: (\d+) steps", out)
        # start train join refit [teacher distill pick] export quantize publish end
        assert steps and int(steps.group(1)) == 11, out[-2000:]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # ~6 GB
