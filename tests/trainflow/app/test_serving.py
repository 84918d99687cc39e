"""`trainflow predict` and `trainflow serve` on a real package of the tiny model: the server runs
as its own process on loopback and is spoken to over real HTTP (httpx)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from stages.publish import publish_run
from tests.pipeline import searched_and_quantized
from tests.serving import CLI, free_port, server
from tests.tiny import tiny_config
from trainflow.app.serve import prediction_dicts
from trainflow.core.config import default_recipes, parse_config_dict
from trainflow.data.dataset import load_split
from trainflow.package import load


@dataclass(frozen=True)
class Packages:
    root: Path  # the artifact root (a registry holding v1 and v2, both staging)
    name: str
    texts: list[str]  # test texts

    def path(self, version: str) -> Path:
        return self.root / self.name / version


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Packages:
    """The tiny model searched, exported and quantized once (the default INT8 recipe, batch-invariant),
    published twice as versions v1 and v2."""
    tmp = tmp_path_factory.mktemp("serving")
    raw = tiny_config(tmp, tiny_model_dir)
    raw["hpo"].update(n_trials=1, n_workers=1, pruner="none")
    raw["quantize"]["recipes"] = [default_recipes()[0].model_dump()]
    cfg = parse_config_dict(raw)
    ctx, best, records, exported, quant = searched_and_quantized(cfg)
    for version in ("v1", "v2"):
        publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                    pathspec=f"TrainFlow/r1/publish/{version}", version=version)  # fmt: skip
    return Packages(Path(cfg.publish.artifact_root), cfg.name, load_split(ctx.snapshot, "test").texts)


def _copy(packages: Packages, tmp_path: Path) -> Packages:
    """A private copy of the artifact root (a test that promotes or tampers owns it)."""
    shutil.copytree(packages.root, tmp_path / "artifacts", symlinks=True)
    return Packages(tmp_path / "artifacts", packages.name, packages.texts)


def _batch1(path: Path, texts: list[str]) -> list[dict]:
    """What the package answers for each text alone (the INT8 model)."""
    model = load(path, model="int8")
    return [prediction_dicts(model.predict([t], batch_size=1))[0] for t in texts]


# --- trainflow predict ------------------------------------------------------------------------


def test_predict_texts_and_files_as_jsonl_and_csv(packages: Packages, tmp_path: Path) -> None:
    v1 = packages.path("v1")
    expected = prediction_dicts(load(v1).predict(packages.texts[:3]))
    done = subprocess.run([*CLI, "predict", str(v1), *packages.texts[:3]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == packages.texts[:3]
    assert [{k: r[k] for k in ("label", "index", "probabilities")} for r in rows] == expected
    # A file, with ids, the package's text column, written as CSV with a probability per label.
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(packages.texts)))
    out = tmp_path / "out.csv"
    done = subprocess.run([*CLI, "predict", str(v1), "--input", str(source), "--id-column", "id", "--output", str(out),
                           "--batch-size", "7"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(packages.texts)} predictions to {out}" in done.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "text", "label", "index", "p_rotten", "p_fresh"]
    assert table["id"].tolist() == [f"r{i}" for i in range(len(packages.texts))]
    assert table["label"].tolist() == [p.label for p in load(v1).predict(packages.texts)]


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("id,text\n1,fine\n2,\n3,  \n", [], r"error: .*in.csv: empty text in 2 row\(s\): rows 2, 3"),
        (
            "id,review\n1,fine\n",
            [],
            r"error: .*in.csv: missing column\(s\) \['text'\]; the file has \['id', 'review'\]",
        ),
        ("text\nfine\n", ["--output", "out.xlsx"], r"error: --output out.xlsx: write .jsonl or .csv"),
        ("text\nfine\n", ["--pair-column", "other"], r"error: --pair-column 'other': this model reads single texts"),
        ("\x00\x01not,a table", [], r"error: "),
    ],
)
def test_predict_refuses_bad_input_with_one_line(
    packages: Packages, tmp_path: Path, content: str, args: list[str], message: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(content)
    done = subprocess.run([*CLI, "predict", str(packages.path("v1")), "--input", str(source), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert __import__("re").match(message, done.stderr.strip()), done.stderr


# --- trainflow serve --------------------------------------------------------------------------


async def _concurrent(url: str, bodies: list[dict], path: str = "/v1/predict") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_every_endpoint_and_batched_answers_equal_batch1_answers(packages: Packages, tmp_path: Path) -> None:
    v1, texts = packages.path("v1"), packages.texts[:32]
    expected = _batch1(v1, texts)
    with server(str(v1), "--onnx", "int8", tmp_path=tmp_path) as s:
        assert "micro-batching on: batch-invariant" in s.text() and "serving tiny v1" in s.text()
        assert httpx.get(f"{s.url}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{s.url}/v2").json()["name"] == "trainflow"
        meta = httpx.get(f"{s.url}/v2/models/tiny").json()
        assert meta["versions"] == ["v1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert httpx.get(f"{s.url}/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
        answer = httpx.post(f"{s.url}/v1/predict", json={"texts": texts[:3]}).json()
        assert answer == {"model": "tiny", "version": "v1", "predictions": expected[:3]}
        infer = httpx.post(f"{s.url}/v2/models/tiny/infer", json={"id": "q1", "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [3], "data": texts[:3]}]}).json()  # fmt: skip
        assert infer["id"] == "q1" and infer["model_version"] == "v1"
        by_name = {o["name"]: o for o in infer["outputs"]}
        assert by_name["label"]["data"] == [e["label"] for e in expected[:3]]
        assert by_name["probabilities"]["shape"] == [3, 2]
        assert by_name["probabilities"]["data"] == [
            e["probabilities"][k] for e in expected[:3] for k in ("rotten", "fresh")
        ]
        # 32 clients at once, one text each: they share model calls, and each answer is its batch-1 answer.
        replies = asyncio.run(_concurrent(s.url, [{"texts": [t]} for t in texts]))
        assert [r.status_code for r in replies] == [200] * 32
        assert [r.json()["predictions"][0] for r in replies] == expected
        metrics = httpx.get(f"{s.url}/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line and line[0] != "#"}
    calls, batched = values["trainflow_batch_size_count"], values["trainflow_batch_size_sum"]
    assert batched == 3 + 3 + 32 and calls < 32, "concurrent requests shared model calls"
    assert values['trainflow_requests_total{code="200",endpoint="v1_predict"}'] == 33
    assert values['trainflow_model_version_info{model="tiny",version="v1"}'] == 1.0
    assert values['trainflow_request_seconds_count{endpoint="v1_predict"}'] == 33


def test_bad_requests_get_a_4xx_json_error_never_a_500(packages: Packages, tmp_path: Path) -> None:
    limits = ["--max-texts", "4", "--max-text-chars", "50", "--max-body-bytes", "3000"]
    with server(str(packages.path("v1")), *limits, tmp_path=tmp_path) as s:
        cases = [
            ("POST", "/v1/predict", b"{not json", 400, "invalid JSON"),
            ("POST", "/v1/predict", [1, 2], 400, "JSON object"),
            ("POST", "/v1/predict", {"texts": "one text"}, 400, "non-empty list"),
            ("POST", "/v1/predict", {"texts": []}, 400, "non-empty list"),
            ("POST", "/v1/predict", {"texts": ["a", 3]}, 400, "texts[1] is int"),
            ("POST", "/v1/predict", {"texts": ["a"] * 5}, 413, "more than the limit of 4"),
            ("POST", "/v1/predict", {"texts": ["x" * 51]}, 413, "51 characters"),
            ("POST", "/v1/predict", {"texts": ["a"], "extra": 1}, 400, "unknown field"),
            ("POST", "/v1/predict", {"pairs": [["a", "b"]]}, 400, "reads single texts"),
            ("POST", "/v1/predict", b'{"texts": ["\\ud800"]}', 400, "not valid Unicode"),
            ("POST", "/v1/predict", b"[" * 2900, 400, "nested too deeply"),
            ("POST", "/v1/predict", b'{"texts": ["' + b"a" * 4000 + b'"]}', 413, "exceeds the limit of 3000"),
            ("POST", "/v2/models/other/infer", {"inputs": []}, 404, "unknown model 'other'"),
            ("GET", "/v2/models/other", None, 404, "unknown model"),
            (
                "POST",
                "/v2/models/tiny/infer",
                {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["a"]}]},
                400,
                "datatype must be BYTES",
            ),  # fmt: skip
            (
                "POST",
                "/v2/models/tiny/infer",
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
                400,
                "holds 2 elements",
            ),  # fmt: skip
            (
                "POST",
                "/v2/models/tiny/infer",
                {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
                400,
                "unknown input 'query'",
            ),  # fmt: skip
            ("POST", "/v2/models/tiny/infer", {"outputs": []}, 400, '"inputs"'),
            ("GET", "/nowhere", None, 404, "Not Found"),
            ("GET", "/v1/predict", None, 405, "Method Not Allowed"),
        ]
        for method, path, body, status, message in cases:
            content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
            r = httpx.request(method, f"{s.url}{path}", content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (path, body, r.text)
            assert message in r.json()["error"], (path, r.json())
        assert httpx.post(f"{s.url}/v1/predict", json={"texts": ["still fine"]}).status_code == 200
        metrics = httpx.get(f"{s.url}/metrics").text
    assert 'trainflow_request_errors_total{code="413",endpoint="v1_predict"} 3.0' in metrics
    assert 'code="500"' not in metrics and "Traceback" not in s.text()


def test_a_tampered_or_unsigned_package_is_refused_before_the_port_opens(packages: Packages, tmp_path: Path) -> None:
    mine = _copy(packages, tmp_path)
    with (mine.path("v2") / "model_int8.onnx").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    port = free_port()
    done = subprocess.run([*CLI, "serve", str(mine.path("v2")), "--port", str(port)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "model_int8.onnx" in done.stderr and done.stderr.startswith("error: ")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pub = tmp_path / "key.pub"
    pub.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    done = subprocess.run([*CLI, "serve", str(mine.path("v1")), "--port", str(port), "--public-key", str(pub)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "error: " in done.stderr and "sig" in done.stderr.lower(), done.stderr
    with socket.socket() as s:  # the port was never opened
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_promote_and_rollback_swap_the_served_version_under_load_without_a_failed_request(
    packages: Packages, tmp_path: Path
) -> None:
    mine = _copy(packages, tmp_path)
    root = ["--artifact-root", str(mine.root)]
    subprocess.run([*CLI, "promote", "v1", *root], check=True, capture_output=True, timeout=120)
    texts = mine.texts[:4]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def load_loop(url: str) -> None:
        async def client() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:

                async def one() -> None:
                    while not stop.is_set():
                        r = await c.post("/v1/predict", json={"texts": texts})
                        seen.append((r.status_code, r.json().get("version", r.text)))

                await asyncio.gather(*(one() for _ in range(8)))

        asyncio.run(client())

    with server("--model", "tiny", "--onnx", "int8", "--poll-seconds", "0.2", *root, tmp_path=tmp_path) as s:
        worker = threading.Thread(target=load_loop, args=(s.url,))
        worker.start()
        try:
            time.sleep(1.0)
            subprocess.run([*CLI, "promote", "v2", *root], check=True, capture_output=True, timeout=120)
            _wait_for(lambda: seen and seen[-1][1] == "v2")
            subprocess.run([*CLI, "rollback", *root], check=True, capture_output=True, timeout=120)
            _wait_for(lambda: seen[-1][1] == "v1")
            time.sleep(0.5)
        finally:
            stop.set()
            worker.join(timeout=60)
        metrics = httpx.get(f"{s.url}/metrics").text
    assert len(seen) > 50 and {code for code, _ in seen} == {200}, "no request failed during the swaps"
    versions = [v for _, v in seen]
    first_v2, last_v2 = versions.index("v2"), len(versions) - 1 - versions[::-1].index("v2")
    assert set(versions[:first_v2]) == {"v1"} and set(versions[last_v2 + 1 :]) == {"v1"}
    assert 'trainflow_model_swaps_total{result="swapped"} 2.0' in metrics
    assert 'trainflow_model_version_info{model="tiny",version="v1"} 1.0' in metrics and 'version="v2"' not in metrics
    assert "registry: serving tiny v2 (was v1)" in s.text() and "registry: serving tiny v1 (was v2)" in s.text()


def _wait_for(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_drains_the_requests_in_flight_then_exits(packages: Packages, tmp_path: Path) -> None:
    long_texts = [(t + " ") * 3 for t in packages.texts[:64]]
    with server(str(packages.path("v1")), "--max-batch", "1", tmp_path=tmp_path) as s:
        assert "one text at a time: batching off" in s.text()

        async def run() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
                pending = [
                    asyncio.create_task(client.post("/v1/predict", json={"texts": long_texts})) for _ in range(8)
                ]
                await asyncio.sleep(0.5)  # accepted and queued: one text at a time takes a while
                assert s.process.poll() is None
                s.process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                return list(await asyncio.gather(*pending)), sent

        replies, sent = asyncio.run(run())
        code = s.process.wait(timeout=60)
    assert [r.status_code for r in replies] == [200] * 8
    assert all(len(r.json()["predictions"]) == len(long_texts) for r in replies)
    assert code == 0 and "drained: every request in flight was answered" in s.text()
    assert time.monotonic() > sent


def test_a_model_that_is_not_batch_invariant_is_served_one_text_at_a_time(packages: Packages, tmp_path: Path) -> None:
    """The INT8 model replaced by dynamic quantization (activation scales from each batch, so a text's
    outputs move with its batch-mates), the manifest rewritten: the probe finds it out."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path / "loose" / "tiny" / "dyn"  # outside any registry: SHA256SUMS alone vouches for it
    shutil.copytree(packages.path("v1"), folder)
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8)
    from trainflow.core.io import sha256_file

    names = sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in names))
    texts = packages.texts[:16]
    expected = _batch1(folder, texts)
    with server(str(folder), "--onnx", "int8", tmp_path=tmp_path) as s:
        assert "one text at a time: its outputs change with their batch-mates" in s.text()
        replies = asyncio.run(_concurrent(s.url, [{"texts": [t]} for t in texts] + [{"texts": texts}]))
        metrics = httpx.get(f"{s.url}/metrics").text
    assert [r.json()["predictions"] for r in replies] == [[e] for e in expected] + [expected]
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line and line[0] != "#"}
    assert values["trainflow_batch_size_sum"] == values["trainflow_batch_size_count"] == 32, "every call one text"
