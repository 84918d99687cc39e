"""Optuna search across foreach workers sharing one persistent study.

Each worker asks its own trials from the shared study (so TPE sees every finished trial),
trains, reports each validation pass for the pruner, and tells its result. Trials are owned by
a worker (user attr `worker`) and each worker runs a fixed quota of finished (COMPLETE or
PRUNED) trials, so the total is exactly `hpo.n_trials` with no race between workers.

When a worker dies (kill -9, lost node), two mechanisms recover its trial, and neither counts
it twice:
  1. The same worker comes back (@retry, `resume`): it continues its trial left RUNNING, from
     the trial's latest intact checkpoint (the one metaflow-checkpoint loaded, or the local one
     under `<run dir>/trials/trial-NNNN/checkpoint`, whichever is further).
  2. Heartbeats (`hpo.heartbeat_interval`): a running trial beats every interval; any worker
     that is about to ask a trial first fails the RUNNING trials silent for longer than
     `hpo.heartbeat_grace_period` (FAIL is not a finished state, so no quota counts it) and
     Optuna's RetryHeartbeatStaleTrialCallback re-queues each one once (`stale_trial_retries`)
     as a WAITING trial with the same parameters, which the next `ask` takes. The re-run
     continues from the failed trial's checkpoint with the failed trial's seed.
A worker that comes back refreshes its own trial's heartbeat before failing anybody's, so a
trial whose owner is back is continued (1), not failed (2).

Optuna 5's JournalStorage has no heartbeat (only RDBStorage implements optuna's BaseHeartbeat;
upstream request https://github.com/optuna/optuna/issues/6615; its PR #6622 was closed),
so `HeartbeatJournalStorage` (trainflow/search/journal.py) adds one: a file per running trial beside the journal whose mtime is
the last beat. RDB URLs get RDBStorage's own heartbeat.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from trainflow.core.config import HpoConfig, RunConfig, expand_env
from trainflow.core.errors import ConfigError
from trainflow.data.dataset import SplitData
from trainflow.records.tracking import TrialLogger, lineage_artifact, lineage_ref, trial_run
from trainflow.search.journal import HeartbeatJournalStorage, journal_storage

if TYPE_CHECKING:
    from trainflow.training.train import Hyperparams, TrainResult

# trainflow.training.train (torch, transformers: ~2 s to import) is imported where a trial trains, so the
# steps and tools that only read a study (join, cards, the CLI) start without it.

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Trial user attr: the trial's logged values per step ({"step", "train/loss", "val/<metric>", ...}).
CURVES_ATTR = "curves"


@dataclass
class TrialRecord:
    number: int
    state: str
    worker: int | None
    params: dict[str, Any]
    value: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    model_dir: str | None = None
    duration_s: float | None = None
    steps: int | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_storage(spec: str | optuna.storages.BaseStorage, hpo: HpoConfig | None = None) -> optuna.storages.BaseStorage:
    """A journal file path, or an RDB URL (contains '://'); with heartbeats when `hpo` enables them."""
    if isinstance(spec, optuna.storages.BaseStorage):
        return spec
    try:
        spec = expand_env(spec)  # `${VAR}`: how a password reaches an RDB URL without entering the config
    except KeyError as err:
        raise ConfigError("hpo.storage", [str(err.args[0])]) from None
    if "://" not in spec:
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
    if hpo is None or hpo.heartbeat_interval == 0:
        return optuna.storages.RDBStorage(spec) if "://" in spec else journal_storage(Path(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=hpo.stale_trial_retries)
        if "://" in spec:
            return optuna.storages.RDBStorage(
                spec,
                heartbeat_interval=hpo.heartbeat_interval,
                grace_period=hpo.heartbeat_grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    return HeartbeatJournalStorage(
        Path(spec),
        heartbeat_interval=hpo.heartbeat_interval,
        grace_period=hpo.heartbeat_grace_period,
        stale_trial_callback=retry,
    )


def make_pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    # The pruner is not stored in the study: every worker must build the same one.
    if cfg.hpo.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=cfg.train.eval_every)


def open_study(
    cfg: RunConfig, storage: str | optuna.storages.BaseStorage, study_name: str, sampler_seed: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists (safe to call from every worker)."""
    return optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage, cfg.hpo),
        direction=cfg.hpo.direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + sampler_seed, n_startup_trials=cfg.hpo.n_workers),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, cfg: RunConfig) -> Hyperparams:
    """The search space, declared inline; a continued trial gets its stored values back."""
    from trainflow.training.train import Hyperparams

    space = cfg.hpo.search_space
    return Hyperparams(
        learning_rate=trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        weight_decay=trial.suggest_float("weight_decay", *space.weight_decay),
        warmup_ratio=trial.suggest_float("warmup_ratio", *space.warmup_ratio),
        batch_size=cfg.train.batch_size,
        max_steps=cfg.train.max_steps,
    )


