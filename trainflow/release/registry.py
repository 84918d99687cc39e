"""Model registry over the artifact root: which published version of each model is in
production.

Stages: every published version starts in `staging`. `promote` makes a version `production`
and moves the previous production version to `archived`. `rollback` makes the previous
production version `production` again and moves the current one to `archived` (kept, never
deleted by retention, and promotable again). Retention moves old staging versions to `deleted`.

State lives in `<artifact_root>/_registry/registry.json`, changed only under the file lock
`_registry/registry.lock` and written atomically (trainflow.core.io.atomic_write_json). Every
change is also an event (model, version, action, from, to, who, when, sequence number) in the
Parquet store, one file per event: `_records/registry/<time>-<id>.parquet`. Events are written
right after the state, still under the lock.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainflow.core.config import RegistryConfig
from trainflow.core.errors import MetadataError, PackageVerificationError, PublishError, RegistryError
from trainflow.core.faults import fault_window
from trainflow.core.io import atomic_write_json, fsync_dir, sha256_file
from trainflow.core.layout import MANIFEST, REGISTRY_LOCK, REGISTRY_STATE, SIGNATURE, package_dir, registry_dir
from trainflow.records.store import RegistryEvent, write_rows
from trainflow.release.metadata import Metrics, PackageMetadata, read_metadata
from trainflow.release.package import Assembled, check_name, read_manifest, verify_package
from trainflow.release.signing import key_path, verify_signature

Event = RegistryEvent  # the registry's changes are its Parquet records

LOCK_TIMEOUT_S = 120.0
Stage = Literal["staging", "production", "archived", "deleted"]
Listed = Literal["staging", "production", "archived", "deleted", "unregistered"]
PROTECTED: tuple[Stage, ...] = ("production", "archived")


def actor() -> str:
    """Who makes a change: $METAFLOW_USER if set, else the login name."""
    return os.environ.get("METAFLOW_USER") or getpass.getuser()


@dataclass(frozen=True)
class VersionInfo:
    model_name: str
    version: str
    stage: Listed
    path: str
    present: bool
    created_at: str | None
    metrics: Metrics | None  # None when the package's metadata is gone or unreadable


def packages_on_disk(artifact_root: Path) -> dict[str, list[str]]:
    """{model_name: [version, ...]} of every folder `<root>/<model>/<version>` with a manifest."""
    out: dict[str, list[str]] = {}
    if not artifact_root.is_dir():
        return out
    for model in sorted(artifact_root.iterdir()):
        if not model.is_dir() or model.name.startswith(("_", ".")):
            continue
        versions = sorted(v.name for v in model.iterdir() if not v.name.startswith(".") and (v / MANIFEST).is_file())
        if versions:
            out[model.name] = versions
    return out


def metadata_or_none(package: Path) -> PackageMetadata | None:
    """The package's metadata, or None when it is missing or unreadable (listing, retention)."""
    try:
        return read_metadata(package)
    except MetadataError:
        return None


