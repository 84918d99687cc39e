"""Each model family's anatomy, in one place: where a sequence classifier keeps its input
embeddings, its stack of layers and its classification head, and how ONNX Runtime's transformer
optimizer should treat its graph.

Known families are read from one table keyed by `config.model_type` (the way Hugging Face asks a
model for its parts and ONNX Runtime's optimizer keeps one table of model types). A family not in
the table falls back to generic discovery: the input embeddings from `get_input_embeddings()`,
the layers as the longest `nn.ModuleList` of one block class inside the base model, the head as
every parameter outside the base model. Where that fails too, `anatomy` raises a one-line
`ModelLoadError` naming the model type and what to set.

The functions here take a model object; they never load weights, so the pre-flight check runs
them on a skeleton built on the `meta` device in a fraction of a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from trainflow.core.errors import ModelLoadError

log = logging.getLogger(__name__)

OrtType = Literal["bert", "gpt2"]


@dataclass(frozen=True)
class FamilySpec:
    """Paths are relative to the base model (`model.base_model`)."""

    embeddings: tuple[str, ...]  # modules that turn ids into the first hidden states
    layers: str | None  # the ModuleList of blocks; None: weights shared by every layer (ALBERT)
    head_in_base: tuple[str, ...] = ()  # new head parts that live inside the base model (BERT's pooler)
    ort_model_type: OrtType | None = "bert"  # ONNX Runtime optimizer type; None: no fusions (basic graph)
    fuse_attention: bool = True  # False: the graph without the Attention fusion is quantized
    decoder: bool = False
    note: str = ""


ENCODER = FamilySpec(embeddings=("embeddings",), layers="encoder.layer")
DECODER = FamilySpec(embeddings=("embed_tokens",), layers="layers", ort_model_type=None, decoder=True,
                     note="ONNX Runtime's BERT fusions break its rotary attention at batch > 1: basic graph")  # fmt: skip

FAMILIES: dict[str, FamilySpec] = {
    "bert": FamilySpec(embeddings=("embeddings",), layers="encoder.layer", head_in_base=("pooler",)),
    "distilbert": FamilySpec(embeddings=("embeddings",), layers="transformer.layer"),
    "roberta": ENCODER,
    "xlm-roberta": ENCODER,
    "camembert": ENCODER,
    "deberta-v2": FamilySpec(embeddings=("embeddings",), layers="encoder.layer"),
    "deberta": FamilySpec(embeddings=("embeddings",), layers="encoder.layer"),
    "electra": FamilySpec(embeddings=("embeddings", "embeddings_project"), layers="encoder.layer"),
    "albert": FamilySpec(
        embeddings=("embeddings", "encoder.embedding_hidden_mapping_in"),
        layers=None,
        head_in_base=("pooler",),
        fuse_attention=False,
        note="ALBERT shares one set of layer weights across all its layers",
    ),  # fmt: skip
    "mpnet": ENCODER,
    "modernbert": FamilySpec(embeddings=("embeddings",), layers="layers"),
    "gpt2": FamilySpec(embeddings=("wte", "wpe"), layers="h", ort_model_type="gpt2", decoder=True),
    "llama": DECODER,
    "mistral": DECODER,
    "qwen2": DECODER,
    "qwen3": DECODER,
    "gemma": DECODER,
    "phi3": DECODER,
}


@dataclass
class Anatomy:
    """Where one model's parts are (the modules themselves)."""

    model_type: str
    known: bool  # in FAMILIES; False: found by generic discovery
    embeddings: list[Any]
    layers: list[Any] | None  # None: shared weights (no layer can be frozen alone)
    n_layers: int
    head_names: list[str] = field(default_factory=list)  # parameter names of the classification head
    spec: FamilySpec | None = None

    @property
    def decoder(self) -> bool:
        return bool(self.spec and self.spec.decoder)


def family_of(model_type: str) -> FamilySpec | None:
    return FAMILIES.get(model_type)


