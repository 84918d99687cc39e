"""TrainFlow: data snapshot -> Optuna HPO fan-out -> best model -> ONNX -> INT8 -> package.

Steps:
  start     validate the config, snapshot and split the dataset, create the Optuna study
  train     (foreach worker) ask trials from the shared study, train, report, tell;
            @checkpoint-resumable, @retry-able, @resources from config; runs on SLURM
            or Kubernetes when `compute.backend` says so (flows/trainflow_backends.py)
  join      choose the best complete trial by the configured metric (within hpo.constraints)
  refit     with hpo.refit, train the best configuration again on train + validation
            (@checkpoint-resumable, @retry-able, on the trials' backend); else pass the best on
  teacher   (distill.enabled) cut the students from the chosen model, compute its outputs on the
            training split once, make the students' study
  distill   (foreach student worker) distil: train student trials against the teacher's outputs;
            @checkpoint-resumable, @retry-able, on the trials' backend
  pick      the smallest student within distill.max_accuracy_drop of the teacher, or the teacher
  export    ONNX export with Optimum (opset from config) + PyTorch-vs-ORT parity gate
  quantize  INT8 static QDQ quantization + accuracy gate + CPU latency
  publish   atomic, checksummed deployment package (registered as staging), lineage,
            the run's cost from its task timings, Parquet records
  end       print where the package is and the best trial's metrics

Cards (`python flows/train_flow.py card view RUN/STEP/TASK --id report`, or `card server`): train shows each
trial's loss and validation curves, join the Optuna history, parameter importances and trials,
quantize the INT8 recipe table and the parity error histogram, end the package summary.

Run:  python flows/train_flow.py run                      (config/default.yaml)
      python flows/train_flow.py --config config FILE run
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import trainflow_cards as cards
import trainflow_errors as errors
import trainflow_liveness
import trainflow_logs
from metaflow import Config, FlowSpec, card, checkpoint, config_expr, current, resources, retry, step
from trainflow_backends import ComputeBackend

from trainflow.core.config import RunConfig, metaflow_config_parser

# Each step imports its own stage: every task, and every card, starts a Python process that
# imports this file, and the stages' libraries (torch, transformers, onnx, pyarrow) take seconds
# to load; a step that only reads a study or writes a card starts in a fraction of that.
trainflow_logs.configure()
DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "config" / "default.yaml")


def _record_failure(flow: TrainFlow, step_name: str, err: BaseException) -> None:
    """The run's `runs` record says failed, with the step and the error line; a failed resume
    updates the record of the run it resumes."""
    try:
        cfg = flow.cfg
    except Exception:  # noqa: BLE001 - no valid config: nothing to record under
        return
    from trainflow.records.runs import write_run_status

    ctx = getattr(flow, "ctx", None)
    write_run_status(cfg, ctx.run_key if ctx else current.run_id, pathspec=current.pathspec, status="failed",
                     started_at=ctx.started_at if ctx else time.time(), failure=(step_name, errors.one_line(err)),
                     dataset_version=ctx.snapshot.version if ctx else None,
                     resumed_as=trainflow_liveness.resumed_as())  # fmt: skip


fails_in_one_line = errors.one_line_errors(_record_failure)


def task_checkpoints(**metadata: object) -> tuple[Path | None, Callable[[Path], None]]:
    """For a step that trains: the checkpoint metaflow-checkpoint loaded for this task (on @retry),
    or None; and the callback that saves each new checkpoint folder with `metadata`."""
    loaded = Path(current.checkpoint.directory) if current.checkpoint.is_loaded else None
    return loaded, lambda folder: current.checkpoint.save(str(folder), metadata=metadata)


# The trials and the refit train alike: retried, with the resources `compute:` declares.
trial_retry = retry(
    times=config_expr("config.compute.retries"),
    minutes_between_retries=config_expr("config.compute.retry_delay_minutes"),
)
trial_resources = resources(
    cpu=config_expr("config.compute.cpus"),
    gpu=config_expr("config.compute.gpus"),
    memory=config_expr("config.compute.memory_mb"),
)


@ComputeBackend
class TrainFlow(FlowSpec):
    """Fine-tune a text classifier with an Optuna search and publish a checksummed ONNX + INT8
    package. Steps: start -> train (foreach worker) -> join -> refit (with hpo.refit) -> [teacher ->
    distill (foreach student worker) -> pick, with distill.enabled] -> export -> quantize -> publish -> end; each step calls one function of `stages/` and stores its result."""

    config = Config(
        "config", default=DEFAULT_CONFIG, parser=errors.config_parser(metaflow_config_parser, DEFAULT_CONFIG)
    )

    @property
    def cfg(self) -> RunConfig:
        return RunConfig.model_validate(dict(self.config))

    @property
    def chosen_cfg(self) -> RunConfig:
        """The shipped model's configuration: the best trial's (its searched fields set), and a
        distilled student's fields on top when one ships. What export and quantize build on."""
        from trainflow.search.distill import shipped_config

        return shipped_config(self.cfg, self.best.params, self.distilled)

    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def start(self):
        """Validate the config, snapshot and split the data, create the study (stages/prepare.py)."""
        from stages.hpo_worker import task_slots
        from stages.prepare import prepare_run

        self.ctx = prepare_run(cfg=self.cfg, run_key=current.run_id, pathspec=current.pathspec)
        self.workers = task_slots(self.cfg)  # one per worker, or per GPU slot with hpo.workers_per_gpu
        self.next(self.train, foreach="workers")

    @card(type="blank", id=cards.CARD_ID)
    @checkpoint(show_card=False)
    @trial_retry
    @trial_resources
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def train(self):
        """One foreach worker: its quota of trials from the shared study (stages/hpo_worker.py);
        metaflow-checkpoint saves each checkpoint and restores the latest on @retry."""
        from stages.hpo_worker import run_trials
        from trainflow.app import reports

        loaded, save = task_checkpoints(worker=self.input)
        self.trials = run_trials(cfg=self.cfg, ctx=self.ctx, worker=self.input, resume_dir=loaded, on_checkpoint=save)
        cards.show(
            lambda: reports.training_report(
                storage=self.ctx.storage, study_name=self.ctx.study_name, trials=self.trials, metric=self.cfg.hpo.metric
            )
        )
        self.next(self.join)

    @card(type="blank", id=cards.CARD_ID)
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def join(self, inputs):
        """The best complete trial (stages/select.py); the card shows the Optuna history."""
        from stages.select import search_stopped, select_best
        from trainflow.app import reports

        self.merge_artifacts(inputs, include=["ctx"])
        self.best, self.trial_records = select_best(cfg=self.cfg, ctx=self.ctx)
        self.search_stopped = search_stopped(cfg=self.cfg, ctx=self.ctx)
        cards.show(
            lambda: reports.hpo_report(
                storage=self.ctx.storage,
                study_name=self.ctx.study_name,
                records=self.trial_records,
                best=self.best,
                hpo=self.cfg.hpo,
            )
        )
        self.next(self.refit)

    @checkpoint(show_card=False)
    @trial_retry
    @trial_resources
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def refit(self):
        """With hpo.refit, the best configuration trained again on train + validation
        (stages/refit.py; metaflow-checkpoint saves each checkpoint and restores the latest on
        @retry); without, the best trial's model goes on as it is."""
        self.model_dir, self.refit_result = self.best.model_dir, None
        if self.cfg.hpo.refit:
            from stages.refit import refit_model

            loaded, save = task_checkpoints(refit=self.best.number)
            self.refit_result = refit_model(cfg=self.cfg, ctx=self.ctx, best=self.best, resume_dir=loaded,
                                            on_checkpoint=save)  # fmt: skip
            self.model_dir = self.refit_result.model_dir
        self.distilled, self.distilling = None, "on" if self.cfg.distill.enabled else "off"
        self.next({"on": self.teacher, "off": self.export}, condition="distilling")

    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def teacher(self):
        """The students, the teacher's outputs and the students' study (stages/distill.py)."""
        from stages.distill import prepare_distillation

        self.plan = prepare_distillation(cfg=self.cfg, ctx=self.ctx, best=self.best, teacher_dir=self.model_dir,
                                         refitted=self.refit_result is not None)  # fmt: skip
        self.student_workers = self.plan.workers
        self.next(self.distill, foreach="student_workers")

    @card(type="blank", id=cards.CARD_ID)
    @checkpoint(show_card=False)
    @trial_retry
    @trial_resources
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def distill(self):
        """One student worker's trials (stages/distill.py); resumable and retried like a trial."""
        from stages.distill import run_students
        from trainflow.app import reports

        loaded, save = task_checkpoints(student_worker=self.input)
        self.student_trials = run_students(cfg=self.cfg, ctx=self.ctx, plan=self.plan, worker=self.input,
                                           resume_dir=loaded, on_checkpoint=save)  # fmt: skip
        cards.show(lambda: reports.training_report(storage=self.ctx.storage, study_name=self.plan.study_name,
                                                   trials=self.student_trials, metric=self.cfg.hpo.metric))  # fmt: skip
        self.next(self.pick)

    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def pick(self, inputs):
        """The student that ships, or the teacher (stages/distill.py); export builds on it."""
        from stages.distill import pick_student

        # Only what was set before the fan-out: each distill task also carries its own (its trials,
        # @checkpoint's records of the checkpoints it saved), which differ between tasks.
        self.merge_artifacts(inputs, include=["ctx", "best", "trial_records", "search_stopped", "refit_result",
                                              "model_dir", "plan"])  # fmt: skip
        self.distilled = pick_student(cfg=self.cfg, ctx=self.ctx, plan=self.plan, best=self.best)
        self.model_dir = self.distilled.model_dir
        self.next(self.export)

    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def export(self):
        """ONNX export and the parity gate (stages/export.py)."""
        from stages.export import export_and_check

        self.exported = export_and_check(cfg=self.chosen_cfg, ctx=self.ctx, model_dir=self.model_dir,
                                         refitted=self.refit_result is not None, distilled=self.distilled)  # fmt: skip
        self.next(self.quantize)

    @card(type="blank", id=cards.CARD_ID)
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def quantize(self):
        """INT8 recipe search behind the accuracy gate (stages/quantize.py)."""
        from stages.quantize import quantize_model
        from trainflow.app import reports

        self.quant = quantize_model(cfg=self.chosen_cfg, ctx=self.ctx, exported=self.exported)
        cards.show(lambda: reports.quantize_report(parity=self.exported.parity, quant=self.quant))
        self.next(self.publish)

    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def publish(self):
        """Package, registry, lineage, cost and records (stages/publish.py), priced from the run's
        task timings (flows/trainflow_timings.py)."""
        from trainflow_timings import task_timings

        from stages.publish import publish_run

        self.package = publish_run(
            cfg=self.cfg,
            ctx=self.ctx,
            best=self.best,
            records=self.trial_records,
            exported=self.exported,
            quant=self.quant,
            pathspec=current.pathspec,
            timings=task_timings(flow_name=current.flow_name, run_id=current.run_id),
            resumed_as=trainflow_liveness.resumed_as(),
            refit=self.refit_result,
            stopped=self.search_stopped,
            distilled=self.distilled,
        )
        self.next(self.end)

    @card(type="blank", id=cards.CARD_ID)
    @step
    @fails_in_one_line
    @trainflow_liveness.beating
    def end(self):
        """Print where the package is and its headline metrics (stages/summary.py)."""
        from stages.summary import summarize
        from trainflow.app import reports

        summary = summarize(self.package.path)
        print("Published package:", self.package.path)
        print(json.dumps(summary, indent=2))
        cards.show(lambda: reports.package_report(package=self.package, summary=summary))


if __name__ == "__main__":
    errors.main(TrainFlow)
