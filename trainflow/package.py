"""Write the deployment package atomically and verify packages against their SHA256SUMS.

Layout of `<artifact_root>/<model_name>/<version>/`:
  model.onnx, model_int8.onnx, config.json, head.json, tokenizer files, metadata.json, SHA256SUMS
The package is assembled in a hidden temporary folder beside its final place and renamed into
place in one step, so a crash never leaves a half-written package that looks complete.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

from trainflow.diskspace import ensure_free_space
from trainflow.errors import PackageVerificationError, PublishError
from trainflow.faults import fault_window
from trainflow.io import install_dir, sha256_file
from trainflow.metadata import METADATA, PackageMetadata

MANIFEST = "SHA256SUMS"
PACKAGE_FILES = (
    "model.onnx",
    "model_int8.onnx",
    "config.json",
    "head.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
REQUIRED = ("model.onnx", "model_int8.onnx", "config.json", "head.json", "tokenizer.json", METADATA)
TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
    "metaflow", "metaflow-checkpoint", "optuna", "wandb", "duckdb", "pyarrow",
)  # fmt: skip


@dataclass(frozen=True)
class PackageResult:
    path: str
    version: str
    files: dict[str, str]


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path) -> str:
    """HEAD of the repository at `repo` ('+dirty' if it has uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def publish_package(*, artifact_root: Path, sources: list[Path], metadata: PackageMetadata) -> PackageResult:
    """Copy the package files found in `sources` (first match wins), write metadata.json and
    SHA256SUMS, and rename the folder into `<artifact_root>/<model_name>/<version>` (both from
    `metadata`), durably: every file and the folder are fsynced before the rename.

    Raises:
        PublishError: the version exists already or a required file is missing.
        DiskSpaceError: the disk lacks room for the package (checked before anything is written).
    """
    model_name, version = metadata.model_name, metadata.version
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
    tmp = target.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, src in chosen.items():
            shutil.copy2(src, tmp / name)
        fault_window("publish")
        metadata.write(tmp)
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
        install_dir(tmp, target)  # fails if the target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(path=str(target), version=version, files=digests)


def verify_package(path: Path) -> dict[str, str]:
    """Check every file of a package against SHA256SUMS; return {file: sha256} when intact.

    Raises:
        PackageVerificationError: no manifest, a listed file missing or changed, an unlisted
            file present, or a required file absent. All problems are listed at once.
    """
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise PackageVerificationError(f"{path}: no {MANIFEST}; not a trainflow package")
    listed: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    problems = []
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            problems.append(f"{name}: listed but missing")
        elif sha256_file(f) != digest:
            problems.append(f"{name}: SHA-256 does not match the manifest (file changed)")
    extra = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in listed)
    problems += [f"{name}: present but not in the manifest" for name in extra]
    problems += [f"{name}: required file not in the manifest" for name in REQUIRED if name not in listed]
    if problems:
        raise PackageVerificationError(f"{path} failed verification:\n" + "\n".join(f"  - {p}" for p in problems))
    return listed
