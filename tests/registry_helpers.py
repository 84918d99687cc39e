"""Cheap real packages for the registry, retention and CLI tests: the tiny model's real ONNX
export published with `publish_package`, with chosen test metrics and creation times."""

from __future__ import annotations

from pathlib import Path

from trainflow.publish import PackageResult, publish_package
from trainflow.registry import register


def package_sources(tmp: Path, tiny_onnx: Path) -> Path:
    """The tiny export plus a stand-in INT8 file (publishing copies files, it does not run them)."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for p in tiny_onnx.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "model_int8.onnx").write_bytes((tiny_onnx / "model.onnx").read_bytes()[:1000])
    return src


def make_package(
    root: Path,
    src: Path,
    version: str,
    *,
    accuracy: float = 0.8,
    int8_accuracy: float | None = None,
    created_at: str = "2026-01-01T00:00:00+00:00",
    model_name: str = "m",
    registered: bool = True,
) -> PackageResult:
    """Publish `version` with the given test accuracies and register it as staging, as
    `stages.publish.publish_run` does."""
    int8 = accuracy if int8_accuracy is None else int8_accuracy
    metadata = {
        "task": "classification",
        "created_at": created_at,
        "metrics": {"test_fp32_onnx": {"accuracy": accuracy}, "test_int8_onnx": {"accuracy": int8}},
    }
    pkg = publish_package(artifact_root=root, model_name=model_name, version=version, sources=[src], metadata=metadata)
    if registered:
        register(artifact_root=root, model_name=model_name, version=version)
    return pkg


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
