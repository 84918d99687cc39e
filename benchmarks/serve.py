"""Serving benchmark: requests per second and p50/p95/p99 latency of `trainflow serve` over
loopback at 1, 8 and 32 concurrent clients (each sends one text per request, the next as soon as
the answer is back), micro-batching on (--max-batch 32) and off (--max-batch 1), against a bare
tokenize + ONNX Runtime call of the same package in this process. Bounded: each level runs for
`--seconds` or `--requests`, whichever ends first.

The load generator (aiohttp, asyncio) runs on the same machine as the server: on a 2-core machine
they share the cores, as they would share a pod.

Usage:
    .venv/bin/python benchmarks/serve.py [--package artifacts/rt-sentiment/<version>] [--seconds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainflow.convert.onnx_model import cpu_info  # noqa: E402
from trainflow.release.loader import load  # noqa: E402

LEVELS = (1, 8, 32)


def newest_package(root: Path, name: str) -> Path:
    versions = (
        sorted(p for p in (root / name).iterdir() if (p / "metadata.json").is_file()) if (root / name).is_dir() else []
    )
    if not versions:
        sys.exit(f"no package under {root / name}: run `make run` first, or pass --package")
    return versions[-1]


def sample_texts(n: int) -> list[str]:
    import csv
    import io

    raw = gzip.decompress((ROOT / "data" / "rotten_tomatoes.csv.gz").read_bytes()).decode()
    return [r["text"] for r in csv.DictReader(io.StringIO(raw))][:n]


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}  # fmt: skip


def bare(package: Path, texts: list[str], onnx: str) -> dict[str, Any]:
    """Tokenize + ONNX Runtime for one text at a time, in this process (the package's threads)."""
    model = load(package, model=onnx)  # type: ignore[arg-type]
    for t in texts[:50]:
        model.logits([t], batch_size=1)
    times = []
    t_start = time.perf_counter()
    for t in texts:
        t0 = time.perf_counter()
        model.logits([t], batch_size=1)
        times.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - t_start
    return {**percentiles(times), "rps": len(texts) / elapsed, "threads": model.threads, "file": model.file}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(package: Path, max_batch: int, onnx: str, max_wait_ms: float = 5.0):  # noqa: ANN201
    port = free_port()
    log = Path(f"/tmp/trainflow-serve-bench-{port}.log")
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "trainflow.app.cli", "serve", str(package), "--port", str(port),
                                 "--max-batch", str(max_batch), "--onnx", onnx, "--max-wait-ms", str(max_wait_ms)],
                                stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    try:
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def drive(url: str, texts: list[str], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`clients` concurrent clients, each one request (one text) at a time, until `seconds` or
    `max_requests`."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = iter(range(max_requests))
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                async with session.post("/v1/predict", json={"texts": [texts[i % len(texts)]]}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)

        t_start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    return {"clients": clients, "rps": len(latencies) / elapsed, "errors": errors, "seconds": elapsed,
            **percentiles(latencies)}  # fmt: skip


def batch_sizes(url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    return values["trainflow_batch_size_sum"] / max(1.0, values["trainflow_batch_size_count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=None)
    parser.add_argument("--onnx", default="primary", choices=["primary", "int8", "fp32"])
    parser.add_argument("--seconds", type=float, default=8.0, help="per level, mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="the modes take turns this many times per level")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve.json")
    args = parser.parse_args()
    package = args.package or newest_package(ROOT / "artifacts", "rt-sentiment")
    texts = sample_texts(1000)
    results: dict[str, Any] = {"package": str(package), "cpu": cpu_info(), "python": platform.python_version(),
                               "seconds": args.seconds, "rounds": args.rounds, "served": {}}  # fmt: skip
    modes = {"batching on": 32, "batching off": 1}
    # Both servers run side by side and take turns at each level (the machine's speed drifts over a
    # run); the bare call is measured between turns too. Each figure is the median of its rounds.
    with served(package, modes["batching on"], args.onnx) as (on_url, on_log), \
            served(package, modes["batching off"], args.onnx) as (off_url, off_log):  # fmt: skip
        urls = {"batching on": on_url, "batching off": off_url}
        for url in urls.values():
            asyncio.run(drive(url, texts, 4, 2.0, 100))  # warm-up
        rows: dict[str, list[dict]] = {m: [] for m in modes}
        bares = []
        for clients in LEVELS:
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for _ in range(args.rounds):
                if clients == 1:
                    bares.append(bare(package, texts[:300], args.onnx))
                for mode, url in urls.items():
                    runs[mode].append(asyncio.run(drive(url, texts, clients, args.seconds, args.requests)))
            for mode in modes:
                row = {key: float(np.median([r[key] for r in runs[mode]])) for key in
                       ("rps", "p50_ms", "p95_ms", "p99_ms", "errors")}  # fmt: skip
                row["clients"], row["rounds"] = clients, runs[mode]
                rows[mode].append(row)
                print(f"{mode:12s} {clients:2d} clients: {row['rps']:7.1f} req/s, p50 {row['p50_ms']:6.2f} ms,"
                      f" p95 {row['p95_ms']:6.2f}, p99 {row['p99_ms']:6.2f}, errors {row['errors']:.0f}", flush=True)  # fmt: skip
        for mode, url in urls.items():
            log = (on_log if mode == "batching on" else off_log).read_text().splitlines()
            results["served"][mode] = {"levels": rows[mode], "mean_texts_per_call": batch_sizes(url),
                                       "log": log[0] if log else ""}  # fmt: skip
    results["bare"] = {"p50_ms": float(np.median([b["p50_ms"] for b in bares])), "rounds": bares,
                       "threads": bares[0]["threads"], "file": bares[0]["file"]}  # fmt: skip
    print(f"bare tokenize + ORT, batch 1: p50 {results['bare']['p50_ms']:.2f} ms ({results['bare']['file']},"
          f" {results['bare']['threads']} threads)", flush=True)  # fmt: skip
    on, off = results["served"]["batching on"]["levels"], results["served"]["batching off"]["levels"]
    results["ratios"] = {
        "rps_32_on_over_off": on[-1]["rps"] / off[-1]["rps"],
        "p99_32_on_ms": on[-1]["p99_ms"],
        "p50_1_on_over_bare": on[0]["p50_ms"] / results["bare"]["p50_ms"],
    }
    r = results["ratios"]
    print(f"32 clients: batching gives {r['rps_32_on_over_off']:.2f}x the requests per second (target >= 3x), p99"
          f" {r['p99_32_on_ms']:.1f} ms (target <= 100); 1 client: p50 {r['p50_1_on_over_bare']:.2f}x the bare call"
          " (target <= 1.2x)")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
