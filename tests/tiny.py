"""Tiny, locally built models and configs so the suite runs in seconds without a hub."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RT_DATA = ROOT / "data" / "rotten_tomatoes.csv.gz"


def build_tiny_bert(folder: Path, corpus: list[str], vocab_size: int = 400, layers: int = 2, hidden: int = 32) -> Path:
    """A ~0.1 M parameter BERT (2 layers of width 32 unless told) with a WordPiece tokenizer trained
    on `corpus`, saved to `folder`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=128,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def rt_texts(n: int = 400) -> list[str]:
    import csv

    with gzip.open(RT_DATA, "rt", encoding="utf-8") as fh:
        return [r["text"] for _, r in zip(range(n), csv.DictReader(fh))]


def tiny_config(tmp: Path, model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A complete config dict for a fast run on 240 real rows with the tiny model."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "task": {"type": "classification", "labels": ["rotten", "fresh"]},
        "data": {
            "path": str(RT_DATA),
            "max_rows": 240,
            "validation_fraction": 0.2,
            "test_fraction": 0.25,
            "calibration_size": 16,
            "min_split_rows": 20,  # tiny runs judge no model; the real floor is 50
        },  # fmt: skip
        "model": {"base": str(model_dir), "max_length": 32, "freeze_embeddings": False, "frozen_layers": 0},
        "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3},
        "hpo": {"n_trials": 2, "n_workers": 2, "metric": "accuracy"},
        "export": {"parity_samples": 16},
        "quantize": {"max_accuracy_drop": 1.0},
        "publish": {"artifact_root": str(tmp / "artifacts"), "run_root": str(tmp / "runs")},
        "tracking": {"wandb_mode": "disabled"},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text("# test config\n" + yaml.safe_dump(cfg))
    return path


def final_weights(path: Path) -> dict:
    """The weights of the newest intact checkpoint at `path` (a checkpoint folder or root), or of
    a model folder, or of the newest model version under a best-model root (for comparing a
    resumed run with an uninterrupted one)."""
    from safetensors.torch import load_file

    from trainflow.core.io import VersionedDir
    from trainflow.training.resume import latest_checkpoint

    found = latest_checkpoint([path])
    if found is not None:
        folder = found.folder
    elif (path / "model.safetensors").is_file():
        folder = path
    else:
        folder = VersionedDir(path).latest() or path
    return load_file(str(folder / "model.safetensors"))
