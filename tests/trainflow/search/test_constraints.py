"""Deployment limits with the measured INT8 cost and its cache, warm start from an earlier run,
the refit of the best configuration, and the model checks of a searched space."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.search_helpers import work_on_study
from tests.tiny import build_tiny_bert, rt_texts
from trainflow.convert.deploy_cost import architecture_key, measure_deploy_cost
from trainflow.core import layout
from trainflow.core.config import RunConfig, parse_config_dict
from trainflow.core.errors import ModelLoadError, SearchError
from trainflow.search.refit import refit_best
from trainflow.search.study import best_trial, open_study, trial_records
from trainflow.search.warm_start import warm_start


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's family at 6 layers of width 64: a bigger INT8 file, a slower one."""
    return build_tiny_bert(tmp_path_factory.mktemp("deep-bert"), rt_texts(), layers=6, hidden=64)


def _cost(cache: Path):
    calls: list[str] = []

    def deploy_cost(trial_cfg: RunConfig) -> dict[str, float]:
        calls.append(trial_cfg.model.base)
        return measure_deploy_cost(trial_cfg, texts=rt_texts(16), cache_dir=cache)

    return deploy_cost, calls


# --- the deployed cost and its cache ------------------------------------------------------------


def test_the_deployed_cost_is_measured_once_per_architecture(tmp_path, tiny_cfg, tiny_model_dir) -> None:
    tiny_cfg["hpo"]["constraints"] = {"max_latency_ms": 100}
    cfg = parse_config_dict(tiny_cfg)
    cache = tmp_path / "cache"
    first = measure_deploy_cost(cfg, texts=rt_texts(16), cache_dir=cache)
    assert first["latency_ms"] > 0 and 0.01 < first["size_mb"] < 1
    (entry,) = cache.glob("*.json")
    stored = json.loads(entry.read_text())
    assert stored["base"] == str(tiny_model_dir) and stored["max_length"] == 32
    # Another learning rate is the same architecture: the cached figures, nothing measured.
    other_lr = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 0.5})})
    assert architecture_key(other_lr) == architecture_key(cfg)
    mtime = entry.stat().st_mtime_ns
    assert measure_deploy_cost(other_lr, texts=rt_texts(16), cache_dir=cache) == first
    assert entry.stat().st_mtime_ns == mtime
    # Another max_length is another architecture.
    longer = cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_length": 64})})
    assert architecture_key(longer) != architecture_key(cfg)


def test_trials_over_the_limits_are_not_trained_and_the_best_is_feasible(
    tmp_path, tiny_cfg, tiny_model_dir, deep_model_dir, splits
) -> None:
    """Two depths; a size limit between their INT8 files: only the shallow base may be chosen."""
    cache = tmp_path / "cache"
    deploy_cost, calls = _cost(cache)
    base = parse_config_dict(tiny_cfg)
    small = measure_deploy_cost(base, texts=rt_texts(16), cache_dir=cache)["size_mb"]
    deep = base.model_copy(update={"model": base.model.model_copy(update={"base": str(deep_model_dir)})})
    big = measure_deploy_cost(deep, texts=rt_texts(16), cache_dir=cache)["size_mb"]
    assert big > 2 * small
    tiny_cfg["hpo"].update(n_trials=4, n_workers=1, pruner="none", sampler="random",
                           constraints={"max_size_mb": (small + big) / 2},
                           search_space={"model.base": {"choices": [str(tiny_model_dir), str(deep_model_dir)]},
                                         "train.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}})  # fmt: skip
    tiny_cfg["seed"] = 1  # a draw of both bases in 4 trials
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    ran = work_on_study(cfg, storage, 0, splits, tmp_path, deploy_cost=deploy_cost)
    assert len(calls) == 4 and len(list(cache.glob("*.json"))) == 2, "measured once per base, then cached"
    by_base = {b: [r for r in ran if r.params["model.base"] == b] for b in (str(tiny_model_dir), str(deep_model_dir))}
    assert all(by_base.values()), "both bases were drawn"
    for r in by_base[str(deep_model_dir)]:
        assert (r.state, r.feasible, r.model_dir) == ("PRUNED", False, None) and r.size_mb == pytest.approx(big)
    for r in by_base[str(tiny_model_dir)]:
        assert (r.state, r.feasible) == ("COMPLETE", True) and r.size_mb == pytest.approx(small)
    study = open_study(cfg, storage, "s")
    assert best_trial(study).params["model.base"] == str(tiny_model_dir)
    # The samplers see the infeasible trials (pruned with Optuna's constraint values, > 0 = over).
    infeasible = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    assert infeasible and all(t.constraints["size_mb"] > 0 for t in infeasible)
    assert all(max(t.constraints.values()) <= 0 for t in study.trials if t.user_attrs.get("feasible") is True)


def test_no_trial_within_the_limits_is_one_line_naming_the_fastest(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=2, n_workers=1, constraints={"max_latency_ms": 1e-6})
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    deploy_cost, _ = _cost(tmp_path / "cache")
    ran = work_on_study(cfg, storage, 0, splits, tmp_path, deploy_cost=deploy_cost)
    assert [r.state for r in ran] == ["PRUNED", "PRUNED"]
    with pytest.raises(SearchError) as info:
        best_trial(open_study(cfg, storage, "s"))
    msg = str(info.value)
    assert "is within hpo.constraints (2 over them): the fastest, trial 0, runs its INT8 model in" in msg
    assert "\n" not in msg


# --- warm start --------------------------------------------------------------------------------


def _earlier_run(cfg: RunConfig, run_id: str, values: list[tuple[dict, float]]) -> Path:
    """An earlier run's study where the run keeps it: <run_root>/<model>/<run id>/optuna.journal."""
    journal = layout.run_dir(Path(cfg.publish.run_root), cfg.name, run_id) / layout.JOURNAL
    study = open_study(cfg, str(journal), f"{cfg.name}-{run_id}")
    dists = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
        "train.learning_rate": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
        "train.weight_decay": optuna.distributions.FloatDistribution(0.0, 1.0),
        "weight_decay": optuna.distributions.FloatDistribution(0.0, 1.0),
        "train.warmup_ratio": optuna.distributions.FloatDistribution(0.0, 1.0),
        "warmup_ratio": optuna.distributions.FloatDistribution(0.0, 1.0),
    }
    for params, value in values:
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=value))  # fmt: skip
    return journal


