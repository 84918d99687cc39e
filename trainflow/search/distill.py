"""Distillation as a search: the students' study, and the pick of the student that ships.

The chosen model of the search (the teacher) is distilled into students: models cut from it
(`distill.student_layers`, trainflow/training/student.py) or other base models
(`distill.student_bases`). Their training is a search of its own: an Optuna study beside the
search's, on the same storage, whose `model.base` is one of the students (each student gets
`distill.n_trials` trials, queued when the study is made) and whose other fields come from
`distill.search_space`; a field searched by neither keeps the teacher's value (its trial's
parameters, then the config). Students train every layer (`model.frozen_layers` 0), without
pruning, budget or deployment limits, and their trials are checkpointed, retried and resumed
like the search's (trainflow/search/worker.py).

The pick: among the completed student trials, each student's best; those whose validation metric
is within `distill.max_accuracy_drop` of the teacher's (the best trial's, measured on data it did
not train on) qualify, and the smallest (INT8 file), then fastest (INT8 latency) ships. If none
qualifies, the teacher ships and the run says so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from trainflow.core.config import BudgetConfig, PrunerConfig, RunConfig, SearchParam
from trainflow.search import space as search_space
from trainflow.search.study import TrialRecord, open_study, trial_records

log = logging.getLogger(__name__)

QUEUED_ATTR = "students_queued"  # study user attr: every student's trials were queued


def study_name(search_study: str) -> str:
    return f"{search_study}-distill"


def distill_config(cfg: RunConfig, teacher_params: dict[str, Any], students: list[str]) -> RunConfig:
    """The students' search as a run config: the teacher's configuration (`teacher_params` set),
    `model.base` one of `students` (folders or base model names), every layer trained, and
    `distill`'s search space, trials and workers (module docstring)."""
    d = cfg.distill
    teacher = search_space.apply(cfg, {k: v for k, v in teacher_params.items() if k != "model.base"})
    space = {**{k: v for k, v in d.search_space.items()}, "model.base": SearchParam(choices=list(students))}
    hpo = teacher.hpo.model_copy(update={
        "n_trials": len(students) * d.n_trials, "n_workers": d.n_workers, "search_space": space,
        "sampler": "tpe" if cfg.hpo.sampler == "grid" else cfg.hpo.sampler, "pruner": PrunerConfig(type="none"),
        "budget": BudgetConfig(), "constraints": None, "warm_start": None, "refit": False,
    })  # fmt: skip
    return teacher.model_copy(update={"hpo": hpo, "model": teacher.model.model_copy(update={"frozen_layers": 0})})


def shipped_config(cfg: RunConfig, teacher_params: dict[str, Any], distilled: DistillOutcome | None) -> RunConfig:
    """The configuration of the model that ships: the teacher's (`teacher_params` set), or with a
    student shipped, the student's (its trial's parameters in the students' search configuration:
    every layer trained)."""
    if distilled is None or distilled.chosen != "student" or distilled.student is None:
        return search_space.apply(cfg, teacher_params)
    params = distilled.chosen_params
    return search_space.apply(distill_config(cfg, teacher_params, [str(params["model.base"])]), params)


def open_students_study(dcfg: RunConfig, storage: str, name: str, students: list[str]) -> optuna.Study:
    """The students' study, made once with `distill.n_trials` queued trials per student (a retry
    or resume of the step that makes it finds them queued and queues nothing)."""
    study = open_study(dcfg, storage, name)
    if not study.user_attrs.get(QUEUED_ATTR):
        # An attempt that died while queueing left some queued: only the missing ones are added.
        queued = [str((t.system_attrs.get("fixed_params") or {}).get("model.base")) for t in study.get_trials()]
        for student in students:
            for _ in range(dcfg.distill.n_trials - queued.count(student)):
                study.enqueue_trial({"model.base": student})
        study.set_user_attr(QUEUED_ATTR, True)
    return study


