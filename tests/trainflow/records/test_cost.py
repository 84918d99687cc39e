"""Cost arithmetic on plain timings, and task timings read from a real (tiny) Metaflow run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainflow.core.config import ComputeConfig, CostConfig, parse_config_dict
from trainflow.core.errors import ConfigError, CostError
from trainflow.records.cost import TaskTiming, declared_resources, price_run, price_tasks

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RATES = CostConfig(cpu_core_hour=0.04, memory_gb_hour=0.005, gpu_hour={"default": 2.5, "h100": 4.0}, gpu_type="h100")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_each_task_costs_its_wall_time_times_its_steps_resources() -> None:
    compute = ComputeConfig(cpus=2, gpus=1, memory_mb=8192)
    per_step, default = declared_resources(compute=compute, cost=RATES)
    timings = [
        TaskTiming("start", "1", at(0), at(60)),
        TaskTiming("train", "2", at(60), at(1860)),  # 30 min
        TaskTiming("train", "3", at(60), at(960)),  # 15 min
        TaskTiming("publish", "9", at(2000), None),  # still running: priced up to `now`
    ]
    cost = price_tasks(timings=timings, resources=per_step, default=default, rates=RATES, now=at(2360))
    by_task = {t.task_id: t for t in cost.tasks}
    # start: 1 min x (1 core x 0.04 + 4 GiB x 0.005) = 0.06 / 60
    assert by_task["1"].cost == pytest.approx(0.06 / 60)
    # train, 30 min: 0.5 h x (2 x 0.04 + 1 x 4.0 (h100) + 8 x 0.005) = 0.5 x 4.12
    assert (by_task["2"].cpu_cost, by_task["2"].gpu_cost, by_task["2"].memory_cost) == pytest.approx((0.04, 2.0, 0.02))
    assert by_task["3"].cost == pytest.approx(0.25 * 4.12)
    assert by_task["9"].running and by_task["9"].seconds == 360 and by_task["9"].finished_at is None
    assert cost.total == pytest.approx(0.001 + 2.06 + 1.03 + 0.006)
    steps = cost.by_step()
    assert [s.step for s in steps] == ["start", "train", "publish"]
    assert steps[1].tasks == 2 and steps[1].seconds == 2700 and steps[1].cost == pytest.approx(3.09)
    summary = cost.summary()
    assert summary.total == pytest.approx(sum(s.cost for s in steps)) and summary.measured
    assert summary.gpu == pytest.approx(3.0) and summary.currency == "USD" and summary.tasks == 4


def test_an_unlisted_gpu_type_uses_the_default_rate() -> None:
    rates = CostConfig(gpu_hour={"default": 2.5, "h100": 4.0}, gpu_type="l4", cpu_core_hour=0, memory_gb_hour=0)
    per_step, default = declared_resources(compute=ComputeConfig(gpus=2), cost=rates)
    cost = price_tasks(timings=[TaskTiming("train", "1", at(0), at(3600))], resources=per_step, default=default,
                       rates=rates, now=at(3600))  # fmt: skip
    assert cost.total == pytest.approx(2 * 2.5)


def test_bad_timings_are_refused() -> None:
    per_step, default = declared_resources(compute=ComputeConfig(), cost=RATES)
    # A task ending before it starts (clock skew) is priced as 0 s: tests/faults/test_misleading.py.
    with pytest.raises(CostError, match="has no time zone"):
        price_tasks(timings=[TaskTiming("start", "1", datetime(2026, 1, 1), None)], resources=per_step,
                    default=default, rates=RATES, now=at(0))  # fmt: skip


def test_cost_config_problems_are_listed(tiny_cfg: dict) -> None:
    tiny_cfg["cost"] = {"gpu_hour": {"a100": -1.0}, "gpu_type": "v100", "cpu_hour": 1}
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    problems = info.value.problems
    assert any("cost.cpu_hour: unknown key" in p for p in problems)
    tiny_cfg["cost"].pop("cpu_hour")
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    assert info.value.problems == [
        "cost.gpu_hour.a100: -1.0 is negative; rates are >= 0",
        "cost.gpu_type: 'v100' has no rate in cost.gpu_hour ['a100'] and there is no 'default' rate; add one of them",
    ]


def test_price_run_uses_the_run_config(tiny_cfg: dict) -> None:
    tiny_cfg["compute"] = {"cpus": 4, "memory_mb": 2048}
    tiny_cfg["cost"] = {"cpu_core_hour": 1.0, "memory_gb_hour": 0.0}
    cfg = parse_config_dict(tiny_cfg)
    cost = price_run(cfg=cfg, timings=[TaskTiming("train", "5", at(0), at(1800)),
                                       TaskTiming("export", "6", at(1800), at(3600))], now=at(3600))  # fmt: skip
    assert [t.cost for t in cost.tasks] == pytest.approx([0.5 * 4, 0.5 * 1])
