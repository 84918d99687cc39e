"""Read the records of an offline W&B run file (`offline-run-*/run-<id>.wandb`).

wandb 0.31 ships no Python reader for it (its Go core writes it). The format is LevelDB's log:
a 7-byte header (":W&B", version), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a record's chunks concatenated are a
serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    magic, _version, _ = struct.unpack("<4sHB", data[:HEADER])
    if magic != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (magic {magic!r})")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        parts += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def artifacts(path: Path) -> list[dict[str, Any]]:
    """The artifacts a run file logs: name, type, aliases, metadata, description, manifest paths."""
    out = []
    for r in records(path):
        if r.WhichOneof("record_type") == "artifact":
            a = r.artifact
            out.append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "metadata": json.loads(a.metadata or "{}"),
                    "description": a.description,
                    "entries": [e.path for e in a.manifest.contents],
                    "refs": [e.ref for e in a.manifest.contents],
                }
            )
    return out


def kinds(path: Path) -> list[str]:
    return [r.WhichOneof("record_type") for r in records(path)]