@dataclass
class ModelSummary:
    """A teacher or student, side by side in metadata.json `distillation` and the model card."""

    name: str  # "teacher", or the student's name (e.g. "3 layers", a base model)
    layers: int
    params: int
    trial: int | None
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)  # PyTorch FP32 on the test split
    latency_ms: float | None = None  # INT8, batch 1, 1 thread, this CPU
    size_mb: float | None = None  # INT8 file
    model_dir: str = ""
    params_searched: dict[str, Any] = field(default_factory=dict)  # the trial's parameters (a student's)
    cut: bool = False  # a student cut from the teacher (else a base model of its own, or the teacher)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DistillOutcome:
    """What the pick chose and why; `model_dir` and `chosen_params` are what export builds on."""

    chosen: Literal["student", "teacher"]
    teacher: ModelSummary
    student: ModelSummary | None  # the best student (also when the teacher ships), or None if none completed
    candidates: list[ModelSummary]
    temperature: float
    alpha: float
    hidden_loss: float
    max_accuracy_drop: float
    metric: str
    reason: str
    study: str
    teacher_outputs_sha256: str
    teacher_base: str = ""  # the base model the teacher was fine-tuned from

    @property
    def model_dir(self) -> str:
        shipped = self.student if self.chosen == "student" else self.teacher
        return shipped.model_dir  # type: ignore[union-attr]

    @property
    def chosen_params(self) -> dict[str, Any]:
        """The shipped student's trial parameters (`model.base` its folder), or {} for the teacher."""
        return dict(self.student.params_searched) if self.chosen == "student" and self.student else {}

    def to_metadata(self) -> dict[str, Any]:
        """metadata.json `distillation`."""

        def side(m: ModelSummary | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {"name": m.name, "layers": m.layers, "params": m.params, "trial": m.trial,
                    "validation": m.validation, "test": m.test, "latency_ms": m.latency_ms,
                    "latency": "INT8 ONNX p50, batch 1, 1 thread, this CPU", "size_mb": m.size_mb,
                    "cut_from_teacher": m.cut}  # fmt: skip

        return {
            "chosen": self.chosen,
            "teacher": side(self.teacher),
            "student": side(self.student),
            "candidates": [side(c) for c in self.candidates],
            "temperature": self.temperature,
            "alpha": self.alpha,
            "hidden_loss": self.hidden_loss,
            "max_accuracy_drop": self.max_accuracy_drop,
            "metric": self.metric,
            "reason": self.reason,
            "study": self.study,
            "teacher_outputs_sha256": self.teacher_outputs_sha256,
            "teacher_base": self.teacher_base,
        }


def best_per_student(records: list[TrialRecord], direction: str) -> dict[str, TrialRecord]:
    """Each student's best completed trial, by `model.base`."""
    sign = 1 if direction == "maximize" else -1
    best: dict[str, TrialRecord] = {}
    for r in records:
        if r.state != "COMPLETE" or r.value is None:
            continue
        name = str(r.params.get("model.base"))
        if name not in best or sign * r.value > sign * best[name].value:  # type: ignore[operator]
            best[name] = r
    return best


def within(value: float, teacher: float, direction: str, max_drop: float) -> bool:
    """Whether a student's metric `value` is at most `max_drop` worse than the teacher's."""
    return value >= teacher - max_drop - 1e-12 if direction == "maximize" else value <= teacher + max_drop + 1e-12


def choose(
    candidates: list[ModelSummary], teacher: ModelSummary, *, metric: str, direction: str, max_drop: float
) -> tuple[ModelSummary | None, str]:
    """The student that ships (smallest INT8 file, then fastest, then fewest parameters, among those
    within `max_drop` of the teacher on `metric` on validation), or None; and why, in one line."""
    t = teacher.validation[metric]
    ok = [c for c in candidates if within(c.validation[metric], t, direction, max_drop)]
    if not candidates:
        return None, "no student trial completed: the teacher ships"
    if not ok:
        best = max(candidates, key=lambda c: c.validation[metric] * (1 if direction == "maximize" else -1))
        return None, (f"no student is within {max_drop:g} of the teacher's validation {metric} {t:.4f} (best student:"
                      f" {best.name}, {best.validation[metric]:.4f}): the teacher ships")  # fmt: skip
    key = lambda c: (c.size_mb if c.size_mb is not None else float("inf"),  # noqa: E731
                     c.latency_ms if c.latency_ms is not None else float("inf"), c.params)  # fmt: skip
    chosen = min(ok, key=key)
    return chosen, (f"student {chosen.name} ships: validation {metric} {chosen.validation[metric]:.4f} vs the"
                    f" teacher's {t:.4f} (allowed drop {max_drop:g}), INT8 {chosen.size_mb or 0:.1f} MB and"
                    f" {chosen.latency_ms or 0:.2f} ms vs {teacher.size_mb or 0:.1f} MB and {teacher.latency_ms or 0:.2f}"
                    " ms")  # fmt: skip


def student_records(dcfg: RunConfig, storage: str, name: str) -> list[TrialRecord]:
    return trial_records(open_study(dcfg, storage, name))


def student_name(base: str) -> str:
    """A student's short name: `layers-3` for a student cut from the teacher, else the base's name."""
    return Path(base).name if Path(base).is_dir() else base
