"""Price a run from its tasks' measured wall times and the resources their steps declared.

cost of a task = hours x (cpus x cpu_core_hour + gpus x gpu_hour[gpu_type] + memory_gb x memory_gb_hour)

The timings are plain `TaskTiming`s (step, task id, started, finished), so the arithmetic runs
without Metaflow; `trainflow/run_metadata.py` reads them from a Metaflow run. A task that has not
finished yet (the publish step pricing its own run) is counted up to `now` and marked running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainflow.core.config import ComputeConfig, CostConfig, RunConfig
from trainflow.core.errors import CostError
from trainflow.records.store import CostRow

log = logging.getLogger(__name__)

# The steps that carry `@resources` from `compute:` (flows/train_flow.py); the others run with
# Metaflow's defaults for an undecorated step: 1 CPU, 4,096 MB, no GPU.
TRIAL_STEPS = ("train", "distill")  # distill: the students' trials (it runs only with distill.enabled)
# With hpo.refit the refit step trains like a trial, on the trials' resources; else it only passes the model on.
REFIT_STEP = "refit"


def training_steps(refit: bool) -> tuple[str, ...]:
    """The steps that train like a trial: on the trials' resources and backend (`hpo.refit`)."""
    return (*TRIAL_STEPS, REFIT_STEP) if refit else TRIAL_STEPS


DEFAULT_CPUS = 1
DEFAULT_MEMORY_MB = 4096


@dataclass(frozen=True)
class TaskTiming:
    step: str
    task_id: str
    started: datetime
    finished: datetime | None  # None: still running


@dataclass(frozen=True)
class Resources:
    cpus: int
    gpus: int
    memory_gb: float
    gpu_type: str = "default"


class StepCost(BaseModel):
    """One step's tasks, summed: what metadata.json `cost.by_step` lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str
    tasks: int
    seconds: float
    cpu_cost: float
    gpu_cost: float
    memory_cost: float
    cost: float


NOT_MEASURED_NOTE = "no task timings were given"


class CostSummary(BaseModel):
    """metadata.json `cost`: the run's cost from its tasks' wall times, or `measured: false` with a
    note when the run's task timings were not available when it was priced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measured: bool = True
    note: str = ""
    currency: str | None = None
    total: float | None = None
    cpu: float | None = None
    gpu: float | None = None
    memory: float | None = None
    task_seconds: float | None = None
    tasks: int | None = None
    rates: dict[str, Any] | None = None
    by_step: list[StepCost] | None = None

    @classmethod
    def not_measured(cls, note: str = NOT_MEASURED_NOTE) -> CostSummary:
        return cls(measured=False, note=note)


@dataclass(frozen=True)
class RunCost:
    currency: str
    rates: dict[str, Any]
    tasks: list[CostRow]

    @property
    def total(self) -> float:
        return sum(t.cost for t in self.tasks)

    def by_step(self) -> list[StepCost]:
        """One row per step in order of first start: tasks, summed seconds and costs."""
        steps: dict[str, dict[str, Any]] = {}
        for t in sorted(self.tasks, key=lambda t: t.started_at):
            row = steps.setdefault(
                t.step,
                {"step": t.step, "tasks": 0, "seconds": 0.0, "cpu_cost": 0.0, "gpu_cost": 0.0, "memory_cost": 0.0,
                 "cost": 0.0},
            )  # fmt: skip
            row["tasks"] += 1
            for key in ("seconds", "cpu_cost", "gpu_cost", "memory_cost", "cost"):
                row[key] += getattr(t, key)
        return [StepCost(**row) for row in steps.values()]

    def summary(self) -> CostSummary:
        """What metadata.json records under `cost`."""
        return CostSummary(
            currency=self.currency,
            total=self.total,
            cpu=sum(t.cpu_cost for t in self.tasks),
            gpu=sum(t.gpu_cost for t in self.tasks),
            memory=sum(t.memory_cost for t in self.tasks),
            task_seconds=sum(t.seconds for t in self.tasks),
            tasks=len(self.tasks),
            rates=self.rates,
            by_step=self.by_step(),
            note="wall time of each task (first attempt created to last attempt finished, retries included)"
            " x resources its step declared; tasks still running when priced count up to that moment",
        )