class VersionEntry(BaseModel):
    """One version in registry.json: its stage, who changed it when, and the digests recorded when
    it was published or registered (absent for versions registered before digests were kept)."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage
    changed_at: str
    changed_by: str
    files: dict[str, str] | None = None
    manifest_sha256: str | None = None
    signature_sha256: str | None = None  # model.sig's, for a signed package


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    versions: dict[str, VersionEntry] = Field(default_factory=dict)
    production_history: list[str] = Field(default_factory=list)


class RegistryFile(BaseModel):
    """`_registry/registry.json`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(1, alias="schema")
    seq: int = 0
    models: dict[str, ModelEntry] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RegistryState:
    """The registry while its lock is held. Changes collect events; `locked` saves both."""

    def __init__(self, artifact_root: Path, data: RegistryFile) -> None:
        self.root = artifact_root
        self.data = data
        self.events: list[Event] = []

    @property
    def models(self) -> list[str]:
        return sorted(self.data.models)

    def _entry(self, model_name: str, version: str) -> VersionEntry | None:
        model = self.data.models.get(model_name)
        return None if model is None else model.versions.get(version)

    def versions(self, model_name: str) -> list[str]:
        model = self.data.models.get(model_name)
        return [] if model is None else list(model.versions)

    def stage(self, model_name: str, version: str) -> Stage | None:
        """The version's recorded stage; None for a version the registry never saw (a folder on
        disk it did not publish is unregistered: it is never promoted, rolled back to or deleted)."""
        return self.recorded_stage(model_name, version)

    def digests(self, model_name: str, version: str) -> tuple[dict[str, str], str] | None:
        """({file: sha256}, manifest sha256) recorded when the version was published, if any."""
        entry = self._entry(model_name, version)
        if entry is None or entry.files is None or entry.manifest_sha256 is None:
            return None
        return dict(entry.files), entry.manifest_sha256

    def signature_digest(self, model_name: str, version: str) -> str | None:
        entry = self._entry(model_name, version)
        return None if entry is None else entry.signature_sha256

    def production(self, model_name: str) -> str | None:
        history = self.history(model_name) if model_name in self.data.models else []
        return history[-1] if history else None

    def history(self, model_name: str) -> list[str]:
        return self.data.models.setdefault(model_name, ModelEntry()).production_history

    def recorded_stage(self, model_name: str, version: str) -> Stage | None:
        entry = self._entry(model_name, version)
        return None if entry is None else entry.stage

    def set_stage(
        self,
        model_name: str,
        version: str,
        to: Stage,
        *,
        action: str,
        detail: str = "",
        new: bool = False,
        digests: tuple[dict[str, str], str] | None = None,
        signature: str | None = None,
    ) -> Event:
        """Move a version to `to` and collect the event; `new` records it as coming from no
        stage; `digests` ({file: sha256}, manifest sha256) are recorded with it (at publish)."""
        before = None if new else self.stage(model_name, version)
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        who = actor()
        versions = self.data.models.setdefault(model_name, ModelEntry()).versions
        old = versions.get(version)
        files, manifest, sig = (old.files, old.manifest_sha256, old.signature_sha256) if old else (None, None, None)
        if digests is not None:
            files, manifest, sig = dict(digests[0]), digests[1], signature
        versions[version] = VersionEntry(stage=to, changed_at=now, changed_by=who, files=files,
                                         manifest_sha256=manifest, signature_sha256=sig)  # fmt: skip
        self.data.seq += 1
        event = Event(self.data.seq, model_name, version, action, before, to, who, now, detail, manifest)
        self.events.append(event)
        return event


def _state_path(artifact_root: Path) -> Path:
    return registry_dir(artifact_root) / REGISTRY_STATE


def _load(artifact_root: Path) -> RegistryFile:
    path = _state_path(artifact_root)
    if not path.is_file():
        return RegistryFile()
    try:
        return RegistryFile.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path} is not valid JSON ({err}); restore it from the registry events") from None
    except ValidationError as err:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        raise RegistryError(f"{path} does not match the registry's schema ({problem}); restore it from the"
                            " registry events") from None  # fmt: skip


def _save(artifact_root: Path, data: RegistryFile) -> None:
    atomic_write_json(_state_path(artifact_root), data.to_json())


def has_registry(artifact_root: Path) -> bool:
    return _state_path(artifact_root).is_file()


def require_registry(artifact_root: Path) -> None:
    """RegistryError (creating nothing) unless `artifact_root` holds a registry."""
    if not has_registry(artifact_root):
        raise RegistryError(f"no registry at {artifact_root} (is --artifact-root right?)")


@contextmanager
def locked(artifact_root: Path, timeout_s: float = LOCK_TIMEOUT_S, *, create: bool = False) -> Iterator[RegistryState]:
    """Hold the registry lock; on a clean exit save the state, then write its events.

    Raises:
        RegistryError: the lock was not free within `timeout_s`, or the state file is corrupt.
    """
    if not create:
        require_registry(artifact_root)
    folder = registry_dir(artifact_root)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / REGISTRY_LOCK), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise RegistryError(
            f"registry lock {folder / REGISTRY_LOCK} still held after {timeout_s:.0f} s; retry"
        ) from None
    try:
        state = RegistryState(artifact_root, _load(artifact_root))
        yield state
        if state.events:
            _save(artifact_root, state.data)
            for e in state.events:
                stamp = e.at.replace(":", "").replace("-", "").replace("+0000", "").replace(".", "")
                write_rows(artifact_root, f"{stamp}-{e.seq:08d}-{uuid.uuid4().hex[:8]}", [e])
    finally:
        lock.release()


