"""Which checkpoint to resume from: reading checkpoint folders and choosing one (no torch).

A checkpoint folder holds the weights, the trainer state and a `meta.json` with the step and the
SHA-256 of each file (trainflow/training/checkpoints.py writes them). A folder is trusted only when
its meta.json names exactly those files and every digest matches; one that does not (half
written, truncated, tampered with) is skipped with a warning saying why.

`latest_checkpoint` is the one place a checkpoint is chosen: the search worker calls it over
every folder a trial may continue from, and training calls it for the folder it is given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.core.io import VersionedDir, sha256_file
from trainflow.core.layout import CHECKPOINT_META, TRAINER_STATE, WEIGHTS

log = logging.getLogger(__name__)

CHECKPOINT_FILES = frozenset({WEIGHTS, TRAINER_STATE})


@dataclass(frozen=True)
class Checkpoint:
    """An intact checkpoint folder and its meta.json (`step`, the caller's tags, file digests)."""

    folder: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def checkpoint_folders(path: Path) -> list[Path]:
    """Checkpoint folders at `path`, newest first: `path` itself when it holds a meta.json (a single
    checkpoint, e.g. one metaflow-checkpoint restored), else the versions of the VersionedDir at
    `path` (its LATEST pointer's first)."""
    if (path / CHECKPOINT_META).is_file():
        return [path]
    return VersionedDir(path).candidates()


def _meta_problem(meta: object) -> str | None:
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or not isinstance(meta.get("step"), int):
        return "meta.json is not a mapping with an integer 'step' and a 'files' mapping"
    files = meta["files"]
    if set(files) != CHECKPOINT_FILES or not all(isinstance(d, str) for d in files.values()):
        return f"meta.json lists files {sorted(map(str, files))}, expected exactly {sorted(CHECKPOINT_FILES)}"
    return None


def _files_problem(folder: Path, meta: dict[str, Any]) -> str | None:
    for name, digest in meta["files"].items():
        target = folder / name
        if target.is_symlink() or not target.is_file() or sha256_file(target) != digest:
            return f"{name} is missing or corrupt"
    return None


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / CHECKPOINT_META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("checkpoint %s: unreadable meta.json (%s); ignoring this checkpoint", folder, err)
        return None
    problem = _meta_problem(meta)
    if problem is not None:
        log.warning("checkpoint %s: %s; ignoring this checkpoint", folder, problem)
        return None
    return meta


def latest_checkpoint(
    roots: Iterable[Path | None], accept: Callable[[dict[str, Any]], bool] | None = None
) -> Checkpoint | None:
    """The intact checkpoint with the highest step among every folder of `roots` (each a
    checkpoint folder or a versioned checkpoint root; None and missing roots are skipped) whose
    meta.json `accept` takes. Files are hashed newest first, so only the chosen one and any
    corrupt newer ones are read."""
    found: list[tuple[int, int, Path, dict[str, Any]]] = []
    order = 0
    for root in roots:
        if root is None or not Path(root).is_dir():
            continue
        for folder in checkpoint_folders(Path(root)):
            meta = _read_meta(folder)
            if meta is not None and (accept is None or accept(meta)):
                found.append((-meta["step"], order, folder, meta))
                order += 1
    for _, _, folder, meta in sorted(found, key=lambda f: (f[0], f[1])):
        problem = _files_problem(folder, meta)
        if problem is None:
            return Checkpoint(folder, meta)
        log.warning("checkpoint %s: %s; ignoring this checkpoint", folder, problem)
    return None


def read_checkpoint_meta(path: Path | None) -> dict[str, Any] | None:
    """meta.json of the newest intact checkpoint at `path` (a checkpoint folder, or a versioned
    checkpoint root), or None."""
    found = latest_checkpoint([path])
    return None if found is None else found.meta
