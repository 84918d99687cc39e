"""Task timings read through the Metaflow client (flows/trainflow_timings.py) from a real, running
Metaflow run, and priced by trainflow.records.cost."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.tiny import ROOT
from trainflow.core.config import ComputeConfig, CostConfig
from trainflow.records.cost import declared_resources, price_tasks

RATES = CostConfig(cpu_core_hour=0.04, memory_gb_hour=0.005, gpu_hour={"default": 2.5, "h100": 4.0}, gpu_type="h100")


FLOW = textwrap.dedent(
    """
    import time
    from metaflow import FlowSpec, current, step

    class TimingFlow(FlowSpec):
        @step
        def start(self):
            self.items = [0, 1]
            self.next(self.work, foreach="items")

        @step
        def work(self):
            time.sleep(1.0)
            self.next(self.join)

        @step
        def join(self, inputs):
            # What the publish step does: read the run's timings while the run is in flight.
            from trainflow_timings import task_timings
            self.timings = task_timings(flow_name=current.flow_name, run_id=current.run_id)
            self.next(self.end)

        @step
        def end(self):
            pass

    if __name__ == "__main__":
        TimingFlow()
    """
)


@pytest.mark.integration
def test_task_timings_from_a_running_metaflow_run(tmp_path: Path) -> None:
    from metaflow import Runner
    from trainflow_timings import task_timings

    from trainflow.core.errors import RunMetadataError

    flow = tmp_path / "timing_flow.py"
    flow.write_text(FLOW)
    root = ROOT
    env = {**os.environ, "METAFLOW_USER": "cost-test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "flows"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    with Runner(str(flow), show_output=False, cwd=str(tmp_path), env=env).run() as running:
        run = running.run
        assert run.successful, running.stderr
    timings = run["join"].task.data.timings
    assert [t.step for t in timings] == ["start", "work", "work", "join"]
    assert all(t.started.tzinfo is not None for t in timings)
    done, (own,) = timings[:-1], timings[-1:]
    assert all(t.finished is not None and t.finished >= t.started for t in done)
    assert own.finished is None, "the reading task is still running"
    assert all((t.finished - t.started).total_seconds() >= 1.0 for t in done if t.step == "work")
    assert done[0].finished <= done[1].started + timedelta(seconds=1), "start finishes before the foreach begins"
    # The arithmetic accepts them as they come.
    per_step, default = declared_resources(compute=ComputeConfig(), cost=RATES)
    cost = price_tasks(timings=timings, resources=per_step, default=default, rates=RATES, now=datetime.now(UTC))
    assert cost.total > 0 and [s.step for s in cost.by_step()] == ["start", "work", "join"]
    with pytest.raises(RunMetadataError, match="no run TimingFlow/999999"):
        task_timings(flow_name="TimingFlow", run_id="999999")