def worker_quota(n_trials: int, n_workers: int, worker: int) -> int:
    return n_trials // n_workers + (1 if worker < n_trials % n_workers else 0)


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        out.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                worker=t.user_attrs.get("worker"),
                params=dict(t.params),
                value=t.value,
                metrics=t.user_attrs.get("metrics", {}),
                model_dir=t.user_attrs.get("model_dir"),
                duration_s=duration,
                steps=t.user_attrs.get("steps"),
                resumed_from_step=t.user_attrs.get("resumed_from_step"),
            )
        )
    return out


def run_worker(
    *,
    cfg: RunConfig,
    storage: str,
    study_name: str,
    worker: int,
    train: SplitData,
    validation: SplitData,
    work_dir: Path,
    group: str,
    resume_dir: Path | None = None,
    on_checkpoint: Any = None,
) -> list[TrialRecord]:
    """Run this worker's quota of trials; return the records of the trials it ran.

    SIGTERM or SIGUSR1 (SLURM's warning before preemption or the time limit) makes the running
    trial save a checkpoint and raise TrainingInterrupted; the trial stays RUNNING and the
    next attempt of this worker continues it. `resume_dir` is a checkpoint loaded by the caller
    (metaflow-checkpoint); local checkpoints under `work_dir` are found without it."""
    import torch

    from trainflow.training.train import cpu_threads

    torch.set_num_threads(cpu_threads(cfg.train.num_threads, cfg.hpo.n_workers))
    with stop_on_signals() as stop_requested:
        study = open_study(cfg, open_storage(storage, cfg.hpo), study_name, sampler_seed=worker)
        quota = worker_quota(cfg.hpo.n_trials, cfg.hpo.n_workers, worker)
        ran: list[int] = []
        while True:
            trial = _continue_own_trial(study, worker)
            if trial is None:
                _fail_stale_trials(study)
                mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker]
                if sum(t.state in FINISHED for t in mine) >= quota:
                    break
                trial = _ask(study)  # a re-queued (WAITING) trial first, else a new one
                trial.set_user_attr("worker", worker)
                if (origin := _retried_from(trial)) is not None:
                    log.info("worker %d: trial %d re-runs trial %d (failed by the heartbeat)", worker, trial.number,
                             origin)  # fmt: skip
            resume = _latest_checkpoint(cfg, trial, work_dir, resume_dir)
            with _heartbeat(study, trial, cfg.hpo.heartbeat_grace_period) as beat_lost:
                stop = (lambda: stop_requested() or beat_lost()) if cfg.hpo.heartbeat_interval else stop_requested
                _run_trial(cfg, study, trial, train, validation, work_dir, group, resume, on_checkpoint, stop)
            ran.append(trial.number)
        return [r for r in trial_records(study) if r.number in ran]


