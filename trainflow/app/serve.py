"""`trainflow serve`: a verified package behind HTTP, with dynamic micro-batching.

Endpoints (JSON in and out; every bad request gets a 4xx with {"error": ...}, never a 500):

  POST /v1/predict                {"texts": [...]} or {"pairs": [[text, pair text], ...]}
                                  -> {"model", "version", "predictions": [...]}
  GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready
  POST /v2/models/{name}/infer    Open Inference Protocol v2: a BYTES input "text" (and
                                  "text_pair" for a pair model)
  GET  /metrics                   Prometheus: requests, errors, latency, batch sizes, model version

Micro-batching: requests wait at most `max_wait_ms` for others, and their texts run as one model
call of at most `max_batch` texts. The answers equal batch-1 answers only for a model whose outputs
do not depend on their batch-mates: at start each model is probed (texts of several lengths scored
alone and in one padded batch, compared bit for bit; an INT8 package's own record must agree);
a model that is not batch-invariant is served one text at a time, and the log says so.

With `--model NAME --stage S` the registry's version of that stage is served, and the registry is
polled: a promote or rollback loads and verifies the new version beside the old one and swaps
them in one assignment; requests in flight finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainflow.core.errors import TrainflowError
from trainflow.release.loader import PackageModel, load

log = logging.getLogger("trainflow.serve")


@dataclass(frozen=True)
class Limits:
    """What the server accepts and how it batches."""

    max_batch: int = 32  # texts per model call; 1: every text alone (batching off)
    max_wait_ms: float = 5.0  # how long a request waits for others to share its model call
    max_texts: int = 256  # texts (or pairs) per request
    max_text_chars: int = 20_000  # characters per text
    max_body_bytes: int = 1 << 20  # request body size


class BadRequest(Exception):
    """A client's mistake: answered with `status` and {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServeError(TrainflowError):
    """The server cannot start: the package does not verify, the registry has no such version, ..."""


@dataclass
class Served:
    """One verified package version open for predictions."""

    name: str
    version: str
    path: Path
    model: PackageModel
    batched: bool  # its outputs are batch-invariant: requests may share a model call
    why: str  # what the batch-invariance probe found


def _probe_texts(model: PackageModel) -> list[Any]:
    """Texts of 1 to 40 words made of the tokenizer's own whole-word tokens (pairs for a pair
    model): enough spread in length that a padded batch differs from each text alone."""
    vocab = model.tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2)[:400] or ["text"]
    texts = [" ".join(words[(7 * i + j) % len(words)] for j in range(n)) for i, n in enumerate((1, 3, 8, 17, 40))]
    if model.metadata.text_pair:
        return [(t, texts[-1 - i]) for i, t in enumerate(texts)]
    return texts


def batch_invariance(model: PackageModel) -> tuple[bool, str]:
    """(served batched?, why): the probe texts alone and in one batch, compared bit for bit, and
    for the INT8 model the package's own measurement on its test split."""
    probes = _probe_texts(model)
    alone = np.concatenate([model.logits([t], batch_size=1) for t in probes])
    together = model.logits(probes, batch_size=len(probes))
    diff = float(np.abs(alone - together).max())
    if diff != 0.0:
        return False, f"its outputs change with their batch-mates (max |diff| {diff:.3g} on {len(probes)} probe texts)"
    recorded = model.metadata.quantization.batch_invariance
    if model.file.endswith("int8.onnx") and recorded and (recorded.get("max_abs_diff") or 0.0) > 0.0:
        return False, f"the package records outputs that change with their batch-mates ({recorded['max_abs_diff']:.3g})"
    return True, f"batch-invariant ({len(probes)} probe texts alone and batched agree bit for bit)"


