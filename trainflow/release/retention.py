"""Retention: delete what the environment's rule says is no longer needed.

- Staging versions: per model, the newest `keep_last_versions` staging versions stay (by
  metadata `created_at`, then version name); older staging versions are deleted and marked
  `deleted` in the registry (an event each).
- Trial checkpoints: `<run_root>/<model>/<run>/trials/trial-*/checkpoint` folders (and the
  students' under `<run>/distill/trials/`) (trainflow/core/layout.py; the resumable
  state: weights, optimizer, RNG, every version and any temporary folder of an interrupted save),
  whose newest file is older than `keep_checkpoints_days`. The trials' `best/` model folders are
  kept.
- metaflow-checkpoint's copies of those checkpoints in a local Metaflow datastore
  (`<datastore>/mf.checkpoints/checkpoints/artifacts/.../*.mfchckpt.*`, what `@checkpoint` saved
  and what a retried or resumed task loads), by the same age rule. With a copy go the metadata
  entries that point to it (the per-task and per-scope records and their `latest` pointers), so
  a later resume finds no checkpoint and starts the trial over instead of failing on a missing
  one. An S3 datastore is not walked: an S3 lifecycle rule on the `mf.checkpoints/` prefix does
  the same there.
- Production and archived versions are never deleted: only versions whose registry stage is
  `staging` are candidates, decided under the registry lock so a concurrent promote cannot
  race it.

A folder is first renamed to a hidden `.deleting-*` name, then removed, so a half-deleted
package never looks complete. With `dry_run` the plan is returned and nothing is touched.
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from trainflow.core.config import RetentionRule
from trainflow.core.errors import RetentionError
from trainflow.core.layout import trial_checkpoints
from trainflow.release.registry import (
    PROTECTED,
    RegistryFile,
    RegistryState,
    has_registry,
    locked,
    metadata_or_none,
    packages_on_disk,
)


@dataclass(frozen=True)
class Deletion:
    kind: Literal["version", "checkpoint", "datastore-checkpoint"]
    path: str
    bytes: int
    reason: str
    model_name: str | None = None
    version: str | None = None


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _newest_mtime(path: Path) -> float:
    return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))])


CHECKPOINT_STORE = Path("mf.checkpoints") / "checkpoints"


def _old(path: Path, now: datetime, rule: RetentionRule) -> str | None:
    """Why `path` is old enough to delete, or None if it is not."""
    newest = _newest_mtime(path)
    if newest >= now.timestamp() - rule.keep_checkpoints_days * 86400:
        return None
    age_days = (now.timestamp() - newest) / 86400
    return f"newest file {age_days:.1f} days old > keep_checkpoints_days {rule.keep_checkpoints_days}"


def _datastore_copies(datastore_root: Path) -> list[Path]:
    """metaflow-checkpoint's saved checkpoints (a folder, or one file for its tar format)."""
    store = datastore_root / CHECKPOINT_STORE / "artifacts"
    if not store.is_dir():
        return []
    return sorted(p for p in store.rglob("*.mfchckpt.*") if ".mfchckpt." not in p.parent.name)


def _records_by_key(datastore_root: Path) -> dict[str, list[Path]]:
    """metaflow-checkpoint's metadata records (per task, per scope, and their `latest`
    pointers) grouped by the `key` of the copy each one points to."""
    records: dict[str, list[Path]] = {}
    for folder in ("metadata", "artifact_metadata"):
        for record in (datastore_root / CHECKPOINT_STORE / folder).rglob("*"):
            if not record.is_file():
                continue
            try:
                key = json.loads(record.read_text()).get("key")
            except (ValueError, UnicodeDecodeError, AttributeError):
                continue  # not a checkpoint record: left alone
            if isinstance(key, str):
                records.setdefault(key, []).append(record)
    return records


