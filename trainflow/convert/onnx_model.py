"""Run an exported text model with ONNX Runtime: tokenize, batch, and return raw outputs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainflow.core.layout import TOKENIZER, TOKENIZER_CONFIG

log = logging.getLogger(__name__)
PROGRESS_TEXTS = 2000  # evaluating this many texts or more logs its progress


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime session options used for a measurement. They are written into the package
    (`metadata.json` -> onnx.session_options) so that a consumer can reproduce the latencies.

    `intra_op_num_threads=0` means all logical cores (`os.cpu_count()`); `resolved()` fills in the
    number actually used, so the recorded value never depends on ORT's own default.
    """

    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 1
    graph_optimization_level: str = "ORT_ENABLE_ALL"
    execution_mode: str = "ORT_SEQUENTIAL"

    def resolved(self) -> SessionSettings:
        threads = self.intra_op_num_threads or os.cpu_count() or 1
        return SessionSettings(threads, self.inter_op_num_threads, self.graph_optimization_level, self.execution_mode)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def make_session(path: Path, intra_op_num_threads: int = 0, settings: SessionSettings | None = None) -> object:
    """A CPU InferenceSession; `settings` wins over `intra_op_num_threads` when given."""
    import onnxruntime as ort

    settings = settings or SessionSettings(intra_op_num_threads=intra_op_num_threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_num_threads
    opts.inter_op_num_threads = settings.inter_op_num_threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.graph_optimization_level)
    opts.execution_mode = getattr(ort.ExecutionMode, settings.execution_mode)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


Inputs = list[str] | list[tuple[str, str]]  # texts, or (text, pair text) tuples of a pair task


def tokenize_batches(
    tokenizer: object, texts: Inputs, max_length: int, batch_size: int, input_names: list[str]
) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Yield (indices, feeds) with per-batch padding, in length order (little padding). Tuples
    are encoded as text pairs (longest-first truncation of the pair to max_length)."""
    lengths = [len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [texts[i] for i in idx]
        if batch and not isinstance(batch[0], str):
            enc = tokenizer(  # type: ignore[operator]
                [t[0] for t in batch], text_pair=[t[1] for t in batch], truncation=True, max_length=max_length,
                padding=True, return_tensors="np",
            )  # fmt: skip
        else:
            enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="np")  # type: ignore[operator]
        yield idx, {name: input_feed(enc, name) for name in input_names}


def input_feed(enc: dict, name: str) -> np.ndarray:
    """One ONNX input from a tokenizer's output (token types are all 0 when it gives none)."""
    if name == "token_type_ids" and name not in enc:
        return np.zeros_like(enc["input_ids"], dtype=np.int64)
    return enc[name].astype(np.int64)


