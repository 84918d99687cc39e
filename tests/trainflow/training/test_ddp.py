"""Data parallelism inside one trial, on CPU: 2 processes, gloo backend (trainflow/training/ddp.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from trainflow.training.ddp import DistEnv, broadcast_flag, broadcast_params, shard_indices, spawn

GLOBAL_BATCH = 8
LR = 0.5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL_BATCH, 4, generator=gen), torch.randn(GLOBAL_BATCH, 1, generator=gen)


def _model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(4, 1)


def _worker(rank: int, world_size: int, out: str, cfg_dict: dict) -> None:
    """Runs in each spawned process; writes what it saw to out/rank<r>.json."""
    import optuna

    from trainflow.core.config import parse_config_dict
    from trainflow.search.study import suggest

    cfg = parse_config_dict(cfg_dict)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def ask_and_suggest() -> dict:
        # Each rank's own sampler, seeded differently: without the broadcast, ranks would disagree.
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=100 + rank))
        trial = study.ask()
        return {"trial": trial.number, **asdict(suggest(trial, cfg))}

    local = ask_and_suggest()
    shared = broadcast_params(ask_and_suggest)
    prune = broadcast_flag(rank == 0)  # rank 0 says prune, rank 1 says go on

    # One data-parallel SGD step on this rank's shard of the global batch.
    x, y = _data()
    mine = shard_indices(list(range(GLOBAL_BATCH)), rank, world_size)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    loss = torch.nn.functional.mse_loss(model(x[mine]), y[mine])
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    weights = [p.detach().flatten().tolist() for p in model.module.parameters()]
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"local": local, "shared": shared, "prune": prune, "shard": mine, "weights": weights})
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from tests.tiny import tiny_config

    out = tmp_path_factory.mktemp("ddp")
    spawn(_worker, 2, str(out), tiny_config(out, out / "no-model-needed"), backend="gloo")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_rank_trains_rank_zeros_optuna_trial(ranks: list[dict]) -> None:
    r0, r1 = ranks
    assert r0["local"] != r1["local"], "control: ranks sampling on their own draw different trials"
    assert r0["shared"] == r1["shared"] == r0["local"], "every rank gets the parameters rank 0 sampled"
    assert set(r0["shared"]) >= {"learning_rate", "weight_decay", "warmup_ratio", "trial"}


def test_rank_zeros_pruning_decision_reaches_every_rank(ranks: list[dict]) -> None:
    assert [r["prune"] for r in ranks] == [True, True]


def test_data_parallel_step_equals_a_full_batch_step(ranks: list[dict]) -> None:
    assert sorted(ranks[0]["shard"] + ranks[1]["shard"]) == list(range(GLOBAL_BATCH))
    assert not set(ranks[0]["shard"]) & set(ranks[1]["shard"])
    x, y = _data()
    model = _model()
    torch.nn.functional.mse_loss(model(x), y).backward()
    with torch.no_grad():
        expected = [(p - LR * p.grad).flatten() for p in model.parameters()]
    for r in ranks:
        for got, want in zip(r["weights"], expected):
            torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-6)


def test_shard_indices_and_env() -> None:
    assert shard_indices([5, 6, 7, 8, 9], 0, 2) == [5, 7, 9]
    assert shard_indices([5, 6, 7, 8, 9], 1, 2) == [6, 8]
    with pytest.raises(ValueError):
        shard_indices([1], 2, 2)
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    assert DistEnv.from_environ({}).is_main
    # Without a process group the helpers are pass-throughs (single-GPU trials).
    assert broadcast_params(lambda: {"lr": 1.0}) == {"lr": 1.0}
    assert broadcast_flag(True) is True