def _plan(
    *,
    artifact_root: Path,
    run_root: Path,
    rule: RetentionRule,
    now: datetime,
    state: RegistryState,
    datastore_root: Path | None,
) -> list[Deletion]:
    plan = []
    for model, versions in packages_on_disk(artifact_root).items():
        # Only versions the registry records as staging: an unregistered folder (or one being
        # published: it is hidden until registered) is never a candidate.
        staging = [v for v in versions if state.recorded_stage(model, v) == "staging"]
        metas = {v: metadata_or_none(artifact_root / model / v) for v in staging}
        ages = {v: ((m.created_at if m else None) or "", v) for v, m in metas.items()}
        newest_first = sorted(staging, key=lambda v: ages[v], reverse=True)
        for version in reversed(newest_first[rule.keep_last_versions :]):  # oldest first
            path = artifact_root / model / version
            plan.append(
                Deletion(
                    "version",
                    str(path),
                    _size(path),
                    f"staging, older than the newest {rule.keep_last_versions} staging versions of {model}",
                    model,
                    version,
                )  # fmt: skip
            )
    if run_root.is_dir():
        for folder in trial_checkpoints(run_root):
            if folder.is_dir() and (why := _old(folder, now, rule)):
                plan.append(Deletion("checkpoint", str(folder), _size(folder), why))
    if datastore_root is not None:
        for copy in _datastore_copies(datastore_root):
            if why := _old(copy, now, rule):
                plan.append(
                    Deletion("datastore-checkpoint", str(copy), _size(copy), f"metaflow-checkpoint copy, {why}")
                )
    return plan


def _remove(path: Path) -> None:
    doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(doomed)
    if doomed.is_dir():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()


def apply_retention(
    *,
    artifact_root: Path,
    run_root: Path,
    rule: RetentionRule,
    dry_run: bool,
    now: datetime | None = None,
    datastore_root: Path | None = None,
) -> list[Deletion]:
    """Delete (or with `dry_run` only list) what `rule` does not keep; return the list.

    `datastore_root` is a local Metaflow datastore (the `.metaflow` folder) whose
    metaflow-checkpoint copies are cleaned too; None leaves the datastore alone.

    Raises:
        RetentionError: a planned version turned out not to be staging (a guard) or a folder
            could not be removed; what was deleted before that is recorded.
        RegistryError: the registry lock could not be taken.
    """
    now = now or datetime.now(UTC)
    failure = None
    # No registry: no version is registered as staging, so only checkpoints can go; nothing is created.
    registry = (
        locked(artifact_root)
        if has_registry(artifact_root)
        else nullcontext(RegistryState(artifact_root, RegistryFile()))
    )
    with registry as state:
        plan = _plan(artifact_root=artifact_root, run_root=run_root, rule=rule, now=now, state=state,
                     datastore_root=datastore_root)  # fmt: skip
        if dry_run:
            return plan
        # Stop at the first failure but leave the block normally, so the registry records the
        # deletions already done.
        records = _records_by_key(datastore_root) if datastore_root is not None else {}
        for item in plan:
            try:
                if item.kind == "version":
                    stage = state.recorded_stage(item.model_name or "", item.version or "")
                    if stage in PROTECTED or stage != "staging":
                        failure = f"refusing to delete {item.path}: its stage is {stage}, not staging"
                        break
                    _remove(Path(item.path))
                    state.set_stage(item.model_name or "", item.version or "", "deleted", action="retention",
                                    detail=item.reason)  # fmt: skip
                elif item.kind == "datastore-checkpoint":
                    assert datastore_root is not None
                    copy = Path(item.path)
                    # The records first: nothing is ever left pointing to a missing copy.
                    for record in records.get(copy.relative_to(datastore_root).as_posix(), []):
                        record.unlink()
                    _remove(copy)
                else:
                    _remove(Path(item.path))
            except OSError as err:
                failure = f"could not delete {item.path}: {err}"
                break
    if failure:
        raise RetentionError(failure + "; the deletions before it were done and recorded")
    return plan