def declared_resources(
    *, compute: ComputeConfig, cost: CostConfig, refit: bool = False
) -> tuple[dict[str, Resources], Resources]:
    """(resources of the steps that `compute:` decorates, resources of every other step); the
    refit step counts as a trial step when it trains (`refit`)."""
    trial = Resources(compute.cpus, compute.gpus, compute.memory_mb / 1024, cost.gpu_type)
    default = Resources(DEFAULT_CPUS, 0, DEFAULT_MEMORY_MB / 1024, cost.gpu_type)
    return dict.fromkeys(training_steps(refit), trial), default


def price_tasks(
    *,
    timings: Iterable[TaskTiming],
    resources: dict[str, Resources],
    default: Resources,
    rates: CostConfig,
    now: datetime,
    run_key: str = "",
    model_name: str = "",
) -> RunCost:
    """Price every task (as `costs` record rows of run `run_key` of model `model_name`).

    A task that ends before it starts (clock skew between hosts) is priced as 0 s, with a warning.

    Raises:
        CostError: a naive datetime.
    """
    tasks = []
    for t in timings:
        end = t.finished or now
        for name, value in (("started", t.started), ("finished", end)):
            if value.tzinfo is None:
                raise CostError(
                    f"task {t.step}/{t.task_id}: {name} time {value} has no time zone; pass aware datetimes"
                )
        seconds = (end - t.started).total_seconds()
        if seconds < 0:
            # The hosts that recorded start and end disagree about the time (a task on another node,
            # or `now` of this host): the task costs nothing rather than failing the publish step.
            log.warning("task %s/%s: ends (%s) %.1f s before it starts (%s): clocks of different hosts disagree;"
                        " priced as 0 s", t.step, t.task_id, end, -seconds, t.started)  # fmt: skip
            seconds = 0.0
        res = resources.get(t.step, default)
        hours = seconds / 3600
        gpu_rate = rates.gpu_rate(res.gpu_type)
        cpu_cost = hours * res.cpus * rates.cpu_core_hour
        gpu_cost = hours * res.gpus * gpu_rate
        memory_cost = hours * res.memory_gb * rates.memory_gb_hour
        tasks.append(
            CostRow(
                run_key=run_key,
                model_name=model_name,
                currency=rates.currency,
                step=t.step,
                task_id=t.task_id,
                started_at=t.started.isoformat(timespec="microseconds"),  # orders steps that start within a second
                finished_at=t.finished.isoformat(timespec="seconds") if t.finished else None,
                seconds=seconds,
                running=t.finished is None,
                cpus=res.cpus,
                gpus=res.gpus,
                gpu_type=res.gpu_type,
                memory_gb=res.memory_gb,
                cpu_cost=cpu_cost,
                gpu_cost=gpu_cost,
                memory_cost=memory_cost,
                cost=cpu_cost + gpu_cost + memory_cost,
            )
        )
    return RunCost(currency=rates.currency, rates=rates.model_dump(mode="json"), tasks=tasks)


def price_run(
    *, cfg: RunConfig, timings: Iterable[TaskTiming], run_key: str = "", now: datetime | None = None
) -> RunCost:
    """Price a run's tasks with `cfg.cost` and the resources each step declared."""
    per_step, default = declared_resources(compute=cfg.compute, cost=cfg.cost, refit=cfg.hpo.refit)
    return price_tasks(timings=timings, resources=per_step, default=default, rates=cfg.cost,
                       now=now or datetime.now(UTC), run_key=run_key, model_name=cfg.name)  # fmt: skip
