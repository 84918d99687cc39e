"""Test hook: hold a step at a named point so that a fault test can kill the run right there.

Inactive unless `TRAINFLOW_FAULT_PAUSE` names the point (tests set it for one run and never for
the `resume` that follows). When it does, the process writes its pid to the file named by
`TRAINFLOW_FAULT_MARKER` and sleeps: the window in which the test sends a real SIGKILL. The
hook only makes the timing deterministic; nothing here simulates the fault itself.

Points: start, join, export, quantize (after the work of each step, before it returns),
publish (package files copied into the hidden temporary folder, manifest not yet written),
publish-renamed (package renamed into place, Parquet records not yet written).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_ENV = "TRAINFLOW_FAULT_PAUSE"
MARKER_ENV = "TRAINFLOW_FAULT_MARKER"


def fault_window(point: str) -> None:
    if os.environ.get(PAUSE_ENV) != point:
        return
    log.warning("fault window %r: pausing for a test to kill this process (pid %d)", point, os.getpid())
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{point} {os.getpid()}\n")
    time.sleep(3600)
