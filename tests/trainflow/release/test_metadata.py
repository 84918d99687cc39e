"""The package metadata model: written and read back typed; older and newer schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.registry_helpers import sample_metadata
from trainflow.core.errors import MetadataError
from trainflow.release.metadata import METADATA, SCHEMA_VERSION, read_metadata


def test_written_metadata_reads_back_equal(tmp_path: Path) -> None:
    meta = sample_metadata("v1", test={"accuracy": 0.7, "macro_f1": 0.6})
    meta.write(tmp_path)
    back = read_metadata(tmp_path)
    assert back == meta and back.schema_version == SCHEMA_VERSION
    assert back.metrics.test_metric("fp32", "accuracy") == 0.7 and back.labels == ["rotten", "fresh"]


def test_a_schema_1_package_still_reads(tmp_path: Path) -> None:
    """Before the model existed: no schema_version, the recipe spread into `quantization`."""
    raw = sample_metadata("old").model_dump(mode="json")
    del raw["schema_version"]
    quant = raw["quantization"]
    del quant["recipe"]
    quant.update(name="u8s8-minmax", activation_type="QUInt8", per_channel=True)
    (tmp_path / METADATA).write_text(json.dumps(raw))
    meta = read_metadata(tmp_path)
    assert meta.quantization.recipe == {"name": "u8s8-minmax", "activation_type": "QUInt8", "per_channel": True}
    assert meta.quantization.chosen_recipe == "r"


def test_newer_or_broken_metadata_fails_naming_the_version(tmp_path: Path) -> None:
    raw = sample_metadata("v1").model_dump(mode="json")
    (tmp_path / METADATA).write_text(json.dumps({**raw, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(MetadataError, match=rf"schema version {SCHEMA_VERSION + 1} is not supported"):
        read_metadata(tmp_path)
    del raw["metrics"]
    (tmp_path / METADATA).write_text(json.dumps(raw))
    with pytest.raises(MetadataError, match=rf"schema version {SCHEMA_VERSION}\) does not match the schema: metrics"):
        read_metadata(tmp_path)
    (tmp_path / METADATA).write_text("{not json")
    with pytest.raises(MetadataError, match="unreadable"):
        read_metadata(tmp_path)
    with pytest.raises(MetadataError, match="no such file"):
        read_metadata(tmp_path / "nowhere")