def _continue_own_trial(study: optuna.Study, worker: int) -> optuna.Trial | None:
    """This worker's trial left RUNNING by an earlier attempt, claimed with a fresh heartbeat
    before any worker fails stale trials (so a returning owner continues it), or None."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker:
            continue
        _beat(study, t._trial_id)
        if study._storage.get_trial(t._trial_id).state != TrialState.RUNNING:
            continue  # failed as stale just before the claim: its re-queued copy is asked instead
        log.info("worker %d: continuing trial %d left running by an earlier attempt", worker, t.number)
        return optuna.Trial(study, t._trial_id)
    return None


def _beat(study: optuna.Study, trial_id: int) -> None:
    storage = study._storage
    if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number not in before:
            log.warning("trial %d: no heartbeat for over the grace period (its worker died); failed and re-queued"
                        " as allowed by hpo.stale_trial_retries", t.number)  # fmt: skip


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # ask/tell (not study.optimize) is how foreach workers share a study; we beat ourselves.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    _beat(study, trial._trial_id)
    return trial


def _retry_history(trial: optuna.Trial) -> list[int]:
    """The trials this one re-runs (set by RetryHeartbeatStaleTrialCallback); [] for a new trial."""
    return list(trial.storage.get_trial_system_attrs(trial._trial_id).get("retry_history", []))


def _retried_from(trial: optuna.Trial) -> int | None:
    history = _retry_history(trial)
    return history[0] if history else None


def trial_seed(cfg: RunConfig, trial: optuna.Trial) -> int:
    """A re-queued trial keeps the seed of the trial it re-runs, so it can continue its checkpoint."""
    origin = _retried_from(trial)
    return cfg.seed + (trial.number if origin is None else origin)


def trial_dir(work_dir: Path, number: int) -> Path:
    return work_dir / "trials" / f"trial-{number:04d}"


def _latest_checkpoint(cfg: RunConfig, trial: optuna.Trial, work_dir: Path, loaded: Path | None) -> Path | None:
    """The furthest intact checkpoint of this trial, or of the trials it re-runs: the one the
    caller loaded (metaflow-checkpoint, @retry) or a local one under `work_dir` (kept across
    `resume`, which gives tasks new ids and so loads nothing). Only a checkpoint made with this
    trial's hyperparameters and seed qualifies.

    Workaround: metaflow-checkpoint 0.2.14's default load_policy "fresh" loads nothing in a resumed
    run, and "eager" makes a new run load the previous run's final checkpoint; no upstream issue
    was found (https://github.com/outerbounds/metaflow-checkpoint), so the local copy is used."""
    from trainflow.training.checkpoints import checkpoint_candidates, read_one_checkpoint
    from trainflow.training.train import CHECKPOINT_DIR

    lineage = {trial.number, *_retry_history(trial)}
    roots = [loaded, *(trial_dir(work_dir, n) / CHECKPOINT_DIR for n in sorted(lineage))]
    folders = [f for root in roots if root is not None and root.is_dir() for f in checkpoint_candidates(root)]
    hparams, seed = asdict(suggest(trial, cfg)), trial_seed(cfg, trial)
    best: tuple[int, Path] | None = None
    for folder in folders:
        meta = read_one_checkpoint(folder)
        if (
            meta is None
            or meta.get("trial") not in lineage
            or meta.get("hparams") != hparams
            or meta.get("seed") != seed
        ):
            continue
        if best is None or meta["step"] > best[0]:
            best = (meta["step"], folder)
    if best is not None:
        log.info("trial %d: continuing from checkpoint %s (step %d)", trial.number, best[1], best[0])
    return None if best is None else best[1]


# A beat that fails is retried this often per interval before the thread logs and waits again.
BEAT_RETRIES = 3


@contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial, grace_period: float) -> Iterator[Callable[[], bool]]:
    """Beat every `heartbeat_interval` seconds in a thread while the trial runs; yield `lost()`,
    true once no beat has succeeded for half the grace period (then the trial must stop itself,
    checkpointed, before other workers fail it as stale). A failing beat (an OSError of the
    shared filesystem, a database hiccup) is retried and logged, never fatal to the thread.
    Without heartbeats: a no-op whose `lost()` is always false."""
    storage = study._storage
    if not optuna.storages._heartbeat.is_heartbeat_enabled(storage):
        yield lambda: False
        return
    interval = storage.get_heartbeat_interval()  # type: ignore[attr-defined]
    stop, lost = threading.Event(), threading.Event()
    last_ok = [time.monotonic()]

    def beat_once() -> None:
        for attempt in range(1, BEAT_RETRIES + 1):
            try:
                storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
            except Exception as err:  # noqa: BLE001 - any storage error: retried, then reported below
                log.warning("trial %d: heartbeat failed (attempt %d of %d): %s", trial.number, attempt, BEAT_RETRIES,
                            err)  # fmt: skip
                if stop.wait(min(1.0, interval / BEAT_RETRIES)):
                    return
                continue
            last_ok[0] = time.monotonic()
            return
        if time.monotonic() - last_ok[0] > grace_period / 2 and not lost.is_set():
            log.error("trial %d: no heartbeat for %.0f s (half the %d s grace period): stopping the trial with a"
                      " checkpoint before other workers fail it as stale", trial.number,
                      time.monotonic() - last_ok[0], grace_period)  # fmt: skip
            lost.set()

    def beat() -> None:
        while not stop.wait(interval):
            beat_once()

    beat_once()
    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield lost.is_set
    finally:
        stop.set()
        thread.join()


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[Callable[[], bool]]:
    """Yield a `stop_requested()` that turns true once one of `signals` arrives."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop.is_set
        return

    def request_stop(signum: int, _frame: object) -> None:
        log.warning("received %s: checkpointing and stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield stop.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_trial(
    cfg: RunConfig,
    study: optuna.Study,
    trial: optuna.Trial,
    train: SplitData,
    validation: SplitData,
    work_dir: Path,
    group: str,
    resume_dir: Path | None,
    on_checkpoint: Any,
    stop_requested: Callable[[], bool],
) -> None:
    from trainflow.training.train import train_model

    hparams = suggest(trial, cfg)
    metric = cfg.hpo.metric

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        report_and_prune(trial, metric, step, metrics[metric], hparams.max_steps)

    out_dir = trial_dir(work_dir, trial.number)
    with trial_run(
        tracking=cfg.tracking,
        run_id=f"{group}-trial-{trial.number}",
        group=group,
        name=f"trial-{trial.number}",
        config={"trial": trial.number, "hparams": asdict(hparams), "run_config": cfg.public_dump()},
        directory=work_dir,
        points=trial.user_attrs.get(CURVES_ATTR),  # what an earlier attempt recorded
    ) as tlog:

        def checkpointed(folder: Path) -> None:
            # The curve so far is stored with each checkpoint, so a resumed attempt keeps it.
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            if on_checkpoint is not None:
                on_checkpoint(folder)

        try:
            result = train_model(
                cfg=cfg,
                hparams=hparams,
                train=train,
                validation=validation,
                out_dir=out_dir,
                seed=trial_seed(cfg, trial),
                resume_dir=resume_dir,
                on_checkpoint=checkpointed,
                on_eval=on_eval,
                log_values=tlog.log,
                checkpoint_tags={"trial": trial.number},
                stop_requested=stop_requested,
            )
        except optuna.TrialPruned as pruned:
            log.info("%s", pruned)
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            tlog.summary({"state": "PRUNED"})
            return
        _record_complete(cfg, study, trial, result, tlog, group)


def _record_complete(
    cfg: RunConfig, study: optuna.Study, trial: optuna.Trial, result: TrainResult, tlog: TrialLogger, group: str
) -> None:
    """Store a finished trial's results as user attrs, tell the study, log its model artifact."""
    trial.set_user_attr("metrics", result.metrics)
    trial.set_user_attr("model_dir", result.model_dir)
    trial.set_user_attr("steps", result.steps_run + result.resumed_from_step)
    trial.set_user_attr("resumed_from_step", result.resumed_from_step)
    trial.set_user_attr(CURVES_ATTR, tlog.points)
    study.tell(trial, result.metrics[cfg.hpo.metric])
    tlog.log_artifact(
        lineage_artifact(
            model_name=cfg.name,
            kind="trial-model",
            run_key=group,
            trial=trial.number,
            path=result.model_dir,
            parents=(lineage_ref(cfg.name, "dataset", group),),
            metadata={"trial": trial.number, "params": trial.params, "metrics": result.metrics},
        )
    )
    tlog.summary({"state": "COMPLETE", **{f"best/{k}": v for k, v in result.metrics.items()}})


def report_and_prune(trial: optuna.Trial, metric: str, step: int, value: float, max_steps: int) -> None:
    """Report a validation value; raise TrialPruned if the pruner says so. At the last step the
    trial is done and completes: pruning it there would only discard finished work (the median
    pruner would otherwise prune every below-median trial at its end)."""
    trial.report(value, step)
    if step < max_steps and trial.should_prune():
        raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} ({metric}={value:.4f})")


def best_trial(study: optuna.Study) -> TrialRecord:
    """The best COMPLETE trial by the study's direction. Raises ValueError if none completed."""
    best = study.best_trial  # ValueError when no trial is complete
    return next(r for r in trial_records(study) if r.number == best.number)
