"""The flow's cards, rendered for real: fetch each step's card HTML from the tiny run's datastore,
let headless Chromium run its JavaScript, and check the charts and tables that come out.

Chromium: whatever scripts/install_chromium.sh finds, or Debian's package it installs when none.
Set TRAINFLOW_CARD_SHOTS=DIR to keep PNG screenshots of the join (HPO) and quantize cards.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import _browser_args
from tests.tiny import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def rendered_dom(chromium: str, page: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran (cards draw everything client-side)."""
    done = subprocess.run(
        [*_browser_args(chromium, tmp / "profile-dom"), "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(chromium: str, page: Path, out: Path, height: int) -> None:
    done = subprocess.run(
        [*_browser_args(chromium, out.parent / f"profile-{out.stem}"), f"--window-size=1280,{height}",
         f"--screenshot={out}", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]


def card_html(flow_run, task, out: Path) -> Path:
    """`python flows/train_flow.py card get RUN/STEP/TASK out.html` (the documented CLI)."""
    pathspec = "/".join(task.pathspec.split("/")[1:])
    done = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(flow_run.root / "cfg.yaml"),
         "card", "get", pathspec, str(out), "--id", "report"],
        cwd=flow_run.root, env=flow_run.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and out.is_file(), done.stderr[-3000:]
    return out


def charts(dom: str) -> list[str]:
    """The rendered Vega charts: each vega-embed container with the <svg> or <canvas> it drew."""
    return re.findall(r'class="vega-embed[^"]*".*?(?:<svg|<canvas)', dom, flags=re.S)


def table_rows(dom: str) -> list[list[str]]:
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", dom, flags=re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        if cells:
            rows.append(cells)
    return rows


@pytest.fixture(scope="module")
def rendered(tiny_flow_run, chromium, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """step name -> (card HTML file, DOM after rendering) for one task of each carded step."""
    tmp = tmp_path_factory.mktemp("cards")
    out = {}
    run = tiny_flow_run.run
    for step in ("train", "join", "quantize", "end"):
        task = next(iter(run[step].tasks()))
        page = card_html(tiny_flow_run, task, tmp / f"{step}.html")
        out[step] = (page, rendered_dom(chromium, page, tmp))
    return out


def test_hpo_card_draws_history_and_trials_table(rendered, tiny_flow_run) -> None:
    _, dom = rendered["join"]
    assert "Hyperparameter search" in dom
    assert "Optuna history" in dom
    # history + metric against INT8 latency + one slice plot per searched parameter (2 trials are
    # too few for importances)
    assert len(charts(dom)) == 1 + 1 + 3, "history chart, the Pareto chart and 3 slice plots"
    assert "against INT8 latency" in dom and "INT8 ms" in dom
    assert "not computed: " in dom
    rows = table_rows(dom)
    trials = [r for r in rows if r and r[0].split(" ")[0] in {"0", "1"} and len(r) >= 4 and r[1] == "COMPLETE"]
    assert len(trials) == 2 and all(r[-1] == "yes" for r in trials), "within the limits"
    best = tiny_flow_run.run.data.best.number
    assert any(r[0] == f"{best} (best)" for r in trials)


def test_train_card_draws_loss_and_validation_curves(rendered) -> None:
    _, dom = rendered["train"]
    assert re.search(r"Trial \d+: loss", dom) and re.search(r"Trial \d+: validation accuracy", dom)
    assert len(charts(dom)) == 2, "one worker ran one trial: a loss chart and a validation chart"


def test_quantize_card_draws_recipe_table_and_parity_histogram(rendered, tiny_flow_run) -> None:
    _, dom = rendered["quantize"]
    assert "Parity: |PyTorch - ONNX|" in html.unescape(dom)
    assert len(charts(dom)) == 1
    quant = tiny_flow_run.run.data.quant
    rows = table_rows(dom)
    recipes = [r for r in rows if r and r[0].removesuffix(" (chosen)") in {o["name"] for o in quant.search}]
    assert len(recipes) == len(quant.search)
    assert any(r[0] == f"{quant.chosen} (chosen)" and r[1] in ("chosen", "passed") for r in recipes)


def test_end_card_lists_the_package_files(rendered, tiny_flow_run) -> None:
    _, dom = rendered["end"]
    package = tiny_flow_run.run.data.package
    assert f"Package {package.version}" in dom
    files = {r[0] for r in table_rows(dom)}
    assert {"model.onnx", "model_int8.onnx", "metadata.json"} <= files


def test_card_screenshots(rendered, chromium, tmp_path) -> None:
    keep = os.environ.get("TRAINFLOW_CARD_SHOTS")
    for step, height in (("join", 1850), ("quantize", 1250)):
        shot = tmp_path / f"card-{step}.png"
        screenshot(chromium, rendered[step][0], shot, height)
        assert shot.stat().st_size > 20_000, "a blank page compresses to a few KB"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
