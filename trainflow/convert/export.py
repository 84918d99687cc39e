"""Export the best model to ONNX with Hugging Face Optimum (dynamic batch and sequence axes)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from trainflow.core.config import ExportConfig
from trainflow.core.diskspace import ensure_free_space
from trainflow.core.faults import fault_raise
from trainflow.core.io import atomic_write_json, atomic_write_text
from trainflow.core.layout import HEAD as HEAD_FILE
from trainflow.core.layout import ONNX_FP32, TOKENIZER, TOKENIZER_CONFIG

if TYPE_CHECKING:  # parity needs torch; the quantize and publish steps that read an ExportOutcome do not
    from trainflow.convert.parity import ParityResult

log = logging.getLogger(__name__)

ONNX_FILE = ONNX_FP32


@dataclass(frozen=True)
class ExportOutcome:
    """What the export step hands on: the attempt's folder (model.onnx, head.json, tokenizer files),
    the ONNX file, its opset and inputs, and the parity gate's result."""

    onnx_dir: str
    onnx_path: str
    opset: int
    inputs: list[str]
    parity: ParityResult


@dataclass(frozen=True)
class ExportResult:
    onnx_path: str
    opset: int
    inputs: list[str]
    outputs: list[str]


def configure_tokenizer(folder: Path, max_length: int) -> None:
    """Make the package's tokenizer files say how the model was trained and exported:
    `tokenizer.json` truncates to `max_length` and pads a batch to its longest text (so a consumer
    with only the `tokenizers` library gets the right inputs), and `tokenizer_config.json`'s
    `model_max_length` is `max_length` too."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER
    tok = Tokenizer.from_file(str(path))
    config_path = folder / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    pad_token = config.get("pad_token") or "[PAD]"
    pad_token = pad_token["content"] if isinstance(pad_token, dict) else pad_token
    pad_id = tok.token_to_id(pad_token)
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
    atomic_write_text(path, tok.to_str())
    atomic_write_json(config_path, {**config, "model_max_length": max_length})


def export_onnx(*, model_dir: Path, out_dir: Path, export: ExportConfig, max_length: int = 512) -> ExportResult:
    """Export `model_dir` (a folder from `save_model`) to `out_dir/model.onnx`, with tokenizer
    files configured for `max_length` (`configure_tokenizer`).

    The folder holds a stock `AutoModelForSequenceClassification`, which is what Optimum can
    export faithfully (a custom class would be silently rebuilt with a random head). Ordinal
    cutpoints are not part of the graph: they are copied beside it in head.json. Optimum's own
    validation is off because our parity gate (trainflow.convert.parity) checks outputs against PyTorch
    with a configured tolerance and never downgrades a mismatch to a warning.
    """
    from optimum.exporters.onnx import main_export

    if out_dir.exists():
        shutil.rmtree(out_dir)
    # The ONNX file holds the weights once more (plus graph): check before Optimum writes it.
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    ensure_free_space(out_dir, int(weights * 1.2) + (8 << 20), "the ONNX export")
    log.info("exporting %s to ONNX (opset %d)", model_dir, export.opset)
    t0 = time.perf_counter()
    main_export(
        str(model_dir),
        output=out_dir,
        task="text-classification",
        opset=export.opset,
        device="cpu",
        local_files_only=True,
        do_validation=False,
        library_name="transformers",
    )
    fault_raise("export-write")
    shutil.copy2(model_dir / HEAD_FILE, out_dir / HEAD_FILE)
    configure_tokenizer(out_dir, max_length)
    graph = onnx.load(str(out_dir / ONNX_FILE), load_external_data=False)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    result = ExportResult(
        onnx_path=str(out_dir / ONNX_FILE),
        opset=opset,
        inputs=[i.name for i in graph.graph.input],
        outputs=[o.name for o in graph.graph.output],
    )
    log.info("exported %s in %.0f s (opset %d, inputs %s)", result.onnx_path, time.perf_counter() - t0, opset,
             result.inputs)  # fmt: skip
    return result