def _module(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _generic_layers(base: Any) -> list[Any] | None:
    """The longest ModuleList of one block class under the base model."""
    from torch import nn

    best: list[Any] | None = None
    for _, module in base.named_modules():
        repeated = isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1
        if repeated and (best is None or len(module) > len(best)):
            best = list(module)
    return best


def anatomy(model: Any) -> Anatomy:
    """The parts of a Hugging Face sequence classifier (weights are not touched).

    Raises:
        ModelLoadError: a family outside the table whose layers or embeddings cannot be found.
    """
    config = model.config
    model_type = str(getattr(config, "model_type", "unknown"))
    prefix = str(getattr(model, "base_model_prefix", ""))
    base = getattr(model, prefix, None) if prefix else None
    if base is None:
        raise ModelLoadError(
            f"model type {model_type!r}: cannot find the base model inside {type(model).__name__}; trainflow"
            " fine-tunes models with a sequence-classification class (AutoModelForSequenceClassification)"
        )
    n_config = int(getattr(config, "num_hidden_layers", 0) or 0)
    spec = family_of(model_type)
    if spec is not None:
        embeddings = [m for m in (_module(base, p) for p in spec.embeddings) if m is not None]
        layers = None if spec.layers is None else _module(base, spec.layers)
        layer_list = None if layers is None else list(layers)
        n_layers = len(layer_list) if layer_list is not None else n_config
    else:
        embeddings = [m for m in (model.get_input_embeddings(),) if m is not None]
        layer_list = _generic_layers(base)
        n_layers = len(layer_list) if layer_list else 0
    if not embeddings or (spec is not None and spec.layers is not None and layer_list is None) or n_layers == 0:
        what = "input embeddings" if not embeddings else "stack of layers"
        raise ModelLoadError(
            f"model type {model_type!r}: cannot find its {what}, so its layers cannot be frozen; set"
            " model.freeze_embeddings: false and model.frozen_layers: 0 to train every weight"
        )
    base_ids = {id(p) for p in base.parameters()}
    head = [n for n, p in model.named_parameters() if id(p) not in base_ids]
    if spec is not None:
        for part in spec.head_in_base:
            module = _module(base, part)
            if module is not None:
                head += [f"{prefix}.{part}.{n}" for n, _ in module.named_parameters()]
    if not head:
        raise ModelLoadError(f"model type {model_type!r}: no classification head found outside its base model")
    return Anatomy(model_type, spec is not None, embeddings, layer_list, n_layers, sorted(set(head)), spec)


def freeze(model: Any, parts: Anatomy, *, freeze_embeddings: bool, frozen_layers: int) -> list[str]:
    """Freeze the input embeddings and/or the lowest `frozen_layers` layers; return what was frozen.

    Raises:
        ModelLoadError: more layers than the model has, or layers of a shared-weights family.
    """
    done = []
    if freeze_embeddings:
        for module in parts.embeddings:
            for p in module.parameters():
                p.requires_grad_(False)
        done.append("embeddings")
    if frozen_layers:
        problem = frozen_layers_problem(parts, frozen_layers)
        if problem:
            raise ModelLoadError(problem)
        for layer in (parts.layers or [])[:frozen_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)
        done.append(f"layers 1-{frozen_layers} of {parts.n_layers}")
    return done


def frozen_layers_problem(parts: Anatomy, frozen_layers: int) -> str | None:
    """Why `model.frozen_layers` cannot apply to this model, or None."""
    if frozen_layers and parts.layers is None:
        note = parts.spec.note if parts.spec else "its layers share their weights"
        return (
            f"model.frozen_layers={frozen_layers}: {note} ({parts.n_layers} layers), so the lowest layers cannot"
            " be frozen alone; set model.frozen_layers: 0 (model.freeze_embeddings still applies)"
        )
    if frozen_layers > parts.n_layers:
        return (
            f"model.frozen_layers={frozen_layers} but this {parts.model_type} model has {parts.n_layers} layers;"
            f" set it to at most {parts.n_layers}"
        )
    return None


def ort_optimizer_type(model_type: str) -> OrtType | None:
    """How ONNX Runtime's transformer optimizer should read this family's graph: 'bert' for
    encoders (its BERT fusions match their attention, embeddings and feed-forward), 'gpt2' for GPT-2,
    None where no fusion is known to be safe (the basic graph is quantized)."""
    spec = family_of(model_type)
    if spec is None:
        return None
    return spec.ort_model_type


def attention_fusion_problem(model_type: str) -> str | None:
    """Why this family's graph is quantized without ONNX Runtime's Attention fusion, or None."""
    spec = family_of(model_type)
    if spec is not None and not spec.fuse_attention:
        return (f"{spec.note}; the Attention fusion would give each layer its own copy of them (a larger file,"
                " no faster)")  # fmt: skip
    return None
