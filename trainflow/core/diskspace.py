"""Free-space checks before large writes (checkpoints, packages).

A write that runs out of disk half-way leaves a truncated file behind and a confusing OSError;
checking first turns that into one clear `DiskSpaceError` with nothing written. The check asks
for the estimated size plus a margin (other processes write too, and filesystems reserve
blocks): `TRAINFLOW_DISK_MARGIN_BYTES`, default 32 MiB.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainflow.core.errors import DiskSpaceError, OutOfMemoryError

log = logging.getLogger(__name__)

MARGIN_ENV = "TRAINFLOW_DISK_MARGIN_BYTES"
DEFAULT_MARGIN_BYTES = 32 << 20


def margin_bytes() -> int:
    raw = os.environ.get(MARGIN_ENV, "")
    if not raw:
        return DEFAULT_MARGIN_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise DiskSpaceError(f"{MARGIN_ENV}={raw!r} is not a whole number of bytes") from None
    if value < 0:
        raise DiskSpaceError(f"{MARGIN_ENV}={raw!r} must be >= 0")
    return value


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_free_space(target: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError unless the filesystem that will hold `target` has `needed` bytes plus
    the margin free. `target` need not exist yet (its nearest existing parent is measured)."""
    margin = margin_bytes()
    free = shutil.disk_usage(_existing(Path(target))).free
    if free < needed + margin:
        raise DiskSpaceError(
            f"not enough disk for {what} at {target}: need {needed:,} bytes + {margin:,} margin "
            f"({MARGIN_ENV}), {free:,} free; nothing was written. Free space or move "
            "publish.run_root / publish.artifact_root to a larger disk."
        )
    log.debug("%s: %d bytes needed, %d free", what, needed, free)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def machine_limits(step: str, fix: str) -> Iterator[None]:
    """Turn a full disk or an exhausted memory inside `step` into one line naming the step and the
    fix (`fix`: what to change before `resume`), instead of a traceback; other errors pass."""
    try:
        yield
    except MemoryError:
        raise OutOfMemoryError(
            f"{step}: the machine ran out of memory; {fix}, then `python flows/train_flow.py resume`"
        ) from None
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        raise DiskSpaceError(
            f"{step}: the disk is full{where}; free space there (nothing was published), then"
            " `python flows/train_flow.py resume`"
        ) from None