class FolderTokenizer:
    """A model folder's `tokenizer.json` through the `tokenizers` library alone (no transformers,
    so no torch import: the quantize step loads in a fraction of the time), called like a Hugging
    Face fast tokenizer for what tokenize_batches and the calibration reader ask: truncation to
    max_length (special tokens included, as transformers does), padding to the longest text or to
    max_length with the pad id, numpy arrays of input_ids, attention_mask and token_type_ids."""

    def __init__(self, folder: Path) -> None:
        import json

        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tok = Tokenizer.from_file(str(folder / TOKENIZER))
        self._tok.no_padding()
        config = folder / TOKENIZER_CONFIG
        pad = json.loads(config.read_text()).get("pad_token", "[PAD]") if config.is_file() else "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        self.pad_token_id = int(self._tok.token_to_id(pad) or 0)

    def __call__(
        self,
        texts: list[str],
        truncation: bool = True,
        max_length: int | None = None,
        padding: bool | str = True,
        return_tensors: str = "np",
        text_pair: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """`text_pair`: a second text per row, encoded with the first as a pair (longest-first
        truncation of the pair to max_length, the second text's token_type_ids 1 where the family
        has them), as a fast tokenizer called with `text_pair=` does."""
        if truncation and max_length:
            self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        else:
            self._tok.no_truncation()
        if text_pair is not None and len(text_pair) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pair)} pair texts; give one pair text per text")
        inputs = list(texts) if text_pair is None else list(zip(texts, text_pair, strict=True))
        encs = self._tok.encode_batch(inputs)
        width = max_length if padding == "max_length" and max_length else max((len(e.ids) for e in encs), default=0)
        ids = np.full((len(encs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@dataclass
class OnnxTextModel:
    path: Path
    tokenizer: object
    max_length: int
    threads: int = 0
    settings: SessionSettings | None = None

    def __post_init__(self) -> None:
        self.session = make_session(self.path, self.threads, self.settings)
        self.input_names = [i.name for i in self.session.get_inputs()]  # type: ignore[attr-defined]

    def logits(self, texts: Inputs, batch_size: int = 32) -> np.ndarray:
        """Outputs for every text, in order. Large inputs (PROGRESS_TEXTS or more) log progress."""
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        t0, done, next_report = time.perf_counter(), 0, len(texts) // 4
        for idx, feeds in tokenize_batches(self.tokenizer, texts, self.max_length, batch_size, self.input_names):
            result = self.session.run(["logits"], feeds)[0]  # type: ignore[attr-defined]
            for i, row in zip(idx, result):
                out[i] = row
            done += len(idx)
            if len(texts) >= PROGRESS_TEXTS and done >= next_report and done < len(texts):
                log.info("%s: %d of %d texts, %.0f s", self.path.name, done, len(texts), time.perf_counter() - t0)
                next_report += len(texts) // 4
        return np.stack(out)

    def batch1_feeds(self, texts: Inputs) -> list[dict[str, np.ndarray]]:
        return [f for _, f in tokenize_batches(self.tokenizer, texts, self.max_length, 1, self.input_names)]


def interleaved_latency_ms(models: dict[str, OnnxTextModel], texts: Inputs, rounds: int = 1) -> dict[str, dict]:
    """Batch-1 latency percentiles of several models measured turn about: for each text, every
    model runs once (the order rotating), so a burst of load from another process on the machine
    hits all models alike instead of whichever happened to be measured at that moment.

    Tokenization is excluded; each model runs every text once as a warm-up first.
    """
    names = list(models)
    feeds = {n: models[n].batch1_feeds(texts) for n in names}
    for n in names:
        for f in feeds[n]:
            models[n].session.run(["logits"], f)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {n: [] for n in names}
    turn = 0
    for _ in range(rounds):
        for i in range(len(texts)):
            turn += 1
            for n in names[turn % len(names) :] + names[: turn % len(names)]:
                t0 = time.perf_counter()
                models[n].session.run(["logits"], feeds[n][i])  # type: ignore[attr-defined]
                times[n].append((time.perf_counter() - t0) * 1000)
    out = {}
    for n, t in times.items():
        arr = np.asarray(t)
        out[n] = {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)), "n": len(arr)}
    return out


def physical_cores() -> int:
    """Physical cores this process may use (hyperthread siblings counted once; never more than
    the CPUs in its affinity mask). Falls back to the logical count where the topology is unknown."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            return len(allowed)
    return max(1, len(cores))


def cpu_info() -> dict[str, object]:
    """The CPU a measurement ran on: model name, logical and physical cores, the SIMD features
    that decide INT8 speed (AVX2, AVX-512 VNNI, AMX)."""
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": physical_cores(),
            "features": [f for f in wanted if f in flags]}  # fmt: skip


def thread_sweep(
    paths: dict[str, Path],
    tokenizer: object,
    max_length: int,
    texts: Inputs,
    *,
    threads: list[int],
    batch_sizes: tuple[int, ...],
    rounds: int = 1,
) -> list[dict[str, object]]:
    """p50/p95 latency of each model at each thread count and batch size (tokenization excluded;
    a batch of b is the next b texts, padded to its longest). The models take turns per batch."""
    rows: list[dict[str, object]] = []
    for n in threads:
        models = {
            name: OnnxTextModel(path, tokenizer, max_length, settings=SessionSettings(n))
            for name, path in paths.items()
        }
        for batch in batch_sizes:
            feeds = [
                f
                for _, f in tokenize_batches(
                    tokenizer, texts, max_length, batch, next(iter(models.values())).input_names
                )
            ]
            for m in models.values():
                m.session.run(["logits"], feeds[0])  # type: ignore[attr-defined]
            times: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(rounds):
                for f in feeds:
                    for name, m in models.items():
                        t0 = time.perf_counter()
                        m.session.run(["logits"], f)  # type: ignore[attr-defined]
                        times[name].append((time.perf_counter() - t0) * 1000)
            for name, t in times.items():
                rows.append({"model": name, "threads": n, "batch": batch, "p50_ms": float(np.percentile(t, 50)),
                             "p95_ms": float(np.percentile(t, 95)), "n": len(t)})  # fmt: skip
    return rows