def open_served(path: Path, *, public_key: Path | None, max_batch: int, onnx: str = "primary") -> Served:
    """Verify and open a package (trainflow.package.load; `onnx`: its primary, int8 or fp32 model),
    then probe its batch invariance.

    Raises:
        PackageVerificationError (and the loader's other errors): the package does not verify.
    """
    model = load(path, public_key=public_key, model=onnx)  # type: ignore[arg-type]
    batched, why = batch_invariance(model) if max_batch > 1 else (False, "batching off (--max-batch 1)")
    meta = model.metadata
    return Served(meta.model_name, meta.version, Path(path), model, batched, why)


def prediction_dicts(predictions: list[Any]) -> list[dict[str, Any]]:
    """Predictions as JSON-ready dicts: {label, index, probabilities} (classification, ordinal),
    {labels, probabilities} (multi-label), {value} (regression)."""
    return [asdict(p) for p in predictions]


# --- metrics ------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("trainflow_requests", "HTTP requests, by endpoint and status code.",
                                ["endpoint", "code"], registry=self.registry)  # fmt: skip
        self.errors = Counter("trainflow_request_errors", "Requests answered 4xx or 5xx, by endpoint and code.",
                              ["endpoint", "code"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("trainflow_request_seconds", "Request latency in seconds, by endpoint.", ["endpoint"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)  # fmt: skip
        self.batch = Histogram("trainflow_batch_size", "Texts per model call.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)  # fmt: skip
        self.texts = Counter("trainflow_texts", "Texts (or pairs) predicted.", registry=self.registry)
        self.version = Gauge("trainflow_model_version_info", "The model version served (value 1).",
                             ["model", "version"], registry=self.registry)  # fmt: skip
        self.swaps = Counter("trainflow_model_swaps", "Registry changes followed, by result.", ["result"],
                             registry=self.registry)  # fmt: skip

    def serving(self, old: Served | None, new: Served) -> None:
        if old is not None:
            self.version.remove(old.name, old.version)
        self.version.labels(new.name, new.version).set(1)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- batching -----------------------------------------------------------------------------------


@dataclass
class _Work:
    served: Served
    inputs: list[Any]
    done: asyncio.Future = field(repr=False)


LINGER_S = 0.001  # under load, how long a call waits for one more request before it runs


class Batcher:
    """Collects requests into model calls (module docstring) and runs them, one at a time, in a
    worker thread, so the event loop keeps accepting requests meanwhile."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits, self.metrics = limits, metrics
        self.queue: asyncio.Queue[_Work | None] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="trainflow-model")
        self._carry: _Work | None = None

    async def predict(self, served: Served, inputs: list[Any]) -> list[Any]:
        work = _Work(served, inputs, asyncio.get_running_loop().create_future())
        await self.queue.put(work)
        return await work.done

    async def run(self) -> None:
        """Serve the queue until a None arrives (put there after the server answered its last
        request). A call takes every request queued by then; when the previous call was shared
        (under load) it also takes those that keep arriving, each within LINGER_S of the last, for
        at most `max_wait_ms` in all. A lone client never waits, and a call never idles for
        requests that stopped coming."""
        loop = asyncio.get_running_loop()
        stopping, shared = False, False
        while True:
            first: _Work | None
            if self._carry is not None:
                first, self._carry = self._carry, None
            elif stopping:
                return
            else:
                first = await self.queue.get()
            if first is None:
                return
            batch, n = [first], len(first.inputs)
            deadline = loop.time() + (self.limits.max_wait_ms / 1000 if shared else 0.0)
            while first.served.batched and n < self.limits.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    wait = min(deadline - loop.time(), LINGER_S)  # requests still coming in: take them
                    if wait <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), wait)
                    except TimeoutError:
                        break
                if nxt is None:  # the end: answer what is here, then stop
                    stopping = True
                    break
                if nxt.served is not first.served:  # another version (a swap): its own call, next
                    self._carry = nxt
                    break
                batch.append(nxt)
                n += len(nxt.inputs)
            shared = len(batch) > 1
            await self._call(batch)

    async def _call(self, batch: list[_Work]) -> None:
        served = batch[0].served
        inputs = [x for w in batch for x in w.inputs]
        size = self.limits.max_batch if served.batched else 1
        for start in range(0, len(inputs), size):
            self.metrics.batch.observe(min(size, len(inputs) - start))
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self.pool, _predict_by_length, served, inputs, size)
        except Exception as err:
            if len(batch) == 1:
                if not batch[0].done.done():
                    batch[0].done.set_exception(err)
                return
            # A shared call failed: each request runs alone, so an error stays with the one that caused it.
            for w in batch:
                await self._call([w])
            return
        self.metrics.texts.inc(len(inputs))
        at = 0
        for w in batch:
            if not w.done.done():
                w.done.set_result(out[at : at + len(w.inputs)])
            at += len(w.inputs)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


SUB_BATCH = 8  # texts per ONNX Runtime run within a model call, grouped by length


def _predict_by_length(served: Served, inputs: list[Any], size: int) -> list[Any]:
    """Predict `inputs` in runs of at most SUB_BATCH texts of similar length (padding a run to its
    longest text wastes little), in the callers' order. For a batch-invariant model the answers
    are those of each text alone, whatever the grouping."""
    if size <= 1 or len(inputs) <= 1:
        return served.model.predict(inputs, batch_size=1)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]) if isinstance(inputs[i], str) else
                   len(inputs[i][0]) + len(inputs[i][1]))  # fmt: skip
    predicted = served.model.predict([inputs[i] for i in order], batch_size=min(size, SUB_BATCH))
    out: list[Any] = [None] * len(inputs)
    for i, p in zip(order, predicted, strict=True):
        out[i] = p
    return out


# --- the registry follower ------------------------------------------------------------------------


@dataclass
class Source:
    """Where the served version comes from: a package folder, or a registry stage."""

    package: Path | None = None
    artifact_root: Path | None = None
    model_name: str | None = None
    stage: str = "production"
    public_key: Path | None = None
    poll_seconds: float = 1.0
    onnx: str = "primary"  # which of the package's models: primary, int8 or fp32

    def current(self) -> Path:
        """The package folder to serve now.

        Raises:
            ServeError: the registry has no version of the model in the stage.
        """
        if self.package is not None:
            return self.package
        from trainflow.release.registry import stage_version

        assert self.artifact_root is not None and self.model_name is not None
        version = stage_version(artifact_root=self.artifact_root, model_name=self.model_name, stage=self.stage)  # type: ignore[arg-type]
        if version is None:
            raise ServeError(f"the registry at {self.artifact_root} has no {self.stage} version of model"
                             f" {self.model_name!r}")  # fmt: skip
        return self.artifact_root / self.model_name / version


# --- the app ------------------------------------------------------------------------------------


class Server:
    """The served model, its batcher and metrics, and the Starlette app over them."""

    def __init__(self, source: Source, limits: Limits, served: Served) -> None:
        self.source, self.limits, self.served = source, limits, served
        self.metrics = Metrics()
        self.metrics.serving(None, served)
        self.batcher: Batcher | None = None
        self._failed: str | None = None  # a registry version that did not verify: not retried until it changes

    # The registry follower: a promote or rollback swaps the served version.
    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.source.poll_seconds)
            try:
                path = await loop.run_in_executor(None, self.source.current)
            except Exception as err:  # the registry mid-change or unreadable: keep serving, say so once
                if self._failed != str(err):
                    log.error("registry: %s; still serving %s %s", err, self.served.name, self.served.version)
                    self._failed = str(err)
                continue
            if path.name == self.served.version or path.name == self._failed:
                continue
            try:
                new = await loop.run_in_executor(None, functools.partial(
                    open_served, path, public_key=self.source.public_key, max_batch=self.limits.max_batch,
                    onnx=self.source.onnx))  # fmt: skip
            except Exception as err:
                self.metrics.swaps.labels("refused").inc()
                self._failed = path.name
                log.error("registry: %s %s does not verify, still serving %s: %s", self.source.model_name, path.name,
                          self.served.version, str(err).splitlines()[0])  # fmt: skip
                continue
            old, self.served, self._failed = self.served, new, None
            self.metrics.serving(old, new)
            self.metrics.swaps.labels("swapped").inc()
            log.info("registry: serving %s %s (was %s); %s", new.name, new.version, old.version, _batching(new))

    def app(self) -> Any:
        """The Starlette app: the routes of the module docstring, each through `_endpoint`."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        e = self._endpoint
        routes = [
            Route("/v1/predict", e("v1_predict", self._v1_predict), methods=["POST"]),
            Route("/v2", e("v2_server", self._server_meta), methods=["GET"]),
            Route("/v2/health/live", e("v2_live", self._live), methods=["GET"]),
            Route("/v2/health/ready", e("v2_ready", self._ready), methods=["GET"]),
            Route("/v2/models/{name}", e("v2_model", self._model_meta), methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", e("v2_model", self._model_meta), methods=["GET"]),
            Route("/v2/models/{name}/ready", e("v2_model_ready", self._model_ready), methods=["GET"]),
            Route("/v2/models/{name}/infer", e("v2_infer", self._infer), methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", e("v2_infer", self._infer), methods=["POST"]),
            Route("/metrics", e("metrics", self._prometheus), methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: _http_error})

    def _endpoint(self, name: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`handler` with its errors as JSON (a client's 4xx; a server fault 500, logged with its
        traceback) and its request counted and timed under `name`."""
        from starlette.responses import JSONResponse

        metrics = self.metrics

        async def call(request: Any) -> Any:
            t0 = time.perf_counter()
            try:
                response = await handler(request)
            except BadRequest as err:
                response = JSONResponse({"error": str(err)}, status_code=err.status)
            except Exception:  # a server fault, not the client's
                log.exception("%s %s failed", request.method, request.url.path)
                response = JSONResponse({"error": "internal error (logged by the server)"}, status_code=500)
            code = str(response.status_code)
            metrics.requests.labels(name, code).inc()
            if response.status_code >= 400:
                metrics.errors.labels(name, code).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - t0)
            return response

        return call

    async def _body(self, request: Any) -> Any:
        """The request's JSON, read up to `max_body_bytes` (413 beyond, whatever Content-Length says)."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"request body of {declared} bytes exceeds the limit of {limit}", 413)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise BadRequest(f"request body exceeds the limit of {limit} bytes", 413)
        try:
            return json.loads(bytes(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"invalid JSON: {err}") from None
        except RecursionError:
            raise BadRequest("invalid JSON: nested too deeply") from None

    def _model_of(self, request: Any) -> Served:
        """The served version, if the path names it (404 otherwise)."""
        served, name = self.served, request.path_params["name"]
        if name != served.name:
            raise BadRequest(f"unknown model {name!r}; this server serves {served.name!r}", 404)
        wanted = request.path_params.get("version")
        if wanted is not None and wanted != served.version:
            raise BadRequest(f"model {name!r} has no version {wanted!r} here; it serves {served.version!r}", 404)
        return served

    async def _v1_predict(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        served = self.served  # this request's version, whatever a swap does meanwhile
        inputs = _inputs_v1(await self._body(request), served, self.limits)
        predictions = await self._predict(served, inputs)
        return JSONResponse({"model": served.name, "version": served.version,
                             "predictions": prediction_dicts(predictions)})  # fmt: skip

    async def _infer(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        served = self._model_of(request)
        inputs, request_id = _inputs_v2(await self._body(request), served, self.limits)
        predictions = await self._predict(served, inputs)
        out = {"model_name": served.name, "model_version": served.version,
               "outputs": _oip_outputs(served, predictions)}  # fmt: skip
        if request_id is not None:
            out["id"] = request_id
        return JSONResponse(out)

    async def _live(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"live": True})

    async def _ready(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"ready": self.batcher is not None}, status_code=200 if self.batcher else 503)

    async def _server_meta(self, request: Any) -> Any:
        from importlib.metadata import version

        from starlette.responses import JSONResponse

        return JSONResponse({"name": "trainflow", "version": version("trainflow"), "extensions": []})

    async def _model_meta(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(_oip_metadata(self._model_of(request)))

    async def _model_ready(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"name": self._model_of(request).name, "ready": self.batcher is not None})

    async def _prometheus(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _predict(self, served: Served, inputs: list[Any]) -> list[Any]:
        if self.batcher is None:
            raise BadRequest("the server is not ready", 503)
        return await self.batcher.predict(served, inputs)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self.batcher = Batcher(self.limits, self.metrics)
        batching = asyncio.create_task(self.batcher.run())
        follower = asyncio.create_task(self.follow()) if self.source.package is None else None
        try:
            yield
        finally:
            # Reached after the server stopped taking requests and those in flight were answered.
            if follower is not None:
                follower.cancel()
            await self.batcher.queue.put(None)
            await batching
            self.batcher.close()
            log.info("drained: every request in flight was answered; exiting")


async def _http_error(request: Any, exc: Exception) -> Any:
    """Starlette's own 404 (no such path) and 405 (method), as JSON like every other error."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"error": f"{detail}: {request.method} {request.url.path}"}, status_code=status)


def _batching(served: Served) -> str:
    if served.batched:
        return f"micro-batching on: {served.why}"
    return f"one text at a time: {served.why}"


def _texts(values: Any, what: str, limits: Limits) -> list[str]:
    if not isinstance(values, list) or not values:
        raise BadRequest(f"{what} must be a non-empty list of strings")
    if len(values) > limits.max_texts:
        raise BadRequest(f"{what} has {len(values)} items, more than the limit of {limits.max_texts}", 413)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise BadRequest(f"{what}[{i}] is {type(v).__name__}, not a string")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"{what}[{i}] is not valid Unicode (a lone surrogate)") from None
        if len(v) > limits.max_text_chars:
            raise BadRequest(f"{what}[{i}] has {len(v)} characters, more than the limit of {limits.max_text_chars}",
                             413)  # fmt: skip
    return values


def _inputs_v1(payload: Any, served: Served, limits: Limits) -> list[Any]:
    """The texts (or pairs) of a /v1/predict body."""
    if not isinstance(payload, dict) or not ({"texts", "pairs"} & set(payload)):
        raise BadRequest('the body must be a JSON object with "texts": [...] (or "pairs": [[text, pair text], ...])')
    if extra := sorted(set(payload) - {"texts", "pairs"}):
        raise BadRequest(f'unknown field(s) {extra}; send "texts" or "pairs"')
    pair_model = served.model.metadata.text_pair
    if "pairs" in payload and "texts" in payload:
        raise BadRequest('send "texts" or "pairs", not both')
    if "texts" in payload:
        if pair_model:
            raise BadRequest('this model reads text pairs: send {"pairs": [[text, pair text], ...]}')
        return _texts(payload["texts"], "texts", limits)
    if not pair_model:
        raise BadRequest('this model reads single texts: send {"texts": [...]}')
    pairs = payload["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise BadRequest("pairs must be a non-empty list of [text, pair text] lists")
    if len(pairs) > limits.max_texts:
        raise BadRequest(f"pairs has {len(pairs)} items, more than the limit of {limits.max_texts}", 413)
    for i, p in enumerate(pairs):
        if not isinstance(p, list) or len(p) != 2:
            raise BadRequest(f"pairs[{i}] must be a list of two strings [text, pair text]")
        _texts(p, f"pairs[{i}]", limits)
    return [(a, b) for a, b in pairs]


def _inputs_v2(payload: Any, served: Served, limits: Limits) -> tuple[list[Any], Any]:
    """The texts of an Open Inference Protocol v2 infer body, and its id."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise BadRequest('the body must be a JSON object with "inputs": [{"name": "text", "datatype": "BYTES",'
                         ' "shape": [n], "data": [...]}]')  # fmt: skip
    wanted = ["text", "text_pair"] if served.model.metadata.text_pair else ["text"]
    found: dict[str, list[str]] = {}
    for i, tensor in enumerate(payload["inputs"]):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, datatype, shape and data")
        name = tensor.get("name")
        if name not in wanted:
            raise BadRequest(f"inputs[{i}]: unknown input {name!r}; this model takes {wanted}")
        if tensor.get("datatype") != "BYTES":
            raise BadRequest(f"input {name!r}: datatype must be BYTES, not {tensor.get('datatype')!r}")
        data = tensor.get("data")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(f"input {name!r}: shape must be a list of sizes, not {shape!r}")
        values = _texts(data, f"input {name!r} data", limits)
        if math.prod(shape) != len(values):
            raise BadRequest(f"input {name!r}: shape {shape} holds {math.prod(shape)} elements, data has {len(values)}")
        found[str(name)] = values
    if missing := [n for n in wanted if n not in found]:
        raise BadRequest(f"missing input(s) {missing}")
    if len(wanted) == 2:
        if len(found["text"]) != len(found["text_pair"]):
            raise BadRequest(f"inputs 'text' ({len(found['text'])}) and 'text_pair' ({len(found['text_pair'])}) differ"
                             " in length")  # fmt: skip
        return list(zip(found["text"], found["text_pair"], strict=True)), payload.get("id")
    return found["text"], payload.get("id")


def _oip_metadata(served: Served) -> dict[str, Any]:
    meta = served.model.metadata
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if meta.text_pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    k = len(meta.labels)
    outputs = {
        "regression": [{"name": "value", "datatype": "FP32", "shape": [-1]}],
        "multilabel": [{"name": "labels", "datatype": "BYTES", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}],
    }.get(meta.task, [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                      {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}])  # fmt: skip
    return {"name": served.name, "versions": [served.version], "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": outputs, "parameters": {"task": meta.task, "labels": meta.labels}}  # fmt: skip


def _oip_outputs(served: Served, predictions: list[Any]) -> list[dict[str, Any]]:
    meta, n = served.model.metadata, len(predictions)
    if meta.task == "regression":
        return [{"name": "value", "datatype": "FP32", "shape": [n], "data": [p.value for p in predictions]}]
    probs = [p.probabilities[label] for p in predictions for label in meta.labels]
    prob = {"name": "probabilities", "datatype": "FP32", "shape": [n, len(meta.labels)], "data": probs}
    if meta.task == "multilabel":  # each text's label set as a JSON list (BYTES elements are strings)
        return [{"name": "labels", "datatype": "BYTES", "shape": [n], "data": [json.dumps(p.labels) for p in predictions]},
                prob]  # fmt: skip
    return [{"name": "label", "datatype": "BYTES", "shape": [n], "data": [p.label for p in predictions]}, prob]


def serve(source: Source, limits: Limits, *, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Verify the model first (ServeError / the loader's errors before any port opens), then serve
    until SIGINT or SIGTERM, which drain the requests in flight before exiting."""
    import uvicorn

    served = open_served(source.current(), public_key=source.public_key, max_batch=limits.max_batch, onnx=source.onnx)
    server = Server(source, limits, served)
    config = uvicorn.Config(server.app(), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")  # fmt: skip
    runner = uvicorn.Server(config)
    # uvicorn answers SIGTERM/SIGINT by draining, then raises the signal again under the handler it
    # found: with these no-op handlers the process ends normally (exit 0) once drained.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    following = f", following the registry's {source.stage} version" if source.package is None else ""
    on_ready(f"serving {served.name} {served.version} ({served.model.file}) on http://{host}:{port}{following};"
             f" {_batching(served)}")  # fmt: skip
    runner.run()
