"""The consumer's loader: a verified package with an ONNX Runtime session (no torch).

`trainflow.package.load` is this module's `load`: it is what every package's model card shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from trainflow.convert.onnx_model import physical_cores
from trainflow.core.layout import ONNX_FP32, ONNX_INT8, REGISTRY_STATE, TOKENIZER, registry_dir
from trainflow.release.metadata import PackageMetadata, read_metadata
from trainflow.release.package import verify_package
from trainflow.release.registry import verify as verify_registered
from trainflow.release.signing import key_path, verify_signature
from trainflow.tasks.task import TaskHead


@dataclass(frozen=True)
class Prediction:
    """Classification and ordinal: the predicted class and every class's probability."""

    label: str
    index: int
    probabilities: dict[str, float]


@dataclass(frozen=True)
class LabelSetPrediction:
    """Multi-label: the labels whose probability reaches their threshold, and every label's
    probability (independent per label: they need not sum to 1)."""

    labels: list[str]
    probabilities: dict[str, float]


@dataclass(frozen=True)
class ValuePrediction:
    """Regression: the predicted value, on the scale of the training targets."""

    value: float


AnyPrediction = Prediction | LabelSetPrediction | ValuePrediction


class PackageModel:
    """A verified package with an ONNX Runtime session: `predict(texts)` returns what the task
    predicts (a class with probabilities; a label set; a value); `logits(texts)` the raw outputs.
    A pair model takes (text, pair text) tuples. Made by `load`."""

    def __init__(self, path: Path, metadata: PackageMetadata, file: str, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path, self.metadata, self.file, self.threads = path, metadata, file, threads
        self.tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
        # Packages built before the tokenizer carried them: truncation and padding from the metadata.
        if self.tokenizer.truncation is None:
            self.tokenizer.enable_truncation(max_length=metadata.onnx.max_length)
        if self.tokenizer.padding is None:
            self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path / file), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def head(self) -> TaskHead:
        return self.metadata.head()

    def _check_inputs(self, texts: list) -> None:
        pairs = [not isinstance(t, str) for t in texts]
        if self.metadata.text_pair and not all(pairs):
            raise ValueError("this model reads text pairs: pass (text, pair text) tuples, not single texts")
        if not self.metadata.text_pair and any(pairs):
            raise ValueError("this model reads single texts: pass strings, not pairs")
        for t in texts:
            if not isinstance(t, str) and (len(t) != 2 or not all(isinstance(x, str) for x in t)):
                raise ValueError(f"a text pair is two strings, got {t!r}")
            for x in [t] if isinstance(t, str) else t:
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{x[:40]!r}... is not valid Unicode (a lone surrogate)") from None

    def logits(self, texts: list, batch_size: int = 32) -> np.ndarray:
        self._check_inputs(texts)
        texts = [t if isinstance(t, str) else (t[0], t[1]) for t in texts]
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[start : start + batch_size])
            arrays = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                      "token_type_ids": [e.type_ids for e in enc]}  # fmt: skip
            feeds = {n: np.asarray(arrays[n], dtype=np.int64) for n in self.input_names}
            out.append(self.session.run(None, feeds)[0])
        return np.concatenate(out) if out else np.empty((0, self.head.n_outputs))

    def predict(self, texts: list, batch_size: int = 32) -> list[AnyPrediction]:
        """One prediction per text (or pair), in order: `Prediction` (classification, ordinal),
        `LabelSetPrediction` (multilabel) or `ValuePrediction` (regression)."""
        logits = self.logits(texts, batch_size)
        head = self.head
        decided = head.decide(logits)
        if head.task == "regression":
            return [ValuePrediction(float(v)) for v in decided]
        probs = head.probabilities(logits)
        if head.task == "multilabel":
            return [
                LabelSetPrediction([n for n, on in zip(self.labels, row) if on],
                                   {n: float(p) for n, p in zip(self.labels, prob)})
                for row, prob in zip(decided, probs)  # type: ignore[arg-type]
            ]  # fmt: skip
        return [
            Prediction(self.labels[int(k)], int(k), {name: float(p) for name, p in zip(self.labels, row)})
            for k, row in zip(decided, probs)  # type: ignore[arg-type]
        ]


def _registry_root(path: Path) -> Path | None:
    """The artifact root whose registry vouches for `path` (`<root>/<model>/<version>`), if any."""
    root = path.parent.parent
    return root if (registry_dir(root) / REGISTRY_STATE).is_file() else None


def load(
    path: str | Path,
    *,
    model: Literal["primary", "int8", "fp32"] = "primary",
    threads: int | None = None,
    public_key: str | Path | None = None,
) -> PackageModel:
    """Verify a package, then open it for predictions (no torch is imported).

    Every file is checked against SHA256SUMS (only plain, regular, listed files), and, when the
    package lies in an artifact root with a registry, against the digests the registry recorded
    at publish (an unregistered folder there is refused); only then is a session created. The
    model is the package's primary one (INT8, or FP32 if no INT8 was faster where it was built)
    unless `model` says otherwise; `threads` defaults to the thread count measured best for batch 1
    there, never more than this machine's physical cores. With `public_key` (a PEM elliptic-curve
    public key) the package's model.sig must verify with it: an unsigned package, or one signed by
    another key, is refused.

    Raises:
        PackageVerificationError: a file is changed, missing, extra or not what the registry
            recorded (named), the manifest is forged, or the folder is unregistered in a registry.
        RegistryError: the registry beside the package cannot be read or locked.
    """
    path = Path(os.path.abspath(path))  # as named: a symbolic link into a registry is refused there, not followed
    root = _registry_root(path)
    key = None if public_key is None else key_path(str(public_key), "public key")
    if root is not None:
        verify_registered(artifact_root=root, model_name=path.parent.name, version=path.name, public_key=key)
    else:
        verify_package(path)
        if key is not None:
            verify_signature(path, key)
    meta = read_metadata(path)
    file = {"primary": meta.primary_file, "int8": ONNX_INT8, "fp32": ONNX_FP32}[model]
    measured = meta.serving.get("best", {}).get("batch1", {}).get("threads")
    chosen = min(threads or measured or physical_cores(), physical_cores())
    return PackageModel(path, meta, file, chosen)
