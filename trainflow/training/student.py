"""A smaller model cut from a trained one: the student a distillation starts from.

The student keeps `n` of the teacher's layers, evenly spaced and ending with the top one (as
DistilBERT was made from BERT), with the teacher's embeddings, head and tokenizer: a model of the
same family that starts where the teacher's computation ends rather than from random weights. A
model whose layers share one set of weights (ALBERT) runs that set fewer times.
(Cutting to the lowest layers instead leaves a [CLS] vector the head cannot use: the default
MiniLM cut to its lowest 3 layers stayed at the majority class for 100 steps, evenly spaced
layers reached 0.68-0.71 validation accuracy; benchmarks/RESULTS.md, the search section.)

The student is saved with `save_pretrained`, reloaded, and refused unless the reloaded model gives
the logits of the model that was cut: a family whose configuration numbers its layers in a way
the cut does not keep fails here, with one line, and not later in training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainflow.core.errors import ModelLoadError
from trainflow.core.io import atomic_write_json
from trainflow.core.layout import STUDENT_INFO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Student:
    path: Path
    model_type: str
    teacher_layers: int
    layers: int
    kept: tuple[int, ...]  # the teacher's layer indices the student keeps (shared weights: all 0)
    teacher_params: int
    params: int
    teacher_layer_of: tuple[int, ...] = ()  # the teacher layer each student layer learns from (hidden loss)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def read_student(folder: Path) -> Student | None:
    """The student written by `make_student` in `folder`, or None (not a cut student)."""
    info = Path(folder) / STUDENT_INFO
    if not info.is_file():
        return None
    raw = json.loads(info.read_text())
    return Student(**{**raw, "path": Path(raw["path"]), "kept": tuple(raw["kept"]),
                      "teacher_layer_of": tuple(raw["teacher_layer_of"])})  # fmt: skip


# Families whose first layer is built differently from the others (ModernBERT's has no attention
# LayerNorm): a student keeps it as its first layer, then evenly spaced layers up to the top one.
# (ModernBERT's local/global attention follows a layer's position: a kept layer may change kind,
# which changes nothing for texts shorter than its local window, 128 tokens by default.)
KEEP_FIRST = {"modernbert"}


def kept_layers(teacher: int, student: int, keep_first: bool = False) -> list[int]:
    """The teacher's layers a student of `student` layers keeps: evenly spaced, the top one last
    (with `keep_first`, layer 0 first and the rest evenly spaced above it).

    Raises:
        ValueError: not 1 <= student < teacher (with `keep_first`, 2 <= student).
    """
    if not 1 + keep_first <= student < teacher:
        raise ValueError(
            f"a student needs between {1 + keep_first} and {teacher - 1} layers of a {teacher}-layer model, not {student}"
        )
    if keep_first:
        return [0] + [1 + i for i in kept_layers(teacher - 1, student - 1)]
    step = teacher / student
    return [round(teacher - 1 - i * step) for i in reversed(range(student))]


def _layer_count_fields(config: Any) -> list[str]:
    names = ["num_hidden_layers"]
    for alias in ("n_layer", "n_layers", "num_layers"):
        if alias in getattr(config, "attribute_map", {}) or hasattr(config, alias):
            names.append(alias)
    return names


def cut(model: Any, layers: int) -> tuple[Any, list[int], int]:
    """Cut `model` (a Hugging Face sequence classifier, in place) to `layers` layers; return it,
    the kept indices and the teacher's layer count.

    Raises:
        ModelLoadError: the layers cannot be found, or `layers` does not fit.
    """
    import torch

    from trainflow.training.families import anatomy

    parts = anatomy(model)
    teacher = parts.n_layers
    try:
        keep = kept_layers(teacher, layers, keep_first=parts.model_type in KEEP_FIRST)
    except ValueError as err:
        raise ModelLoadError(f"{parts.model_type} student: {err}") from None
    config = model.config
    if parts.layers is None:  # shared weights: the same layer group, run fewer times
        kept = [0] * layers
    else:
        spec = parts.spec
        prefix = getattr(model, "base_model_prefix", "")
        owner_path = spec.layers if spec is not None and spec.layers else None
        base = getattr(model, prefix)
        if owner_path is None:  # found by generic discovery: the ModuleList that holds the layers
            owner, attr = next(
                (m, n)
                for m in base.modules()
                for n, child in m.named_children()
                if isinstance(child, torch.nn.ModuleList) and list(child) == parts.layers
            )
        else:
            *up, attr = owner_path.split(".")
            owner = base
            for name in up:
                owner = getattr(owner, name)
        new = torch.nn.ModuleList([parts.layers[i] for i in keep])
        for position, layer in enumerate(new):  # decoders index their key/value cache by layer number
            for module in layer.modules():
                for name in ("layer_idx", "layer_id"):
                    if isinstance(getattr(module, name, None), int):
                        setattr(module, name, position)
        setattr(owner, attr, new)
        kept = keep
    for name in _layer_count_fields(config):
        setattr(config, name, layers)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) == teacher:
        config.layer_types = [types[i] for i in keep]
    return model, kept, teacher


def make_student(teacher_dir: Path, layers: int, out_dir: Path) -> Student:
    """Save a `layers`-layer student of the model in `teacher_dir` (weights, config, tokenizer) to
    `out_dir`, checked to reload to the same logits.

    Raises:
        ModelLoadError: the teacher cannot be cut to `layers` layers, or the saved student does not
            reload to the model that was cut (the family's configuration does not allow it).
    """
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    teacher_params = sum(p.numel() for p in model.parameters())
    model, kept, teacher = cut(model, layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for f in teacher_dir.iterdir():  # tokenizer files and the task's head.json travel with it
        if f.is_file() and not (out_dir / f.name).exists() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy2(f, out_dir / f.name)
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(out_dir, output_loading_info=True)
    reloaded.eval()
    unused = sorted(info.get("unexpected_keys", [])) + sorted(info.get("missing_keys", []))
    if unused:
        raise ModelLoadError(
            f"{model.config.model_type} student of {layers} layers: the saved model does not reload to the model that"
            f" was cut ({len(unused)} weights unused or missing on reload, e.g. {unused[0]}); this family cannot be cut"
            " by layers"
        )
    for m in (model, reloaded):  # no key/value cache: a classifier runs each text once
        if hasattr(m.config, "use_cache"):
            m.config.use_cache = False
    ids = torch.arange(3, 11).reshape(1, 8) % int(model.config.vocab_size)  # one text: no padding needed
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    if not torch.allclose(a, b, atol=1e-5):
        raise ModelLoadError(
            f"{model.config.model_type} student of {layers} layers: the saved model does not reload to the model that"
            f" was cut (largest logit difference {float((a - b).abs().max()):.3g}); this family cannot be cut by layers"
        )
    params = sum(p.numel() for p in reloaded.parameters())
    mapping = kept_layers(teacher, layers, keep_first=str(model.config.model_type) in KEEP_FIRST)
    student = Student(out_dir, str(model.config.model_type), teacher, layers, tuple(kept), teacher_params, params,
                      tuple(mapping))  # fmt: skip
    atomic_write_json(out_dir / STUDENT_INFO, student.to_dict())
    log.info("student: %d of %d layers kept (%s), %.1fM of %.1fM parameters", layers, teacher,
             ", ".join(str(i + 1) for i in kept), params / 1e6, teacher_params / 1e6)  # fmt: skip
    return student
