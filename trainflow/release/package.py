"""The package format: its names, how it is assembled, its manifest and its verification.

Layout of `<artifact_root>/<model_name>/<version>/` (names in trainflow/core/layout.py):
  model.onnx, model_int8.onnx, config.json, head.json, tokenizer files, metadata.json, README.md
  (the model card), SHA256SUMS
A package is assembled in a hidden temporary folder beside its final place (marked in progress by
a lock its writer holds); trainflow/release/publish.py moves it into place under the registry
lock, which records the files' digests in the same step, so a crash never leaves a half-written
package that looks complete and nothing renamed into place is ever unregistered. A package vouches
for itself only through SHA256SUMS; `verify_package` also compares it with the registry's record,
made outside the package, so a package whose files and manifest were rewritten together is
caught. This module imports nothing of the registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.core.diskspace import ensure_free_space
from trainflow.core.errors import PackageVerificationError, PublishError
from trainflow.core.faults import fault_window
from trainflow.core.io import fsync_tree, sha256_file
from trainflow.core.layout import (
    MANIFEST,
    METADATA,
    MODEL_CARD,
    PACKAGE_FILES,
    PACKAGE_TEMP_PREFIX,
    REQUIRED_FILES,
    SIGNATURE,
)
from trainflow.release.metadata import PackageMetadata
from trainflow.release.modelcard import render as render_card
from trainflow.release.signing import sign_package

REQUIRED = REQUIRED_FILES


@dataclass(frozen=True)
class PackageResult:
    path: str
    version: str
    files: dict[str, str]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # model names and versions: one path component
_NAME = re.compile(NAME_PATTERN)
_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64})  (?P<name>.+)$")


def check_name(value: str, what: str) -> str:
    """`value` if it is one plain path component (the config's `name` pattern), else PublishError."""
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise PublishError(f"{what} {value!r} is not a plain name (letters, digits, '.', '_', '-'; no '/' or '..')")
    return value


@dataclass(frozen=True)
class Assembled:
    """A package written to a hidden temporary folder, not yet in place."""

    tmp: Path
    target: Path
    files: dict[str, str]  # name -> SHA-256, SHA256SUMS excluded
    manifest_sha256: str
    lock: Any  # the open lock file that marks `tmp` as in progress; released by `release`
    signature_sha256: str | None = None  # model.sig's, when the package is signed

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.lock.close()
        Path(self.lock.name).unlink(missing_ok=True)


def _owner_lock(tmp: Path) -> Any:
    """An exclusive lock beside `tmp` held while it is written, so cleaners tell a live writer's
    folder (locked) from a killed one's (lock free)."""
    fh = tmp.with_name(tmp.name + ".lock").open("w")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    return fh


def remove_stale_temps(model_root: Path, pattern: str) -> list[Path]:
    """Remove the temporary package folders matching `pattern` whose writer is gone (its lock
    can be taken); folders another live process is writing are left. Returns what was removed."""
    removed = []
    for tmp in sorted(p for p in model_root.glob(pattern) if p.is_dir()):
        lock_path = tmp.with_name(tmp.name + ".lock")
        with lock_path.open("a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        lock_path.unlink(missing_ok=True)
    return removed


def assemble_package(
    *, artifact_root: Path, sources: list[Path], metadata: PackageMetadata, signing_key: Path | None = None
) -> Assembled:
    """Copy the package files found in `sources` (first match wins), write metadata.json and
    SHA256SUMS into a hidden temporary folder beside `<artifact_root>/<model_name>/<version>`, and
    with `signing_key` model.sig over all of them (trainflow/release/signing.py).
    The registry moves it into place (`trainflow.release.registry.install`, via
    `trainflow.release.publish.publish_package`).

    Raises:
        PublishError: a bad name, the version exists already or a required file is missing.
        DiskSpaceError: the disk lacks room for the package (checked before anything is written).
    """
    model_name = check_name(metadata.model_name, "model name")
    version = check_name(metadata.version, "version")
    target = artifact_root / model_name / version
    if target.exists():
        raise PublishError(f"package {target} exists already; versions are immutable")
    chosen: dict[str, Path] = {}
    for name in PACKAGE_FILES:
        for src in sources:
            if (src / name).is_file():
                chosen[name] = src / name
                break
    missing = [n for n in REQUIRED if n != METADATA and n not in chosen]
    if missing:
        raise PublishError(f"cannot publish {model_name} {version}: missing {missing} in {sources}")
    needed = sum(p.stat().st_size for p in chosen.values()) + (1 << 20)
    target.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(target.parent, needed, f"package {model_name} {version}")
    tmp = target.parent / f"{PACKAGE_TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = _owner_lock(tmp)
    try:
        for name, src in chosen.items():
            shutil.copy2(src, tmp / name)
        fault_window("publish")
        metadata.write(tmp)
        others = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / MODEL_CARD).write_text(render_card(metadata, others), encoding="utf-8")
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = "".join(f"{d}  {n}\n" for n, d in digests.items()).encode()
        (tmp / MANIFEST).write_bytes(manifest)
        signature = sha256_file(sign_package(tmp, signing_key)) if signing_key is not None else None
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.close()
        raise
    return Assembled(tmp, target, digests, hashlib.sha256(manifest).hexdigest(), lock, signature)


def read_manifest(path: Path) -> tuple[dict[str, str], str, list[str]]:
    """({file: sha256}, SHA-256 of the manifest itself, problems) of a package's SHA256SUMS. Only
    plain file names are accepted: no folders, no '..', no absolute paths."""
    raw = (path / MANIFEST).read_bytes()
    listed: dict[str, str] = {}
    problems = []
    for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        m = _LINE.match(line)
        if m is None:
            problems.append(f"{MANIFEST} line {i}: not '<sha256>  <file name>'")
            continue
        name = m["name"]
        if not _NAME.fullmatch(name) or name in (".", "..", MANIFEST):
            problems.append(f"{MANIFEST} line {i}: {name!r} is not a plain file name of the package")
        elif name in listed:
            problems.append(f"{MANIFEST} line {i}: {name} is listed twice")
        else:
            listed[name] = m["digest"]
    return listed, hashlib.sha256(raw).hexdigest(), problems


def _entry_problems(path: Path, listed: dict[str, str]) -> list[str]:
    """The folder's entries (lstat: links are not followed) must be exactly the listed regular
    files plus SHA256SUMS (and model.sig, which signs them all)."""
    problems = []
    present = set()
    for entry in os.scandir(path):
        if entry.name == MANIFEST:
            continue
        if entry.name == SIGNATURE:
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                problems.append(f"{SIGNATURE}: not a regular file")
            continue
        present.add(entry.name)
        if entry.is_symlink():
            problems.append(f"{entry.name}: a symbolic link; a package holds only regular files")
        elif not entry.is_file(follow_symlinks=False):
            problems.append(f"{entry.name}: not a regular file")
        elif entry.name not in listed:
            problems.append(f"{entry.name}: present but not in the manifest")
    problems += [f"{name}: listed but missing" for name in sorted(set(listed) - present)]
    return problems


def verify_package(
    path: Path,
    expected: dict[str, str] | None = None,
    expected_manifest: str | None = None,
    expected_signature: str | None = None,
) -> dict[str, str]:
    """Check a package against its SHA256SUMS and, when given, against the digests the registry
    recorded at publish time (`expected`: {file: sha256}, `expected_manifest`: the manifest's
    SHA-256, `expected_signature`: model.sig's); return {file: sha256} when intact. Whether the
    signature verifies with a public key is trainflow/release/signing.py's question.

    Raises:
        PackageVerificationError: no manifest or a malformed one, a listed file missing or
            changed, an unlisted entry, a link or folder inside, a required file absent, or a
            difference from the registry's record. All problems are listed at once, each naming
            the file.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() or (path / MANIFEST).is_symlink():
        raise PackageVerificationError(f"{path}: no {MANIFEST}; not a trainflow package")
    listed, manifest_digest, problems = read_manifest(path)
    problems += _entry_problems(path, listed)
    for name, digest in listed.items():
        f = path / name
        if f.is_file() and not f.is_symlink() and sha256_file(f) != digest:
            problems.append(f"{name}: SHA-256 does not match the manifest (file changed)")
    problems += [f"{name}: required file not in the manifest" for name in REQUIRED if name not in listed]
    if expected is not None:
        for name in sorted(set(expected) | set(listed)):
            if expected.get(name) != listed.get(name):
                problems.append(f"{name}: differs from what the registry recorded at publish time")
        if expected_manifest is not None and expected_manifest != manifest_digest:
            problems.append(f"{MANIFEST}: differs from what the registry recorded at publish time")
    if expected_signature is not None:
        sig = path / SIGNATURE
        if not sig.is_file() or sig.is_symlink() or sha256_file(sig) != expected_signature:
            problems.append(f"{SIGNATURE}: missing or differs from what the registry recorded at publish time")
    if problems:
        raise PackageVerificationError(f"{path} failed verification:\n" + "\n".join(f"  - {p}" for p in problems))
    return listed
