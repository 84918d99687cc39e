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


def test_text_pairs_encode_alike_in_training_and_in_the_package() -> None:
    """A pair is truncated longest-first to max_length with its second text's type ids 1 (the
    default MiniLM's BERT tokenizer), by the training tokenizer and by the package's
    `tokenizers`-only one alike; a count mismatch is refused."""
    from pathlib import Path

    import numpy as np
    import pytest

    from trainflow.core.config import DEFAULT_BASE_MODEL
    from trainflow.training.base_model import resolve_base_model
    from trainflow.training.train import encode_pairs

    folder = Path(resolve_base_model(DEFAULT_BASE_MODEL))
    hf = AutoTokenizer.from_pretrained(folder)
    mine = onnx_model.FolderTokenizer(folder)
    texts = rt_texts(8)
    firsts, seconds = [*texts[:4], "word " * 60, "short", ""], [*texts[4:], "tiny", "word " * 60, "only the second"]
    want = hf(firsts, text_pair=seconds, truncation="longest_first", max_length=24, padding=True, return_tensors="np")
    got = mine(firsts, truncation=True, max_length=24, padding=True, return_tensors="np", text_pair=seconds)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got[name], want[name])
    assert got["input_ids"].shape[1] == 24 and set(np.unique(got["token_type_ids"])) == {0, 1}
    trained = encode_pairs(hf, firsts, seconds, 24)
    for i, ids in enumerate(trained["input_ids"]):
        n = int(got["attention_mask"][i].sum())
        assert ids == got["input_ids"][i, :n].tolist()
        assert trained["token_type_ids"][i] == got["token_type_ids"][i, :n].tolist()
    with pytest.raises(ValueError, match="2 texts but 1 pair texts"):
        mine(firsts[:2], max_length=24, text_pair=seconds[:1])
