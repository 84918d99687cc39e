"""A `trainflow serve` process on a free loopback port, for the serving tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-m", "trainflow.app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    process: subprocess.Popen
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text()


@contextmanager
def server(*args: str, tmp_path: Path) -> Iterator[Running]:
    """`trainflow serve ARGS` on a free loopback port, ready (or the test fails with its log)."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([*CLI, "serve", *args, "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    running = Running(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{running.text()}")
            try:
                if httpx.get(f"{running.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not become ready:\n{running.text()}")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
