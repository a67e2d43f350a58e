"""Load test of `digits serve`: single-image POST /predict requests from N concurrent clients.

Run: ``.venv/bin/python benchmarks/serve_load.py RUN_DIR`` (both backends, 8 clients, 3 x 3,000
requests each), or e.g. ``--backends onnx --clients 16 --requests 5000 --repeats 5``.

For each backend it starts ``digits serve RUN_DIR --backend B`` on 127.0.0.1 (the real entry
point, as users run it), waits for /health, warms up, then sends a fixed number of requests and
stops. Each request is one MNIST test digit as JSON ``{"pixels": [784 ints]}``. Reported:
requests/s and client-side p50/p99 latency, as mean and spread over the repeats.

The clients are a minimal asyncio HTTP/1.1 keep-alive loop rather than httpx: on a 2-core
machine the load generator shares the CPU with the server, and httpx spends several times more
CPU per request than this loop, which would be measured as server slowness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import get_args, get_type_hints

import numpy as np

from digit_recognizer.data.mnist import load_mnist
from digit_recognizer.errors import DigitsError
from digit_recognizer.serve.app import ServeConfig, listening_socket
from script import (  # run from benchmarks/: its folder is on the path
    count,
    mean_and_spread,
    run_script,
)

HOST = "127.0.0.1"


class ServerError(DigitsError):
    """`digits serve` did not come up: its own error (a run directory that is not one, ...)."""


def request_bytes(port: int, image: np.ndarray) -> bytes:
    body = json.dumps({"pixels": image.ravel().tolist()}).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def client(port: int, requests: list[bytes], latencies: list[float]) -> None:
    """Send ``requests`` one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for request in requests:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))  # fmt: skip
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != b"200":
                raise RuntimeError(f"server answered {status.decode()}")
    finally:
        writer.close()


async def load(port: int, requests: list[bytes], n_clients: int) -> tuple[float, list[float]]:
    """Requests/s and latencies (s) for ``requests`` split over ``n_clients`` connections."""
    latencies: list[float] = []
    start = time.perf_counter()
    shares = [requests[i::n_clients] for i in range(n_clients)]
    await asyncio.gather(*(client(port, share, latencies) for share in shares))
    return len(requests) / (time.perf_counter() - start), latencies


def start_server(run_dir: Path, backend: str, port: int) -> subprocess.Popen:
    # Refused while another server holds the port: it would answer /health while this one was
    # still loading (to fail then), and be measured in its place, under this backend's name.
    listening_socket(HOST, port).close()
    digits = Path(sys.executable).parent / "digits"
    command = [str(digits), "serve", str(run_dir), "--backend", backend, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # the onnx backend may export first
    while time.monotonic() < deadline:
        if server.poll() is not None:
            reason = server.stderr.read().decode()[-2000:].strip()
            raise ServerError(f"digits serve exited: {reason}")
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=1).read()
            return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise ServerError("digits serve did not answer /health within 120 s")


def benchmark(args: argparse.Namespace, backend: str, images: np.ndarray) -> dict[str, float]:
    server = start_server(args.run_dir, backend, args.port)
    try:
        requests = [request_bytes(args.port, images[i % len(images)]) for i in range(args.requests)]
        asyncio.run(load(args.port, requests[: args.requests // 5], args.clients))  # warm-up
        rates, p50s, p99s = [], [], []
        for _ in range(args.repeats):
            rate, latencies = asyncio.run(load(args.port, requests, args.clients))
            rates.append(rate)
            p50s.append(1000 * float(np.percentile(latencies, 50)))
            p99s.append(1000 * float(np.percentile(latencies, 99)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"rate": rates, "p50": p50s, "p99": p99s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a trained run directory")
    # Checked here: a backend `digits serve` refuses had been found once those before it were
    # measured, its server's error its only word.
    backends = get_args(get_type_hints(ServeConfig)["backend"])
    parser.add_argument("--backends", nargs="+", choices=backends, default=list(backends))
    parser.add_argument("--clients", type=count, default=8, help="concurrent connections")
    parser.add_argument("--requests", type=count, default=3000, help="requests per repeat")
    parser.add_argument("--repeats", type=count, default=3)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if not 1 <= args.port <= 65535:  # 0, a free port to `digits serve`, is one not known here
        parser.error(f"--port must be from 1 to 65535, got {args.port}")
    images = load_mnist().images[60000:61000]
    print(f"{args.requests} single-image requests x {args.repeats} repeats, {args.clients} clients")
    print(f"{'backend':8} {'requests/s':>16} {'p50 ms':>16} {'p99 ms':>16}")
    for backend in args.backends:
        result = benchmark(args, backend, images)
        columns = (mean_and_spread(result[key], 1) for key in ("rate", "p50", "p99"))
        print(f"{backend:8}" + "".join(f" {column:>16}" for column in columns), flush=True)


if __name__ == "__main__":
    run_script(main)