def test_warm_start_queues_the_earlier_best_trials_that_fit(tmp_path, tiny_cfg, splits, caplog) -> None:
    cfg = parse_config_dict(tiny_cfg)
    fits = {"train.learning_rate": 2e-4, "train.weight_decay": 0.05, "train.warmup_ratio": 0.1}
    legacy = {"learning_rate": 1e-4, "weight_decay": 0.02, "warmup_ratio": 0.0}  # an earlier release's names
    outside = {"train.learning_rate": 0.5, "train.weight_decay": 0.05, "train.warmup_ratio": 0.1}
    _earlier_run(cfg, "111", [(fits, 0.8), (legacy, 0.7), (outside, 0.9), (fits | {"train.weight_decay": 0.09}, 0.1)])
    tiny_cfg["hpo"].update(warm_start="111", warm_start_trials=3, n_trials=2, n_workers=1, pruner="none")
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "new.journal"), "s")
    notes = warm_start(study, cfg)
    assert notes == ["warm start: earlier trial 2 (0.9000) skipped: its train.learning_rate 0.5 is outside this"
                     " search space"]  # fmt: skip
    assert warm_start(study, cfg) == [] and len(study.trials) == 2, "queued once per study"
    ran = work_on_study(cfg, str(tmp_path / "new.journal"), 0, splits, tmp_path)
    assert [r.params for r in ran] == [fits, {f"train.{k}": v for k, v in legacy.items()}]


def test_warm_start_from_a_journal_path(tmp_path, tiny_cfg) -> None:
    cfg = parse_config_dict(tiny_cfg)
    fits = {"train.learning_rate": 2e-4, "train.weight_decay": 0.05, "train.warmup_ratio": 0.1}
    journal = _earlier_run(cfg, "222", [(fits, 0.8)])
    tiny_cfg["hpo"]["warm_start"] = str(journal)
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "new.journal"), "s")
    assert warm_start(study, cfg) == []
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("999", "hpo.warm_start: no run 999 of model tiny under"), ("nope/x.journal", "'nope/x.journal' is not a file")],
)
def test_a_warm_start_that_names_nothing_is_one_line(tmp_path, tiny_cfg, source, fragment) -> None:
    tiny_cfg["hpo"]["warm_start"] = source
    cfg = parse_config_dict(tiny_cfg)
    with pytest.raises(SearchError) as info:
        warm_start(open_study(cfg, str(tmp_path / "new.journal"), "s"), cfg)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- refit -------------------------------------------------------------------------------------


