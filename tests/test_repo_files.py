"""Files that cannot be exercised here (no Apptainer, no pixi): check that they parse and point
at the right things."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#") and current is None:
            continue
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            sections[current] = ""
        elif current is None and ":" in line:
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
        elif current is not None:
            sections[current] += line + "\n"
    return header, sections


def test_apptainer_definition_parses_and_runs_the_flow() -> None:
    header, sections = _sections((ROOT / "container" / "apptainer.def").read_text())
    assert header["Bootstrap"] == "docker"
    assert header["From"].startswith("python:3.11"), "a base image with a torch of its own runs a torch no test used"
    assert {"files", "post", "environment", "runscript", "test"} <= set(sections)
    for line in sections["files"].split("\n"):
        if line.strip():
            src = line.split()[0]
            assert (ROOT / src).exists(), f"%files names missing {src}"
    post = sections["post"]
    assert "pip install --no-cache-dir -r requirements.txt" in post, "torch too must come from the pins"
    assert "grep -v" not in post and "torch" not in post.replace("import", ""), "no pin filtered or overridden"
    for part in ("post", "test"):
        assert "trainflow check-pins --requirements requirements.txt --cuda" in sections[part]
    entry = re.search(r"exec python (\S+)", sections["runscript"])
    assert entry and (ROOT / entry.group(1)).is_file() and entry.group(1) == "flows/train_flow.py"


def test_pixi_manifest_has_the_same_tasks_and_pins() -> None:
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert set(pixi["tasks"]) >= {"train", "test"}
    assert "flows/train_flow.py run" in pixi["tasks"]["train"]
    assert pixi["pypi-dependencies"]["torch"] == "==2.13.0"
    reqs = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for name, spec in pixi["pypi-dependencies"].items():
        if name.lower() in reqs:
            assert spec == f"=={reqs[name.lower()]}", f"pixi pin of {name} differs from requirements.txt"
    assert not (ROOT / "pixi.lock").exists(), "a lock can only come from pixi install; never fake one"


def test_ci_runs_make_test_and_workflow_parses() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in wf["jobs"]["test"]["steps"])
    assert "make lint" in steps and "make typecheck" in steps and "make test" in steps
