"""Durable file operations, used for every file trainflow writes that a later step or a reader
relies on.

- `sha256_file`: the SHA-256 of a file, read in chunks.
- `atomic_write` (and `atomic_write_bytes` / `_text` / `_json`): the content goes to a temporary
  name in the target's folder, the file is fsynced, renamed over the target, and the folder is
  fsynced, so after a crash (or power loss) a reader sees the old content or the new one, never a
  mix, and a rename that returned has reached the disk.
- `install_dir`: move a fully written temporary folder to its final name durably (files and
  folder fsynced first; fails if the name exists).
- `VersionedDir`: a folder that keeps step-numbered versions (`<name>/<version>/`) and a
  `LATEST` pointer written atomically. A new version is complete on disk before the pointer
  names it, and the previous version is deleted only after that, so at every moment at least
  one complete version exists; readers take the pointer's version and fall back to the older
  ones (newest first) when it is missing or fails their check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainflow.core.layout import LATEST

CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path`, unique to this writer (pid + random), so concurrent writers
    and a killed earlier attempt never share a temporary file."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally, fsync it, rename it
    over `path` and fsync the folder. On an exception the temporary file is removed and `path`
    is untouched. For writers that take a file name (pyarrow, onnx.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes | memoryview) -> None:
    with atomic_write(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder (deepest first)."""
    folders = [folder]
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            fsync_file(p)
        elif p.is_dir():
            folders.append(p)
    for d in sorted(folders, key=lambda d: len(d.parts), reverse=True):
        fsync_dir(d)


def install_dir(tmp: Path, final: Path) -> None:
    """Rename the fully written folder `tmp` to `final` durably. Raises FileExistsError (or
    OSError) if `final` exists: a published folder is never replaced."""
    fsync_tree(tmp)
    if final.exists():
        raise FileExistsError(f"{final} exists")
    os.rename(tmp, final)
    fsync_dir(final.parent)


class VersionedDir:
    """Versions of one folder under `root`: `root/<version>/` plus `root/LATEST`.

    Version names sort in age order (callers use zero-padded step numbers). `write` keeps the
    newest `keep` versions (at least 2, so the one before the pointer's survives until a newer
    one is complete)."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)

    def write(self, version: str, fill: Callable[[Path], None]) -> Path:
        """Create version `version` by calling `fill(folder)` on a temporary folder, install it,
        point LATEST at it, then delete versions older than the newest `keep`. Returns its path."""
        if not version or "/" in version or version.startswith(".") or version == LATEST:
            raise ValueError(f"bad version name {version!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        tmp = self.root / f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            fill(tmp)
            if final.exists():  # the same version written again (a resumed attempt): replace it
                shutil.rmtree(final)
            install_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.root / LATEST, version + "\n")
        self._prune(version)
        return final

    def versions(self) -> list[str]:
        """Complete versions on disk, oldest first (temporary folders are not versions)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def pointer(self) -> str | None:
        try:
            name = (self.root / LATEST).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return name or None

    def candidates(self) -> list[Path]:
        """Versions a reader should try, best first: the pointer's, then the others newest first."""
        versions = self.versions()
        named = self.pointer()
        order = ([named] if named in versions else []) + [v for v in reversed(versions) if v != named]
        return [self.root / v for v in order]

    def latest(self) -> Path | None:
        found = self.candidates()
        return found[0] if found else None

    def _prune(self, current: str) -> None:
        versions = self.versions()
        for old in versions[: max(0, len(versions) - self.keep)]:
            if old != current:
                shutil.rmtree(self.root / old, ignore_errors=True)
        for leftover in self.root.glob(".tmp-*"):
            # A temporary folder of a killed earlier write (its pid is not ours, or it is ours and
            # done): only this writer's process writes this trial's folder at a time.
            if f"-{os.getpid()}-" not in leftover.name:
                shutil.rmtree(leftover, ignore_errors=True)
