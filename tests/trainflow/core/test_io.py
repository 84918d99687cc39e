"""trainflow.core.io: atomic writes and versioned folders with no moment without a complete version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainflow.core.io import LATEST, VersionedDir, atomic_write, atomic_write_json, install_dir, sha256_file


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = b"x" * (3 << 20) + b"tail"
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed half-way")
    assert json.loads(target.read_text()) == {"v": 1}, "the old content survives a failed write"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"], "no temporary file is left"
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}


def test_install_dir_never_replaces_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("new")
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        install_dir(tmp_path / "a", tmp_path / "b")
    install_dir(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c" / "f").read_text() == "new"


def _fill(text: str):
    def fill(folder: Path) -> None:
        (folder / "data.txt").write_text(text)

    return fill


def test_a_complete_version_exists_at_every_moment_of_a_write(tmp_path: Path) -> None:
    store = VersionedDir(tmp_path / "ckpt")
    store.write("step-1", _fill("one"))
    seen = []

    def fill(folder: Path) -> None:
        # Half-way through writing step-2, readers still find step-1, complete.
        seen.append([(p.name, (p / "data.txt").read_text()) for p in store.candidates()])
        (folder / "data.txt").write_text("two")

    store.write("step-2", fill)
    assert seen == [[("step-1", "one")]]
    assert store.latest() == tmp_path / "ckpt" / "step-2"
    assert (tmp_path / "ckpt" / LATEST).read_text().strip() == "step-2"
    store.write("step-3", _fill("three"))
    assert store.versions() == ["step-2", "step-3"], "the newest two are kept"


def test_a_failed_write_leaves_the_previous_version_and_no_temporary_folder(tmp_path: Path) -> None:
    store = VersionedDir(tmp_path / "ckpt")
    store.write("step-1", _fill("one"))

    def broken(folder: Path) -> None:
        (folder / "data.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("step-2", broken)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == sorted(["step-1", LATEST])
    assert store.latest() == tmp_path / "ckpt" / "step-1"


def test_readers_fall_back_when_the_pointer_names_a_missing_version(tmp_path: Path) -> None:
    store = VersionedDir(tmp_path / "ckpt")
    store.write("step-1", _fill("one"))
    store.write("step-2", _fill("two"))
    (tmp_path / "ckpt" / LATEST).write_text("step-9\n")
    assert [p.name for p in store.candidates()] == ["step-2", "step-1"]
    (tmp_path / "ckpt" / LATEST).write_text("step-1\n")
    assert [p.name for p in store.candidates()] == ["step-1", "step-2"], "the pointer's version comes first"


@pytest.mark.parametrize("name", ["", "../x", ".hidden", LATEST, "a/b"])
def test_bad_version_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="bad version name"):
        VersionedDir(tmp_path).write(name, _fill("x"))
