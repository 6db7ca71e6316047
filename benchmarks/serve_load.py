"""A bounded load test of `vggtune serve` on loopback: N requests (one image each) at
concurrency 1, 8 and 32, with the server batching requests that arrive together and without
(--max-batch 1 --wait-ms 0). Requests/s, p50/p95/p99 latency and errors (which must be 0).
Uses a finished run (default runs/demo). Prints a table, writes results/serve-load.json."""
import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common import ROOT, save, table

SETTINGS = {"batching": [], "one at a time": ["--max-batch", "1", "--wait-ms", "0"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(run: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vggtune", "serve", str(run), "--port", str(port), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    latencies, errors = [], 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(i):
            nonlocal errors
            async with gate:
                started = time.perf_counter()
                answer = await client.post(url + "/predict", content=images[i % len(images)],
                                           headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - started)
                errors += answer.status_code != 200
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests": requests, "concurrency": concurrency, "requests_per_s": round(requests / wall, 2),
            "p50_ms": round(1000 * cuts[49]), "p95_ms": round(1000 * cuts[94]), "p99_ms": round(1000 * cuts[98]),
            "errors": errors, "wall_s": round(wall, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "model.json").is_file():
        raise SystemExit(f"{run} is not a finished run; `make demo` makes runs/demo, or pass --run RUN")
    tests = [row["path"] for row in json.loads((run / "splits.json").read_text())["test"][:40]]
    images = [Path(p).read_bytes() for p in tests]
    rows = []
    for concurrency in args.concurrency:           # both settings at each level, one after the other
        for setting, flags in SETTINGS.items():
            process, url = start(run, flags)
            try:
                asyncio.run(load(url, images, 4, 1))                    # warm-up
                row = {"setting": setting, **asyncio.run(load(url, images, args.requests, concurrency))}
            finally:
                process.terminate()
                process.wait(timeout=30)
            rows.append(row)
            print(row, flush=True)
    print(f"\nvggtune serve on loopback, {args.requests} requests of one photo each:")
    print(table(rows, ["setting", "concurrency", "requests_per_s", "p50_ms", "p95_ms", "p99_ms", "errors"]))
    save("serve-load", {"run": str(run), "rows": rows})
    if any(row["errors"] for row in rows):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
