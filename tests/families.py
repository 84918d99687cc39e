"""Tiny random-weight models of every supported family, each with a tokenizer in its family's usual
format (WordPiece, byte-level BPE, Unigram), trained here in seconds: nothing is downloaded.

`build_family(name, folder, corpus)` saves a sequence classifier (2 labels, so every base has a
head to replace or keep) and its tokenizer with `save_pretrained`, as a user's folder would be.
`shape="bench"` builds the benchmark's realistic shape (6 layers, hidden 384, 12 heads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TokenizerKind = Literal["wordpiece", "bpe", "unigram"]


@dataclass(frozen=True)
class Family:
    model_type: str
    tokenizer: TokenizerKind
    decoder: bool = False
    # Config keyword names of this family for (hidden size, layers, heads, feed-forward size).
    names: tuple[str, str, str, str] = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "wordpiece"),
    "distilbert": Family("distilbert", "wordpiece", names=("dim", "n_layers", "n_heads", "hidden_dim")),
    "roberta": Family("roberta", "bpe"),
    "xlm-roberta": Family("xlm-roberta", "unigram"),
    "deberta-v3": Family(
        "deberta-v2",
        "unigram",
        extra={
            "relative_attention": True,
            "position_biased_input": False,
            "pos_att_type": ["p2c", "c2p"],
            "max_relative_positions": -1,
            "position_buckets": 32,
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
        },
    ),  # fmt: skip
    "electra": Family("electra", "wordpiece", extra={"embedding_size": 16}),
    "albert": Family("albert", "unigram", extra={"embedding_size": 16}),
    "mpnet": Family("mpnet", "wordpiece"),
    "modernbert": Family("modernbert", "bpe", extra={"global_attn_every_n_layers": 2, "local_attention": 16}),
    "gpt2": Family("gpt2", "bpe", decoder=True, names=("n_embd", "n_layer", "n_head", "n_inner")),
    "llama": Family("llama", "bpe", decoder=True, extra={"num_key_value_heads": 2}),
    "mistral": Family("mistral", "bpe", decoder=True, extra={"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": Family("qwen2", "bpe", decoder=True, extra={"num_key_value_heads": 2}),
}
SHAPES = {
    # (hidden, layers, heads, feed-forward, vocabulary)
    "tiny": (32, 2, 2, 64, 400),
    "tiny4": (32, 4, 2, 64, 400),  # deep enough to cut a student from
    "bench": (384, 6, 12, 1536, 8000),
}
SPECIAL = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "unigram": {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"},
}


def _train_tokenizer(kind: TokenizerKind, corpus: list[str], vocab_size: int, decoder: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special = SPECIAL[kind]
    tokens = list(dict.fromkeys(special.values()))
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=special["unk"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=tokens)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=tokens, unk_token=special["unk"])
    tok.train_from_iterator(corpus, trainer)
    cls, sep = special["cls"], special["sep"]
    if decoder:  # decoders: no special tokens around a text; the end-of-text token pads
        tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    return tok


def build_family(name: str, folder: Path, corpus: list[str], shape: str = "tiny", num_labels: int = 2) -> Path:
    """Save a random-weight sequence classifier of family `name` and its tokenizer to `folder`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    fam = FAMILIES[name]
    hidden, layers, heads, ff, vocab = SHAPES[shape]
    raw = _train_tokenizer(fam.tokenizer, corpus, vocab, fam.decoder)
    special = SPECIAL[fam.tokenizer]
    if fam.decoder:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=special["sep"], bos_token=special["cls"],
                                            unk_token=special["unk"], model_max_length=512)  # fmt: skip
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw, unk_token=special["unk"], pad_token=special["pad"], cls_token=special["cls"],
            sep_token=special["sep"], mask_token=special["mask"], model_max_length=512,
        )  # fmt: skip
    ids = {k: raw.token_to_id(v) for k, v in special.items()}
    sizes = dict(zip(fam.names, (hidden, layers, heads, ff)))
    config = AutoConfig.for_model(
        fam.model_type, vocab_size=raw.get_vocab_size(), num_labels=num_labels, max_position_embeddings=512,
        pad_token_id=None if fam.decoder else ids["pad"], bos_token_id=ids["cls"], eos_token_id=ids["sep"],
        **sizes, **fam.extra,
    )  # fmt: skip
    if fam.model_type == "modernbert":
        config.cls_token_id, config.sep_token_id = ids["cls"], ids["sep"]
    if fam.model_type == "gpt2":
        config.n_positions = 512
    folder.mkdir(parents=True, exist_ok=True)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
