"""The model side of the pre-flight check, in seconds and without loading weights: the base
model's config and tokenizer load, one text and one text pair tokenize, the model skeleton is built
from `config.json` on the `meta` device, and the family's anatomy, the freezing and the head are
worked out as training would. Every problem is reported at once, one line each.

`trainflow check` and the flow's `start` run it, so a base model that cannot train stops the run
before anything trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.core.config import ModelConfig, TaskConfig
from trainflow.core.errors import ModelLoadError
from trainflow.training.base_model import resolve_base_model
from trainflow.training.families import anatomy, frozen_layers_problem

log = logging.getLogger(__name__)

SAMPLE = ("A short text to check the tokenizer with.", "and a second one, as a pair")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ModelReport:
    folder: str
    model_type: str
    family: str  # "known" or "generic"
    n_layers: int
    frozen: str
    head: str
    inputs: list[str]
    pad: str
    positions: int = 0  # max_position_embeddings (0: not stated)
    separable_layers: bool = True  # False: the layers share weights (ALBERT), none can be frozen alone

    def lines(self) -> list[str]:
        return [
            f"base model {self.folder}: {self.model_type} ({self.family} anatomy), {self.n_layers} layers",
            f"  frozen: {self.frozen}; head: {self.head}",
            f"  inputs: {', '.join(self.inputs)}; padding: {self.pad}",
        ]


def num_labels_of(task: TaskConfig) -> int:
    from trainflow.tasks.task import n_outputs

    return n_outputs(task.type, task.labels)


def head_plan(config: Any, num_labels: int, policy: str) -> tuple[str, str | None]:
    """(what happens to the base model's classification head, a problem or None). `config` is the
    base model's config; a base without a fine-tuned head has none of its own."""
    has_head = bool(getattr(config, "architectures", None)) and any(
        a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in config.architectures or []
    )
    theirs = int(getattr(config, "num_labels", 0) or 0)
    if not has_head or policy == "new":
        return f"a new head for {num_labels} output(s)", None
    if theirs == num_labels:
        return f"the base model's head ({theirs} outputs) is kept and trained on", None
    if policy == "keep":
        return "", (
            f"model.head: keep, but the base model's classification head has {theirs} outputs and this task needs"
            f" {num_labels}; set model.head: auto to replace it"
        )
    return f"the base model's head for {theirs} outputs is replaced by a new one for {num_labels}", None


def ensure_pad_token(tokenizer: Any, config: Any) -> str:
    """Decoders ship without a padding token: pad with the end-of-text token (right padding, the
    attention mask hides it) and tell the model which id that is. Returns how padding is done."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                "the tokenizer has neither a padding nor an end-of-text token; add pad_token to its"
                " special_tokens_map.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
        why = f"pads with the end-of-text token {tokenizer.eos_token!r} (the tokenizer has no padding token)"
    else:
        why = f"pads with {tokenizer.pad_token!r}"
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return why


def _tokenizer_problems(tokenizer: Any, max_length: int) -> tuple[list[str], list[str]]:
    """(problems, input names the tokenizer produces) for one text and one pair."""
    problems = []
    try:
        single = tokenizer([SAMPLE[0]], truncation=True, max_length=max_length)
        pair = tokenizer([SAMPLE[0]], [SAMPLE[1]], truncation="longest_first", max_length=max_length)
    except Exception as err:  # noqa: BLE001 - any tokenizer failure is the user's tokenizer
        return [f"the tokenizer cannot encode a text: {type(err).__name__}: {err}"], []
    ids = single["input_ids"][0]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids if i not in tokenizer.all_special_ids)):
        problems.append("the tokenizer encodes a plain English text as unknown tokens only; is it the model's own?")
    if not pair["input_ids"][0]:
        problems.append("the tokenizer cannot encode a text pair")
    return problems, sorted(single.keys())


def _skeleton(folder: str, num_labels: int) -> tuple[Any, Any]:
    """(config, model skeleton on the meta device: shapes only, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(folder)
    built = AutoConfig.from_pretrained(folder, num_labels=num_labels)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(built)
    return config, model


def pair_problem(tokenizer: Any) -> str | None:
    """A problem when the tokenizer joins a text pair with nothing between or around the two texts
    (GPT-2-like decoders): the model could not tell where the first text ends."""
    first, second = "first text", "second text"
    alone = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (first, second)]
    if tokenizer(first, text_pair=second)["input_ids"] == alone[0] + alone[1]:
        return ("its tokenizer joins a text pair (data.text_pair_column) with nothing between the two texts, so the"
                " model cannot tell where the first ends; use a base whose tokenizer separates pairs (BERT, RoBERTa,"
                " DeBERTa, ELECTRA, ...)")  # fmt: skip
    return None


def inspect_model(*, model: ModelConfig, task: TaskConfig, pairs: bool = False) -> ModelReport:
    """Check that `model.base` can be fine-tuned for `task` as configured (module docstring); with
    `pairs`, that its tokenizer separates the two texts of a pair.

    Raises:
        ModelLoadError: every problem found, one per line.
    """
    from transformers import AutoTokenizer

    folder = resolve_base_model(model.base)
    problems: list[str] = []
    if Path(folder).is_dir() and not any((Path(folder) / f).is_file() for f in WEIGHT_FILES):
        problems.append(f"base model folder {folder} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    num_labels = num_labels_of(task)
    try:
        config, skeleton = _skeleton(folder, num_labels)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"base model {model.base!r} ({folder}): its config.json does not describe a model trainflow can build"
            f" a sequence classifier from ({first}); supported families: docs/families.md"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any failure to load is reported as the tokenizer's
        tokenizer = None
        problems.append(f"the tokenizer in {folder} cannot be loaded ({type(err).__name__}: {err})")
    inputs: list[str] = []
    pad = ""
    if tokenizer is not None:
        found, inputs = _tokenizer_problems(tokenizer, model.max_length)
        problems += found
        if pairs and (problem := pair_problem(tokenizer)):
            problems.append(problem)
        try:
            pad = ensure_pad_token(tokenizer, skeleton.config)
        except ModelLoadError as err:
            problems.append(str(err))
    try:
        parts = anatomy(skeleton)
    except ModelLoadError as err:
        if model.freeze_embeddings or model.frozen_layers:
            problems.append(str(err))
        raise ModelLoadError("\n".join(problems) or str(err)) from None
    if model.frozen_layers and (problem := frozen_layers_problem(parts, model.frozen_layers)):
        problems.append(problem)
    head, problem = head_plan(config, num_labels, model.head)
    if problem:
        problems.append(problem)
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions and model.max_length > positions:
        problems.append(
            f"model.max_length={model.max_length} exceeds the {positions} positions of {parts.model_type}; set it to"
            f" at most {positions}"
        )
    if problems:
        raise ModelLoadError(f"base model {model.base!r} cannot be fine-tuned as configured:\n" +
                             "\n".join(f"  - {p}" for p in problems))  # fmt: skip
    frozen = ", ".join(
        [*(["embeddings"] if model.freeze_embeddings else []),
         *([f"layers 1-{model.frozen_layers} of {parts.n_layers}"] if model.frozen_layers else [])]
    ) or "nothing"  # fmt: skip
    return ModelReport(folder, parts.model_type, "known" if parts.known else "generic", parts.n_layers, frozen,
                       head, inputs, pad, positions, parts.layers is not None)  # fmt: skip
