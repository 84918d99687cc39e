"""ONNX Runtime sessions over text: evaluation of a large split logs its progress."""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

import trainflow.convert.onnx_model as onnx_model
from tests.tiny import rt_texts


def test_a_large_evaluation_logs_progress(tiny_onnx, monkeypatch, caplog) -> None:
    monkeypatch.setattr(onnx_model, "PROGRESS_TEXTS", 40)  # a "large" split, kept small for the test
    model = onnx_model.OnnxTextModel(tiny_onnx / "model.onnx", AutoTokenizer.from_pretrained(tiny_onnx), 32)
    with caplog.at_level(logging.INFO, logger="trainflow.convert.onnx_model"):
        logits = model.logits(rt_texts(40), batch_size=4)
    assert logits.shape[0] == 40
    progress = [r.getMessage() for r in caplog.records if "texts" in r.getMessage()]
    assert progress[0].startswith("model.onnx: ") and " of 40 texts" in progress[0] and len(progress) == 3


def test_the_folder_tokenizer_encodes_as_transformers_does(tiny_onnx) -> None:
    """The quantize step tokenizes with `tokenizers` alone (no torch import): the same ids, masks
    and type ids as the Hugging Face fast tokenizer for truncation, longest and max_length padding."""
    import numpy as np

    hf = AutoTokenizer.from_pretrained(tiny_onnx)
    mine = onnx_model.FolderTokenizer(tiny_onnx)
    texts = [*rt_texts(6), "", "word " * 200]
    for padding in (True, "max_length"):
        want = hf(texts, truncation=True, max_length=24, padding=padding, return_tensors="np")
        got = mine(texts, truncation=True, max_length=24, padding=padding, return_tensors="np")
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(got[name], want[name])
    assert mine.pad_token_id == hf.pad_token_id
