"""Does this environment run the pinned packages? requirements.txt against what is installed.

Used by the container build (container/apptainer.def runs `trainflow check-pins --cuda` in %post
and %test, so an image whose packages drift from the pins fails to build) and by the tests on
this machine's venv. A local version label (torch `2.13.0+cpu`, `2.13.0+cu128`) is the build of
the pinned release, not another release: it is compared without the label and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 name: `Optimum_ONNX` and `optimum-onnx` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements: Path) -> dict[str, str]:
    """{canonical name: version} for every `name==version` line; other lines are refused.

    Raises:
        ValueError: a requirement that is not an exact pin (the line named).
    """
    pins: dict[str, str] = {}
    for n, raw in enumerate(requirements.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{requirements}:{n}: {line!r} is not an exact pin (name==version)")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


@dataclass(frozen=True)
class PinReport:
    missing: list[str]  # pinned, not installed
    wrong: list[tuple[str, str, str]]  # (name, pinned, installed)
    builds: dict[str, str]  # name -> installed version with a local label (e.g. torch 2.13.0+cu128)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong

    def lines(self) -> list[str]:
        out = [f"missing: {name} (pinned)" for name in self.missing]
        out += [f"wrong version: {name} {got} installed, {want} pinned" for name, want, got in self.wrong]
        out += [f"build: {name} {got}" for name, got in sorted(self.builds.items())]
        return out


def check_pins(pins: dict[str, str]) -> PinReport:
    """Compare the pins with the installed distributions of this interpreter."""
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    missing, wrong, builds = [], [], {}
    for name, want in sorted(pins.items()):
        got = installed.get(name)
        if got is None:
            missing.append(name)
            continue
        public, _, label = got.partition("+")
        if public != want:
            wrong.append((name, want, got))
        elif label:
            builds[name] = got
    return PinReport(missing=missing, wrong=wrong, builds=builds)


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for, None for a CPU build."""
    import torch

    return torch.version.cuda
