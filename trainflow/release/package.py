"""Write the deployment package atomically and verify packages against their SHA256SUMS.

Layout of `<artifact_root>/<model_name>/<version>/`:
  model.onnx, model_int8.onnx, config.json, head.json, tokenizer files, metadata.json, SHA256SUMS
The package is assembled in a hidden temporary folder beside its final place (marked in progress
by a lock its writer holds) and renamed into place under the registry lock, which records the
files' digests in the same step, so a crash never leaves a half-written package that looks
complete and nothing renamed into place is ever unregistered. A package vouches for itself only
through SHA256SUMS; `verify_package` also compares it with the registry's record, made outside
the package, so a package whose files and manifest were rewritten together is caught.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainflow.core.diskspace import ensure_free_space
from trainflow.core.errors import PackageVerificationError, PublishError
from trainflow.core.faults import fault_window
from trainflow.core.io import fsync_tree, sha256_file
from trainflow.release.metadata import METADATA, PackageMetadata
from trainflow.release.modelcard import CARD
from trainflow.release.modelcard import render as render_card

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


def assemble_package(*, artifact_root: Path, sources: list[Path], metadata: PackageMetadata) -> Assembled:
    """Copy the package files found in `sources` (first match wins), write metadata.json and
    SHA256SUMS into a hidden temporary folder beside `<artifact_root>/<model_name>/<version>`.
    The registry moves it into place (`trainflow.release.registry.install`).

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
    tmp = target.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = _owner_lock(tmp)
    try:
        for name, src in chosen.items():
            shutil.copy2(src, tmp / name)
        fault_window("publish")
        metadata.write(tmp)
        others = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / CARD).write_text(render_card(metadata, others), encoding="utf-8")
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = "".join(f"{d}  {n}\n" for n, d in digests.items()).encode()
        (tmp / MANIFEST).write_bytes(manifest)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.close()
        raise
    return Assembled(tmp, target, digests, hashlib.sha256(manifest).hexdigest(), lock)


def publish_package(*, artifact_root: Path, sources: list[Path], metadata: PackageMetadata) -> PackageResult:
    """Assemble the package and move it into place, registered as staging (one registry lock)."""
    from trainflow.release.registry import install

    assembled = assemble_package(artifact_root=artifact_root, sources=sources, metadata=metadata)
    install(artifact_root=artifact_root, assembled=assembled)
    return PackageResult(path=str(assembled.target), version=metadata.version, files=assembled.files)


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
    files plus SHA256SUMS."""
    problems = []
    present = set()
    for entry in os.scandir(path):
        if entry.name == MANIFEST:
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
    path: Path, expected: dict[str, str] | None = None, expected_manifest: str | None = None
) -> dict[str, str]:
    """Check a package against its SHA256SUMS and, when given, against the digests the registry
    recorded at publish time (`expected`: {file: sha256}, `expected_manifest`: the manifest's
    SHA-256); return {file: sha256} when intact.

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
    if problems:
        raise PackageVerificationError(f"{path} failed verification:\n" + "\n".join(f"  - {p}" for p in problems))
    return listed


# --- the loader -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]


class PackageModel:
    """A verified package with an ONNX Runtime session: `predict(texts)` returns label names,
    indices and class probabilities; `logits(texts)` the raw outputs. Made by `load`."""

    def __init__(self, path: Path, metadata: PackageMetadata, file: str, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path, self.metadata, self.file, self.threads = path, metadata, file, threads
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # Packages built before the tokenizer carried them: truncation and padding from the metadata.
        if self.tokenizer.truncation is None:
            self.tokenizer.enable_truncation(max_length=metadata.onnx.max_length)
        if self.tokenizer.padding is None:
            self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path / file), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[start : start + batch_size])
            arrays = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                      "token_type_ids": [e.type_ids for e in enc]}  # fmt: skip
            feeds = {n: np.asarray(arrays[n], dtype=np.int64) for n in self.input_names}
            out.append(self.session.run(None, feeds)[0])
        return np.concatenate(out) if out else np.empty((0, len(self.labels)))

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        from trainflow.tasks.heads import ordinal_probabilities, predict_classes

        logits = self.logits(texts, batch_size)
        cut = None if self.metadata.cutpoints is None else np.asarray(self.metadata.cutpoints)
        if self.metadata.task == "ordinal":
            probs = ordinal_probabilities(logits.reshape(-1), cut)  # type: ignore[arg-type]
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        classes = predict_classes(self.metadata.task, logits, cut)
        return [
            Prediction(self.labels[int(k)], int(k), {name: float(p) for name, p in zip(self.labels, row)})
            for k, row in zip(classes, probs)
        ]


def _registry_root(path: Path) -> Path | None:
    """The artifact root whose registry vouches for `path` (`<root>/<model>/<version>`), if any."""
    root = path.parent.parent
    return root if (root / "_registry" / "registry.json").is_file() else None


def load(
    path: str | Path, *, model: Literal["primary", "int8", "fp32"] = "primary", threads: int | None = None
) -> PackageModel:
    """Verify a package, then open it for predictions (no torch is imported).

    Every file is checked against SHA256SUMS (only plain, regular, listed files), and, when the
    package lies in an artifact root with a registry, against the digests the registry recorded
    at publish (an unregistered folder there is refused); only then is a session created. The
    model is the package's primary one (INT8, or FP32 if no INT8 was faster where it was built)
    unless `model` says otherwise; `threads` defaults to the thread count measured best for batch 1
    there, never more than this machine's physical cores.

    Raises:
        PackageVerificationError: a file is changed, missing, extra or not what the registry
            recorded (named), or the manifest is forged.
    """
    path = Path(path).resolve()
    root = _registry_root(path)
    if root is not None:
        from trainflow.core.errors import RegistryError
        from trainflow.release.registry import verify as verify_registered

        try:
            verify_registered(artifact_root=root, model_name=path.parent.name, version=path.name)
        except RegistryError as err:
            raise PackageVerificationError(str(err)) from None
    else:
        verify_package(path)
    from trainflow.convert.onnx_model import physical_cores
    from trainflow.release.metadata import read_metadata

    meta = read_metadata(path)
    file = {"primary": meta.primary_file, "int8": "model_int8.onnx", "fp32": "model.onnx"}[model]
    measured = meta.serving.get("best", {}).get("batch1", {}).get("threads")
    chosen = min(threads or measured or physical_cores(), physical_cores())
    return PackageModel(path, meta, file, chosen)