def stage_version(*, artifact_root: Path, model_name: str, stage: Stage) -> str | None:
    """The version of `model_name` in `stage` as the registry says now, read without the lock (the
    state file is replaced atomically): production's current version; for another stage the
    version moved into it last. None when there is none.

    Raises:
        RegistryError: no registry at `artifact_root`, or its state file is corrupt.
    """
    require_registry(artifact_root)
    data = _load(artifact_root)
    model = data.models.get(model_name)
    if model is None:
        return None
    if stage == "production":
        return model.production_history[-1] if model.production_history else None
    entries = [(e.changed_at, v) for v, e in model.versions.items() if e.stage == stage]
    return max(entries)[1] if entries else None


def resolve_model(*, artifact_root: Path, version: str, model_name: str | None = None) -> str:
    """The model a version belongs to. Raises RegistryError if no or several models have it, or
    if a name is not one plain path component."""
    check_names(version=version, model_name=model_name)
    if model_name is not None:
        return model_name
    owners = [m for m, versions in packages_on_disk(artifact_root).items() if version in versions]
    if not owners:
        raise RegistryError(f"no package version {version!r} under {artifact_root}")
    if len(owners) > 1:
        raise RegistryError(f"version {version!r} exists for models {owners}; name one with --model")
    return owners[0]


def _single_model(artifact_root: Path, state: RegistryState, model_name: str | None) -> str:
    if model_name is not None:
        return model_name
    models = sorted(set(packages_on_disk(artifact_root)) | set(state.models))
    if len(models) != 1:
        raise RegistryError(f"the registry at {artifact_root} holds models {models}; name one with --model")
    return models[0]


def check_names(*, version: str | None = None, model_name: str | None = None) -> None:
    """RegistryError unless each given name is one plain path component (the config's `name`
    pattern): `..`, `../x` or `a/b` never reach a path."""
    for what, value in (("version", version), ("model name", model_name)):
        if value is None:
            continue
        try:
            check_name(value, what)
        except PublishError as err:
            raise RegistryError(str(err)) from None


def _problems(err: PackageVerificationError) -> str:
    return "; ".join(line.strip(" -") for line in str(err).splitlines()[1:]) or str(err)


def _placement_problem(root: Path, package: Path) -> str | None:
    """Why a version folder cannot be trusted where it is: a symbolic link, or a folder that
    resolves outside the artifact root (another store's files would be vouched for)."""
    if package.is_symlink() or package.parent.is_symlink():
        return f"{package} is a symbolic link; a registry vouches only for folders inside its artifact root"
    if not package.resolve().is_relative_to(Path(root).resolve()):
        return f"{package} resolves to {package.resolve()}, outside the artifact root {root}"
    return None


def verify_version(
    state: RegistryState, model_name: str, version: str, public_key: Path | None = None
) -> dict[str, str]:
    """Verify a package against its manifest and the digests recorded when it was published: the
    one verification of a registered package (the CLI, promote, rollback and the loader use it).

    Raises:
        PackageVerificationError: the registry never saw the version (unregistered), or it fails
            verification (the message names each file that differs).
    """
    package = package_dir(state.root, model_name, version)
    if problem := _placement_problem(state.root, package):
        raise PackageVerificationError(f"{model_name} {version} fails verification: {problem}")
    if state.recorded_stage(model_name, version) is None:
        raise PackageVerificationError(
            f"{model_name} {version} is unregistered: the registry at {state.root} never saw it, so nothing vouches"
            f" for {package}; publish it with the pipeline, or adopt it as it is with `trainflow register {version}`"
        )
    recorded = state.digests(model_name, version)
    try:
        if recorded is None:  # registered before digests were recorded: the manifest is all there is
            return verify_package(package)
        files = verify_package(package, expected=recorded[0], expected_manifest=recorded[1],
                               expected_signature=state.signature_digest(model_name, version))  # fmt: skip
    except PackageVerificationError as err:
        raise PackageVerificationError(f"{model_name} {version} fails verification: {_problems(err)}") from None
    if public_key is not None:
        verify_signature(package, public_key)
    return files


def _verified(state: RegistryState, model_name: str, version: str, doing: str, public_key: Path | None = None) -> Path:
    try:
        verify_version(state, model_name, version, public_key)
    except PackageVerificationError as err:
        raise PackageVerificationError(f"refusing to {doing} {model_name} {version}: {err}") from None
    return package_dir(state.root, model_name, version)


