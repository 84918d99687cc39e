"""A real PostgreSQL server for tests: initdb in a temporary folder, password authentication on
127.0.0.1, started with pg_ctl and stopped afterwards. Debian's `postgresql` package provides the
binaries (installed with apt-get when missing, as root; CI runs as root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    def url(self, password: str | None = None) -> str:
        return f"postgresql+psycopg://{self.user}:{password or self.password}@{self.host}:{self.port}/{self.database}"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _ensure_installed() -> Path:
    bindir = _bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL tests (needs root for apt-get install postgresql)")
        pytest.skip("PostgreSQL binaries are not installed and cannot be (needs root)")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextmanager
def postgres_server(password: str) -> Iterator[Postgres]:
    """A server with user `trainflow` (this password) and database `optuna`, stopped on exit. Its
    files live in a fresh folder under /tmp (pytest's own folders are private to root, and the
    server runs as the `postgres` user)."""
    bindir = _ensure_installed()
    folder = Path(tempfile.mkdtemp(prefix="trainflow-pg-"))
    folder.chmod(0o755)
    data = folder / "pgdata"
    data.mkdir(parents=True)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(pwfile, "postgres")
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "trainflow", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}"])  # fmt: skip
    port = _free_port()
    log = folder / "postgres.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres")
    _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
                  "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1"])  # fmt: skip
    try:
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "trainflow", "-d", "postgres",
                        "-c", "CREATE DATABASE optuna"], check=True, capture_output=True, env=env)  # fmt: skip
        yield Postgres("127.0.0.1", port, "trainflow", password, "optuna")
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
