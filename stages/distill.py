"""Steps `teacher`, `distill` (one foreach task) and `pick` (with `distill.enabled`): the chosen
model (the teacher) is distilled into students, and the smallest one that keeps its accuracy ships
(trainflow/search/distill.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.convert.deploy_cost import measure_deploy_cost
from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.core.layout import STUDENTS_DIR, deploy_cost_dir, distill_dir
from trainflow.data.context import RunContext
from trainflow.data.dataset import SplitData, load_split
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.search import distill as students_search
from trainflow.search import space as search_space
from trainflow.search.distill import DistillOutcome, ModelSummary
from trainflow.search.study import TrialRecord
from trainflow.search.worker import TrialRole, run_worker
from trainflow.training.base_model import count_parameters
from trainflow.training.packing import all_gpu_ids, assign_gpu, pin_gpu
from trainflow.training.student import make_student, read_student
from trainflow.training.teacher import TeacherOutputs, teacher_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillPlan:
    """What the teacher step prepared for the students (stored by the flow, read by each task)."""

    study_name: str
    teacher_dir: str
    teacher_trial: int
    teacher_params: dict[str, Any]
    students: list[str]  # each student's model.base: a folder cut from the teacher, or a base model
    teacher_outputs_sha256: str
    workers: list[int]


def _outputs(cfg: RunConfig, ctx: RunContext, teacher_dir: str, max_length: int) -> TeacherOutputs:
    return teacher_outputs(teacher_dir=Path(teacher_dir), train=load_split(ctx.snapshot, "train"),
                           max_length=max_length, out_dir=distill_dir(ctx.path),
                           hidden=cfg.distill.hidden_loss > 0)  # fmt: skip


def prepare_distillation(*, cfg: RunConfig, ctx: RunContext, best: TrialRecord, teacher_dir: str,
                         refitted: bool = False) -> DistillPlan:  # fmt: skip
    """Cut the students from the teacher (`teacher_dir`: the best trial's model or its refit),
    compute the teacher's outputs on the training split once, and make the students' study.

    Raises:
        ModelLoadError: the teacher cannot be cut to a depth of `distill.student_layers`."""
    teacher_cfg = search_space.apply(cfg, best.params)
    students = []
    for depth in cfg.distill.student_layers:
        folder = (distill_dir(ctx.path) / STUDENTS_DIR / f"layers-{depth}").resolve()
        if read_student(folder) is None:  # a student made by an earlier attempt is kept: its trials load it
            make_student(Path(teacher_dir), depth, folder)
        students.append(str(folder))
    students += cfg.distill.student_bases
    outputs = _outputs(cfg, ctx, teacher_dir, teacher_cfg.model.max_length)
    name = students_search.study_name(ctx.study_name)
    dcfg = students_search.distill_config(cfg, best.params, students)
    students_search.open_students_study(dcfg, ctx.storage, name, students)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="teacher", kind="teacher-model",
                     path=teacher_dir,
                     parents=(lineage_ref(cfg.name, "refit-model" if refitted else "best-model", ctx.run_key),),
                     trial=best.number, teacher_outputs_sha256=outputs.sha256)  # fmt: skip
    log.info("distillation: %d students (%s), %d trials each, teacher outputs %s", len(students),
             ", ".join(students_search.student_name(s) for s in students), cfg.distill.n_trials, outputs.path)  # fmt: skip
    fault_window("teacher")
    return DistillPlan(name, teacher_dir, best.number, dict(best.params), students, outputs.sha256,
                       list(range(cfg.distill.n_workers)))  # fmt: skip


def _objective(cfg: RunConfig, train: SplitData, outputs: TeacherOutputs) -> Callable[[RunConfig], Any]:
    """Each student trial's objective: the distillation loss against the teacher's outputs (with
    the hidden loss for a student cut from the teacher)."""
    import torch

    from trainflow.training.distill import DistillObjective

    d = cfg.distill

    def for_trial(trial_cfg: RunConfig) -> Callable[[torch.device], DistillObjective]:
        student = read_student(Path(trial_cfg.model.base)) if Path(trial_cfg.model.base).is_dir() else None
        hidden = d.hidden_loss > 0 and student is not None and outputs.hidden is not None
        if d.hidden_loss > 0 and not hidden:
            log.info("distill.hidden_loss: %s is not cut from the teacher; it learns from the teacher's outputs only",
                     trial_cfg.model.base)  # fmt: skip

        def build(device: torch.device) -> DistillObjective:
            return DistillObjective(
                labels=train.labels,
                teacher_logits=torch.from_numpy(outputs.logits),
                teacher_cutpoints=outputs.cutpoints,
                task=cfg.task.type,
                teacher_scale=outputs.scale,
                temperature=d.temperature,
                alpha=d.alpha,
                hidden_weight=d.hidden_loss if hidden else 0.0,
                teacher_hidden=torch.from_numpy(outputs.hidden) if hidden else None,  # type: ignore[arg-type]
                teacher_layer_of=list(student.teacher_layer_of) if hidden else None,  # type: ignore[union-attr]
                device=device,
            )

        return build

    return for_trial


def run_students(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    plan: DistillPlan,
    worker: int,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> list[TrialRecord]:
    """Student worker `worker`'s quota of the students' trials, each trained against the teacher's
    outputs (read back after their checksum is checked; computed again only when the file is
    missing or damaged, with a warning if they then differ from those the teacher step recorded);
    resumable like a search trial."""
    pin_gpu(None if cfg.train.device == "cpu" else assign_gpu(worker, all_gpu_ids(), cfg.compute.gpus))
    train = load_split(ctx.snapshot, "train")
    outputs = _outputs(cfg, ctx, plan.teacher_dir, search_space.apply(cfg, plan.teacher_params).model.max_length)
    if outputs.sha256 != plan.teacher_outputs_sha256:
        log.warning("teacher outputs: computed again with SHA-256 %s..., not the %s... the teacher step recorded (the"
                    " teacher's computation is not bit-exact on this device); the students learn from these",
                    outputs.sha256[:12], plan.teacher_outputs_sha256[:12])  # fmt: skip
    role = TrialRole(name="student", model_kind="student-model", parent_kind="teacher-model",
                     objective=_objective(cfg, train, outputs), tracking_dir=ctx.path)  # fmt: skip
    return run_worker(
        cfg=students_search.distill_config(cfg, plan.teacher_params, plan.students),
        storage=ctx.storage,
        study_name=plan.study_name,
        worker=worker,
        train=train,
        validation=load_split(ctx.snapshot, "validation"),
        work_dir=distill_dir(ctx.path),
        group=ctx.run_key,
        resume_dir=resume_dir,
        on_checkpoint=on_checkpoint,
        role=role,
    )


def _layers(model_dir: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).num_hidden_layers)


def _test_metrics(model_dir: str, test: SplitData, max_length: int) -> dict[str, float]:
    import torch

    from trainflow.training.modeling import load_model, pad_id
    from trainflow.training.train import encode, evaluate

    model, tokenizer = load_model(Path(model_dir))
    return evaluate(
        model, encode(tokenizer, test.inputs, max_length), test.labels, pad_id(tokenizer), torch.device("cpu")
    )


def _summary(cfg: RunConfig, ctx: RunContext, name: str, model_dir: str, trial: int, validation: dict[str, float],
             model_cfg: RunConfig, params: dict[str, Any]) -> ModelSummary:  # fmt: skip
    """A teacher or student with its test metrics (PyTorch, FP32) and deployed INT8 latency and size."""
    test = load_split(ctx.snapshot, "test")
    measured = model_cfg.model_copy(update={"model": model_cfg.model.model_copy(update={"base": model_dir})})
    cost = measure_deploy_cost(measured.model_copy(update={"hpo": measured.hpo.model_copy(update={"constraints": None})}),
                               texts=load_split(ctx.snapshot, "calibration").inputs,
                               cache_dir=deploy_cost_dir(cfg.publish.run_root))  # fmt: skip
    base = str(params.get("model.base", ""))
    return ModelSummary(name=name, layers=_layers(model_dir), params=count_parameters(Path(model_dir)), trial=trial,
                        validation=dict(validation), test=_test_metrics(model_dir, test, model_cfg.model.max_length),
                        latency_ms=cost["latency_ms"], size_mb=cost["size_mb"], model_dir=model_dir,
                        params_searched=params, cut=bool(base) and read_student(Path(base)) is not None)  # fmt: skip


def pick_student(*, cfg: RunConfig, ctx: RunContext, plan: DistillPlan, best: TrialRecord) -> DistillOutcome:
    """The student that ships, or the teacher when none is within `distill.max_accuracy_drop` of it
    on validation (trainflow/search/distill.py `choose`), with both measured side by side."""
    d, metric, direction = cfg.distill, cfg.hpo.metric, cfg.hpo.direction
    dcfg = students_search.distill_config(cfg, plan.teacher_params, plan.students)
    records = students_search.student_records(dcfg, ctx.storage, plan.study_name)
    teacher_cfg = search_space.apply(cfg, plan.teacher_params)
    teacher = _summary(cfg, ctx, "teacher", plan.teacher_dir, plan.teacher_trial, best.metrics, teacher_cfg, {})
    candidates = [
        _summary(cfg, ctx, students_search.student_name(base), str(r.model_dir), r.number, r.metrics,
                 search_space.apply(dcfg, r.params), dict(r.params))
        for base, r in students_search.best_per_student(records, direction).items()
    ]  # fmt: skip
    chosen, reason = students_search.choose(candidates, teacher, metric=metric, direction=direction,
                                            max_drop=d.max_accuracy_drop)  # fmt: skip
    sign = 1 if direction == "maximize" else -1
    shown = chosen or (max(candidates, key=lambda c: sign * c.validation[metric]) if candidates else None)
    log.info("%s", reason)
    fault_window("pick")
    return DistillOutcome(chosen="student" if chosen else "teacher", teacher=teacher, student=shown,
                          candidates=candidates, temperature=d.temperature, alpha=d.alpha, hidden_loss=d.hidden_loss,
                          max_accuracy_drop=d.max_accuracy_drop, metric=metric, reason=reason, study=plan.study_name,
                          teacher_outputs_sha256=plan.teacher_outputs_sha256, teacher_base=teacher_cfg.model.base)  # fmt: skip