def verify(*, artifact_root: Path, model_name: str, version: str, public_key: Path | None = None) -> dict[str, str]:
    """`verify_version` under the registry lock (the CLI and the package loader). Raises
    RegistryError (creating nothing) when the root holds no registry."""
    check_names(version=version, model_name=model_name)
    with locked(artifact_root) as state:
        return verify_version(state, model_name, version, public_key)


def _test_metric(meta: PackageMetadata, split: Literal["fp32", "int8"], metric: str, who: str) -> float:
    value = meta.metrics.test_metric(split, metric)
    if value is None:
        raise RegistryError(f"{who}: metadata.json has no metrics.test_{split}_onnx.{metric} to compare")
    return value


def check_regression(*, candidate: PackageMetadata, production: PackageMetadata, policy: RegistryConfig) -> list[str]:
    """Problems (empty if none) where the candidate's FP32 or INT8 test metric is worse than
    production's by more than `policy.max_regression`."""
    problems = []
    for split in ("fp32", "int8"):
        new = _test_metric(candidate, split, policy.metric, f"version {candidate.version}")
        old = _test_metric(production, split, policy.metric, f"production {production.version}")
        worse = old - new if policy.direction == "maximize" else new - old
        if worse > policy.max_regression + 1e-12:
            problems.append(
                f"test_{split}_onnx.{policy.metric} {new:.4f} is worse than production {production.version}'s"
                f" {old:.4f} by {worse:.4f} > registry.max_regression {policy.max_regression}"
            )
    return problems


def _metadata(package: Path, doing: str) -> PackageMetadata:
    try:
        return read_metadata(package)
    except MetadataError as err:
        raise RegistryError(f"refusing to {doing}: {err}") from None


def install(*, artifact_root: Path, assembled: Assembled) -> Event:
    """Move an assembled package into place and register it as `staging` with its digests, in
    one hold of the registry lock: no moment where a published package is unregistered (and so
    invisible to retention's rules or deletable as an old one).

    Raises:
        PublishError: the version appeared meanwhile (versions are immutable).
    """
    model_name, version = assembled.target.parent.name, assembled.target.name
    try:
        with locked(artifact_root, create=True) as state:
            if assembled.target.exists() or state.recorded_stage(model_name, version) not in (None, "deleted"):
                raise PublishError(f"package {assembled.target} exists already; versions are immutable")
            fault_window("publish-install")
            os.rename(assembled.tmp, assembled.target)
            fsync_dir(assembled.target.parent)
            new = state.recorded_stage(model_name, version) is None
            return state.set_stage(model_name, version, "staging", action="publish", new=new,
                                   digests=(assembled.files, assembled.manifest_sha256),
                                   signature=assembled.signature_sha256)  # fmt: skip
    except BaseException:
        shutil.rmtree(assembled.tmp, ignore_errors=True)
        raise
    finally:
        assembled.release()


def register(*, artifact_root: Path, model_name: str, version: str) -> Event:
    """Adopt a package folder the registry never saw as `staging`, recording its digests as they
    are now (the package must be self-consistent). For folders published by other means."""
    check_names(version=version, model_name=model_name)
    package = package_dir(artifact_root, model_name, version)
    if not (package / MANIFEST).is_file():
        raise RegistryError(f"cannot register {model_name} {version}: no package at {package}")
    if problem := _placement_problem(artifact_root, package):
        raise PackageVerificationError(f"cannot register {model_name} {version}: {problem}")
    # Adopting a package is how a registry can begin (a folder copied in by hand), so it may create one.
    with locked(artifact_root, create=True) as state:
        recorded = state.recorded_stage(model_name, version)
        if recorded not in (None, "deleted"):
            raise RegistryError(f"{model_name} {version} is registered already (stage {recorded})")
        try:
            files = verify_package(package)
        except PackageVerificationError as err:
            raise PackageVerificationError(f"cannot register {model_name} {version}: {_problems(err)}") from None
        meta = _metadata(package, f"register {model_name} {version}")
        if (meta.model_name, meta.version) != (model_name, version):
            raise PackageVerificationError(
                f"cannot register {package}: its metadata.json names {meta.model_name} {meta.version}, not"
                f" {model_name} {version} (a copy renamed by hand?)"
            )
        manifest = read_manifest(package)[1]
        sig = package / SIGNATURE
        return state.set_stage(model_name, version, "staging", action="register", new=recorded is None,
                               digests=(files, manifest), signature=sha256_file(sig) if sig.is_file() else None)  # fmt: skip


