"""Run an exported text model with ONNX Runtime: tokenize, batch, and return raw outputs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Session settings used for every measurement; written into the package so consumers match them.
DEFAULT_SESSION = {"intra_op_num_threads": 0, "graph_optimization_level": "ORT_ENABLE_ALL"}


def make_session(path: Path, intra_op_num_threads: int = 0) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def tokenize_batches(
    tokenizer: object, texts: list[str], max_length: int, batch_size: int, input_names: list[str]
) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Yield (indices, feeds) with per-batch padding, in length order (little padding)."""
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(  # type: ignore[operator]
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="np"
        )
        yield idx, {name: enc[name].astype(np.int64) for name in input_names}


@dataclass
class OnnxTextModel:
    path: Path
    tokenizer: object
    max_length: int
    threads: int = 0

    def __post_init__(self) -> None:
        self.session = make_session(self.path, self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]  # type: ignore[attr-defined]

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for idx, feeds in tokenize_batches(self.tokenizer, texts, self.max_length, batch_size, self.input_names):
            result = self.session.run(["logits"], feeds)[0]  # type: ignore[attr-defined]
            for i, row in zip(idx, result):
                out[i] = row
        return np.stack(out)

    def latency_ms(self, texts: list[str], repeats: int = 1) -> dict[str, float]:
        """Batch-1 latency percentiles over `texts` (tokenization excluded), after one warm-up."""
        feeds = [f for _, f in tokenize_batches(self.tokenizer, texts, self.max_length, 1, self.input_names)]
        self.session.run(["logits"], feeds[0])  # type: ignore[attr-defined]
        times = []
        for _ in range(repeats):
            for f in feeds:
                t0 = time.perf_counter()
                self.session.run(["logits"], f)  # type: ignore[attr-defined]
                times.append((time.perf_counter() - t0) * 1000)
        arr = np.asarray(times)
        return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)), "n": len(arr)}
