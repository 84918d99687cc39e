"""optuna-dashboard (a pinned dev dependency) against a real run's journal: it starts on
127.0.0.1, serves that run's study through its JSON API, and stops (issue 12)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_optuna_dashboard_serves_a_runs_study(tiny_flow_run) -> None:
    (journal,) = sorted((tiny_flow_run.root / "runs" / "tiny").glob("*/optuna.journal"))
    run_key = journal.parent.name
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(exe), str(journal), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.time() < deadline, "optuna-dashboard did not answer within 60 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    studies = json.loads(resp.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        names = {s["study_name"]: s for s in studies}
        assert f"tiny-{run_key}" in names
        study_id = names[f"tiny-{run_key}"]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0", timeout=10) as resp:
            detail = json.loads(resp.read())
        assert len(detail["trials"]) == 2 and {t["state"] for t in detail["trials"]} <= {"Complete", "Pruned"}
        with socket.create_connection(("127.0.0.1", port)):
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
