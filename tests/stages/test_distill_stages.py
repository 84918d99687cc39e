"""Distillation's steps chained without Metaflow, for the ordinal reference task: an ordinal
student ships and its package predicts with its own cutpoints; and when no student keeps the
teacher's accuracy the teacher ships, and the package and its card say so."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from stages.distill import pick_student, prepare_distillation, run_students
from stages.export import export_and_check
from stages.publish import publish_run
from stages.quantize import quantize_model
from tests.stages.ordinal import ordinal_search
from trainflow.data.dataset import load_split
from trainflow.package import load
from trainflow.release.package import verify_package
from trainflow.search import space as search_space


def test_an_ordinal_student_ships_and_the_teacher_ships_when_no_student_keeps_up(
    tmp_path: Path, tiny_cfg: dict
) -> None:
    cfg, ctx, best, records = ordinal_search(
        tiny_cfg, distill={"enabled": True, "student_layers": [1], "max_accuracy_drop": 0.5}
    )
    plan = prepare_distillation(cfg=cfg, ctx=ctx, best=best, teacher_dir=str(best.model_dir))
    students = run_students(cfg=cfg, ctx=ctx, plan=plan, worker=0)
    assert [s.state for s in students] == ["COMPLETE"] and "mae" in students[0].metrics

    def publish(outcome, version: str) -> tuple[dict, Path]:  # noqa: ANN001
        chosen = search_space.apply(search_space.apply(cfg, best.params), outcome.chosen_params)
        exported = export_and_check(cfg=chosen, ctx=ctx, model_dir=outcome.model_dir, distilled=outcome)
        quant = quantize_model(cfg=chosen, ctx=ctx, exported=exported)
        package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                              pathspec=f"TrainFlow/r1/publish/{version}", version=version, distilled=outcome)  # fmt: skip
        verify_package(Path(package.path))
        return json.loads((Path(package.path) / "metadata.json").read_text()), Path(package.path)

    # Within 0.5 of the teacher's validation mae: the 1-layer student ships.
    shipped = pick_student(cfg=cfg, ctx=ctx, plan=plan, best=best)
    assert shipped.chosen == "student" and shipped.model_dir == students[0].model_dir
    meta, path = publish(shipped, "v1")
    assert meta["distillation"]["chosen"] == "student" and meta["distillation"]["student"]["layers"] == 1
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 1
    cut = np.asarray(meta["cutpoints"])
    assert len(cut) == 2 and cut[0] < cut[1]
    test = load_split(ctx.snapshot, "test")
    predicted = load(path, model="fp32").predict(test.texts)
    accuracy = float(np.mean([p.index == y for p, y in zip(predicted, test.labels, strict=True)]))
    assert accuracy == meta["metrics"]["test_fp32_onnx"]["accuracy"]
    assert any(n["kind"] == "student_model" for n in meta["lineage"]["nodes"])

    # A teacher no student comes within 0.5 of (its validation mae 10 lower): the teacher ships.
    unbeatable = replace(best, metrics={**best.metrics, "mae": best.metrics["mae"] - 10.0})
    kept = pick_student(cfg=cfg, ctx=ctx, plan=plan, best=unbeatable)
    assert kept.chosen == "teacher" and kept.model_dir == best.model_dir and kept.chosen_params == {}
    assert kept.reason.startswith("no student is within 0.5 of the teacher's validation mae")
    assert kept.reason.endswith("the teacher ships")
    meta, path = publish(kept, "v2")
    d = meta["distillation"]
    assert d["chosen"] == "teacher" and d["student"]["layers"] == 1 and d["teacher"]["layers"] == 2
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2
    assert not any(n["kind"].startswith("student") for n in meta["lineage"]["nodes"])
    card = (path / "README.md").read_text()
    assert "| teacher (shipped) | 2 |" in card and "the teacher ships" in card and "fine-tuned from" in card
