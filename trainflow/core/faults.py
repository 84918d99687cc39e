"""Test hook: hold a step at a named point so that a fault test can kill the run right there.

Inactive unless `TRAINFLOW_FAULT_PAUSE` names the point and `TRAINFLOW_TEST_MODE=1` is set too
(tests set both for one run and never the pause for the `resume` that follows), so a stray
variable in a production environment cannot make a step sleep. When it does, the process writes its pid to the file named by
`TRAINFLOW_FAULT_MARKER` and sleeps: the window in which the test sends a real SIGKILL. The
hook only makes the timing deterministic; nothing here simulates the fault itself.

`fault_raise` makes a point raise a full disk's or an exhausted memory's error instead
(TRAINFLOW_FAULT_RAISE, test mode only): export-write, int8-search.

Points: start, join, refit, export, quantize (after the work of each step, before it returns),
publish (package files copied into the hidden temporary folder, manifest not yet written),
publish-renamed (package renamed into place, Parquet records not yet written).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_ENV = "TRAINFLOW_FAULT_PAUSE"
RAISE_ENV = "TRAINFLOW_FAULT_RAISE"  # "<point>:ENOSPC" or "<point>:MemoryError" (test mode only)
MARKER_ENV = "TRAINFLOW_FAULT_MARKER"
TEST_MODE_ENV = "TRAINFLOW_TEST_MODE"  # must be "1" too: a stray PAUSE variable alone never stalls a real run


def fault_window(point: str) -> None:
    if os.environ.get(PAUSE_ENV) != point:
        return
    if os.environ.get(TEST_MODE_ENV) != "1":
        log.warning("%s=%s is set but %s is not 1: ignored (the pause is a test hook)", PAUSE_ENV, point,
                    TEST_MODE_ENV)  # fmt: skip
        return
    log.warning("fault window %r: pausing for a test to kill this process (pid %d)", point, os.getpid())
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{point} {os.getpid()}\n")
    time.sleep(3600)


def fault_raise(point: str) -> None:
    """Test hook: at `point`, raise what a full disk (`ENOSPC`) or exhausted memory (`MemoryError`)
    would raise there, when TRAINFLOW_FAULT_RAISE names the point and test mode is on."""
    wanted = os.environ.get(RAISE_ENV, "")
    if not wanted.startswith(f"{point}:") or os.environ.get(TEST_MODE_ENV) != "1":
        return
    kind = wanted.split(":", 1)[1]
    log.warning("fault %r at %r (test hook)", kind, point)
    if kind == "MemoryError":
        raise MemoryError()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<{point}>")