def ensure_registered(*, artifact_root: Path, model_name: str, version: str) -> Event | None:
    """`register` unless the version is recorded already: a package in place that an earlier
    attempt of this run published before registration was part of the rename. The new event,
    or None."""
    with locked(artifact_root, create=True) as state:
        if state.recorded_stage(model_name, version) not in (None, "deleted"):
            return None
    return register(artifact_root=artifact_root, model_name=model_name, version=version)


def promote(
    *,
    artifact_root: Path,
    version: str,
    policy: RegistryConfig,
    model_name: str | None = None,
    public_key: Path | None = None,
) -> list[Event]:
    """Make `version` production; the previous production version becomes archived. With a
    public key (`public_key`, or `policy.public_key`) the package's signature must verify with it.

    Raises:
        RegistryError: unknown or deleted version, already production, no registry, or its test
            metric regresses against production beyond the margin.
        PackageVerificationError: the package fails verification, or its signature (when a key is
            given) is missing, another key's or broken.
    """
    require_registry(artifact_root)
    if public_key is None and policy.public_key:
        public_key = key_path(policy.public_key, "registry.public_key")
    model_name = resolve_model(artifact_root=artifact_root, version=version, model_name=model_name)
    with locked(artifact_root) as state:
        stage = state.stage(model_name, version)
        if stage is None and (artifact_root / model_name / version / MANIFEST).is_file():
            verify_version(state, model_name, version)  # raises: unregistered
        if stage is None or stage == "deleted":
            raise RegistryError(f"cannot promote {model_name} {version}: no such package (stage {stage})")
        if stage == "production":
            raise RegistryError(f"{model_name} {version} is production already")
        package = _verified(state, model_name, version, "promote", public_key)
        current = state.production(model_name)
        detail = f"previous production: {current}" if current else "first production version"
        if current is not None:
            problems = check_regression(
                candidate=_metadata(package, f"promote {model_name} {version}"),
                production=_metadata(artifact_root / model_name / current, f"promote {model_name} {version}"),
                policy=policy,
            )
            if problems:
                raise RegistryError(f"refusing to promote {model_name} {version}: " + "; ".join(problems))
            state.set_stage(model_name, current, "archived", action="promote", detail=f"replaced by {version}")
        state.set_stage(model_name, version, "production", action="promote", detail=detail)
        state.history(model_name).append(version)
        return list(state.events)


def rollback(*, artifact_root: Path, model_name: str | None = None) -> list[Event]:
    """Make the previous production version production again; the current one becomes archived.

    Raises:
        RegistryError: no earlier production version, or its package fails verification.
    """
    check_names(model_name=model_name)
    with locked(artifact_root) as state:
        model_name = _single_model(artifact_root, state, model_name)
        history = state.history(model_name)
        if len(history) < 2:
            raise RegistryError(
                f"{model_name} has no previous production version to roll back to (history: {history or 'empty'})"
            )
        current, previous = history[-1], history[-2]
        _verified(state, model_name, previous, "roll back to")
        state.set_stage(model_name, current, "archived", action="rollback", detail=f"rolled back to {previous}")
        state.set_stage(model_name, previous, "production", action="rollback", detail=f"replaces {current}")
        history.pop()
        return list(state.events)


def list_versions(*, artifact_root: Path) -> list[VersionInfo]:
    """Every version on disk or in the registry (deleted ones included), by model then age."""
    state = RegistryState(artifact_root, _load(artifact_root))
    on_disk = packages_on_disk(artifact_root)
    out = []
    for model in sorted(set(on_disk) | set(state.models)):
        versions = set(on_disk.get(model, [])) | set(state.versions(model))
        for version in versions:
            package = artifact_root / model / version
            meta = metadata_or_none(package)
            out.append(
                VersionInfo(
                    model_name=model,
                    version=version,
                    stage=state.stage(model, version)
                    or ("unregistered" if (package / MANIFEST).is_file() else "deleted"),
                    path=str(package),
                    present=(package / MANIFEST).is_file(),
                    created_at=meta.created_at if meta else None,
                    metrics=meta.metrics if meta else None,
                )
            )
    return sorted(out, key=lambda v: (v.model_name, v.created_at or "", v.version))


def registry_events(*, artifact_root: Path) -> list[Event]:
    """Every recorded event, in sequence order."""
    from trainflow.records.store import registry_events as recorded

    return recorded(artifact_root)