def test_refit_trains_the_best_configuration_on_train_and_validation(tmp_path, tiny_cfg, splits) -> None:
    from safetensors.torch import load_file

    tiny_cfg["hpo"].update(n_trials=2, n_workers=1, pruner="none", refit=True,
                           search_space={"train.batch_size": {"choices": [4, 8]},
                                         "train.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}})  # fmt: skip
    tiny_cfg["train"].update(max_steps=6, eval_every=3, checkpoint_every=2)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    work_on_study(cfg, storage, 0, splits, tmp_path)
    best = best_trial(open_study(cfg, storage, "s"))
    assert best.best_step in (3, 6)
    train, val = splits
    result = refit_best(cfg=cfg, best=best, train=train, validation=val, work_dir=tmp_path)
    assert (result.trial, result.steps, result.train_rows) == (best.number, best.best_step, 80)
    assert Path(result.model_dir).parent == tmp_path / layout.REFIT_DIR / layout.BEST_DIR
    assert result.model_dir.endswith(layout.step_version(best.best_step)), "the last step's model is kept"
    refit_w, trial_w = (
        load_file(f"{result.model_dir}/model.safetensors"),
        load_file(f"{best.model_dir}/model.safetensors"),
    )
    assert any(not (refit_w[k] == trial_w[k]).all() for k in trial_w), "a model trained anew, not the trial's copy"
    ckpts = sorted((tmp_path / layout.REFIT_DIR / layout.CHECKPOINT_DIR).glob("step-*"))
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["refit"] == best.number and meta["params"] == best.params
    assert meta["hparams"]["batch_size"] == best.params["train.batch_size"]
    # Run again (a retry after the step died at its end): it continues from its last checkpoint.
    again = refit_best(cfg=cfg, best=best, train=train, validation=val, work_dir=tmp_path)
    assert again.resumed_from_step == meta["step"] and again.steps == result.steps


# --- the model checks of a searched space --------------------------------------------------------


def test_check_model_checks_every_base_and_the_largest_searched_values(tmp_path, tiny_cfg, tiny_model_dir) -> None:
    from trainflow.app.check import check_model

    tiny_cfg["hpo"]["search_space"] = {
        "model.base": {"choices": [str(tiny_model_dir), str(tmp_path / "missing")]},
        "model.frozen_layers": {"low": 0, "high": 4}, "model.max_length": {"choices": [32, 512]},
    }  # fmt: skip
    tiny_cfg["model"]["freeze_embeddings"] = True
    with pytest.raises(ModelLoadError) as info:
        check_model(parse_config_dict(tiny_cfg))
    lines = str(info.value).splitlines()
    assert any(line.startswith(f"hpo.search_space.model.base choice '{tmp_path / 'missing'}':") for line in lines)
    assert "hpo.search_space.model.frozen_layers: 4 is above the 2 layers of" in str(info.value)
    assert "hpo.search_space.model.max_length: 512 exceeds the 128 positions of" in str(info.value)
    tiny_cfg["hpo"]["search_space"] = {"model.base": {"choices": [str(tiny_model_dir)]},
                                       "model.frozen_layers": {"low": 0, "high": 2}}  # fmt: skip
    (report,) = check_model(parse_config_dict(tiny_cfg))
    assert report.n_layers == 2


def test_dropout_sets_every_rate_of_each_family() -> None:
    from transformers import AutoConfig

    from trainflow.training.modeling import dropout_fields, set_dropout

    expected = {
        "bert": {"hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"},
        "distilbert": {"dropout", "attention_dropout", "seq_classif_dropout", "qa_dropout"},
        "gpt2": {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"},
        "modernbert": {"embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"},
    }
    for family, names in expected.items():
        config = AutoConfig.for_model(family)
        assert names <= set(dropout_fields(config)), (family, dropout_fields(config))
        set_dropout(config, 0.25)
        assert all(getattr(config, n) == 0.25 for n in dropout_fields(config))
        assert not any(isinstance(getattr(config, n), bool) for n in dropout_fields(config))


def test_label_smoothing_changes_the_training_loss_only(tiny_model_dir) -> None:
    import torch

    from trainflow.training.modeling import build_model

    model = build_model(task="classification", labels=["a", "b"], base=str(tiny_model_dir), label_smoothing=0.2)
    logits, labels = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    model.train(True)
    smoothed = float(model.loss(logits, labels))
    model.train(False)
    plain = float(model.loss(logits, labels))
    assert smoothed > plain + 0.5 and plain == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_trial_records_carry_cost_fields_into_the_records(tmp_path, tiny_cfg) -> None:
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "s.journal"), "s")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5,
                                              user_attrs={"latency_ms": 1.5, "size_mb": 2.0, "feasible": True}))  # fmt: skip
    (r,) = trial_records(study)
    assert (r.latency_ms, r.size_mb, r.feasible) == (1.5, 2.0, True)
