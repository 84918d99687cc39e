"""Find planted secrets in every file a run wrote, also inside gzip (Metaflow's artifact store),
zip members and Parquet columns (which Snappy would hide from a plain byte search)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import zipfile
from pathlib import Path

# 40 characters each, like the real ones; fake, so nothing works with them.
FAKE_WANDB_API_KEY = "fake-key-0123456789abcdef0123456789abcdef"
FAKE_AWS_SECRET_ACCESS_KEY = "fAkE/aws+Secret0123456789ABCDEFGHIJKLMNO"
PLANTED = {"WANDB_API_KEY": FAKE_WANDB_API_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET_ACCESS_KEY}


def _needles(secret: str) -> list[bytes]:
    raw = secret.encode()
    out = [raw, secret.encode("utf-16-le")]
    for shift in range(3):  # base64 of the secret at each alignment, minus the unstable edges
        enc = base64.b64encode(b"\0" * shift + raw)[4:-4]
        out.append(enc)
    return out


def _layers(path: Path, data: bytes) -> list[bytes]:
    layers = [data]
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            layers.append(gzip.decompress(data))
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                layers += [zf.read(n) for n in zf.namelist()]
        except zipfile.BadZipFile:
            pass
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        layers.append(repr(pq.read_table(path).to_pylist()).encode())
    return layers


def files_containing(roots: list[Path], secrets: dict[str, str] = PLANTED) -> dict[str, list[str]]:
    """{file: [names of the secrets found in it]} for every regular file under `roots`."""
    found: dict[str, list[str]] = {}
    needles = {name: _needles(value) for name, value in secrets.items()}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            layers = _layers(path, path.read_bytes())
            hits = [name for name, ns in needles.items() if any(n in layer for layer in layers for n in ns)]
            if hits:
                found[str(path)] = hits
    return found


def count_files(roots: list[Path]) -> int:
    return sum(1 for root in roots for p in root.rglob("*") if p.is_file())
