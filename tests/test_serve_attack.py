"""The API under attack, over real sockets: `digits serve` on 127.0.0.1 in its own process.

schemathesis generates requests from the server's own OpenAPI schema (valid and invalid bodies
for every operation) and none may get a 5xx. Then: bodies over the limits (declared and
chunked), decompression bombs, a slow client, idle half-open connections and concurrent
uploads while /health keeps answering, and the server's resident memory across a bounded load.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.serve.app import create_app

HOST = "127.0.0.1"
TIMEOUT_S = 30  # any single request; a hung server fails the test instead of hanging it


class Server:
    """`digits serve RUN_DIR` on a free loopback port, in a subprocess."""

    def __init__(self, run_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from digit_recognizer.cli import app; app()", "serve",
             str(run_dir), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.process.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start in 120 s"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> Iterator[Server]:
    server = Server(tiny_run)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def digits(small_test: DigitSet) -> np.ndarray:
    return small_test.images[:20]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def health_ok(server: Server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=TIMEOUT_S).status_code == 200


# --- schemathesis: every operation, valid and invalid bodies, no 5xx ------------------------------


# The schema the server publishes at /openapi.json (create_app loads no model until startup, so
# it is known at import time, as schemathesis needs it; a test checks the server serves it).
OPENAPI = create_app(Path("run-dir-not-loaded")).openapi()
schemathesis.serializer.alias(["image/bmp", "image/tiff"], "application/octet-stream")
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def test_the_server_publishes_this_schema(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json", timeout=TIMEOUT_S).json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=150,
    deadline=None,  # the server runs in another process on shared cores
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_gets_a_server_error(case, server: Server) -> None:
    response = case.call(base_url=server.url, timeout=TIMEOUT_S)
    case.validate_response(response, checks=[not_a_server_error])


# --- raw HTTP: what a well-behaved client library would never send --------------------------------


def raw_request(server: Server, head: str, body: bytes = b"", pause_s: float = 0.0,
                n_pieces: int = 1) -> tuple[int, bytes]:  # fmt: skip
    """Send ``head`` (request line and headers) and ``body`` in ``n_pieces`` with pauses;
    return (status, response body)."""
    with socket.create_connection((HOST, server.port), timeout=TIMEOUT_S) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        step = -(-len(body) // n_pieces) if body else 1
        for start in range(0, len(body), step):
            try:
                connection.sendall(body[start : start + step])
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and closed: read what it said
            time.sleep(pause_s)
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
            if b"\r\n\r\n" in response:
                head_part, _, rest = response.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)  # fmt: skip
                if length is not None and len(rest) >= length:
                    return int(head_part.split()[1]), rest[:length]
    raise AssertionError(f"incomplete response: {response[:200]!r}")


def post_head(path: str, content_type: str, length: int | None) -> str:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\nHost: {HOST}\nContent-Type: {content_type}\n{size}\n"
        "Connection: close\n"
    )


def chunked(body: bytes, chunk_bytes: int = 1 << 20) -> bytes:
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_bodies_over_the_limits_get_413(server: Server, digits: np.ndarray) -> None:
    limits = httpx.get(f"{server.url}/model", timeout=TIMEOUT_S).json()["limits"]
    over = limits["max_body_bytes"] + 1
    # Declared too large: refused from the headers alone, before a byte of body.
    status, body = raw_request(server, post_head("/predict", "image/png", over))
    assert status == 413 and b"ServeConfig.max_body_bytes" in body
    status, body = raw_request(server, post_head("/predict/csv", "text/csv", 10**12))
    assert status == 413 and b"ServeConfig.max_csv_bytes" in body
    # Chunked, no length: counted as it streams in, refused once past the limit.
    status, body = raw_request(server, post_head("/predict", "application/json", None),
                               chunked(b" " * over))  # fmt: skip
    assert status == 413 and b"ServeConfig.max_body_bytes" in body
    batch = [{"pixels": digits[0].ravel().tolist()}] * (limits["max_batch"] + 1)
    response = httpx.post(f"{server.url}/predict", json=batch, timeout=TIMEOUT_S)
    assert response.status_code == 413 and "ServeConfig.max_batch" in response.json()["detail"]
    assert health_ok(server)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))  # fmt: skip


def test_decompression_bombs_get_422(server: Server) -> None:
    limits = httpx.get(f"{server.url}/model", timeout=TIMEOUT_S).json()["limits"]
    # 31 bytes of header promise 3.6 billion pixels (10.8 GB as RGB); refused before decoding.
    for width, height in ((60_000, 60_000), (limits["max_image_pixels"] + 1, 1)):
        response = httpx.post(f"{server.url}/predict", content=png_declaring(width, height),
                              headers={"Content-Type": "image/png"}, timeout=TIMEOUT_S)  # fmt: skip
        assert response.status_code == 422, response.text
        assert "pixels" in response.json()["detail"]
    # A real one at the limit: 40 kB of PNG, 25 M white pixels once decoded. Decoded (the limit
    # allows it) and found blank, in bounded memory (test_memory_stays_bounded).
    side = int(limits["max_image_pixels"] ** 0.5)
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, "PNG", optimize=True)
    assert len(buffer.getvalue()) < 100_000
    files = {"file": ("bomb.png", buffer.getvalue(), "image/png")}
    response = httpx.post(f"{server.url}/predict", files=files, timeout=TIMEOUT_S)
    assert response.status_code == 422 and "no digit found" in response.json()["detail"]
    assert health_ok(server)


def test_slow_and_idle_clients_do_not_stall_the_server(server: Server, digits) -> None:
    # 20 connections that send half a request line and then nothing.
    idle = [socket.create_connection((HOST, server.port), timeout=TIMEOUT_S) for _ in range(20)]
    for connection in idle:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
    # One client trickling a valid body in 20 pieces over ~1 s.
    body = json.dumps({"pixels": digits[0].ravel().tolist()}).encode()
    result: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(raw_request(
        server, post_head("/predict", "application/json", len(body)), body, 0.05, 20)))  # fmt: skip
    slow.start()
    while slow.is_alive():
        assert health_ok(server)  # answers meanwhile
        time.sleep(0.05)
    slow.join()
    for connection in idle:
        connection.close()
    assert result[0][0] == 200, result
    assert health_ok(server)


def test_concurrent_uploads_while_health_answers(server: Server, digits: np.ndarray) -> None:
    uploads = [png_bytes(255 - image) for image in digits]  # dark ink on white, as scanned
    sequential = [predict_upload(server, upload) for upload in uploads[:4]]
    health: list[bool] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            health.append(health_ok(server))
            time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    poller.start()
    with ThreadPoolExecutor(max_workers=6) as pool:
        labels = list(pool.map(lambda upload: predict_upload(server, upload), uploads * 3))
    done.set()
    poller.join()
    assert labels[:4] == sequential  # the same answers under load
    assert len(health) >= 1 and all(health)


def predict_upload(server: Server, upload: bytes) -> int:
    files = {"file": ("digit.png", upload, "image/png")}
    response = httpx.post(f"{server.url}/predict", files=files, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()["label"]


def test_memory_stays_bounded(server: Server, digits: np.ndarray) -> None:
    """A bounded load of good and bad requests: resident memory grows by less than 64 MB after
    a warm-up (which has already met every kind of request, bombs included)."""
    single = {"pixels": digits[0].ravel().tolist()}
    batch = [{"image": image.tolist()} for image in digits]
    upload = png_bytes(255 - digits[1])
    csv = ",".join(f"pixel{i}" for i in range(784)) + "\n" + "\n".join(
        ",".join(map(str, image.ravel())) for image in digits
    ) + "\n"  # fmt: skip

    def one_round(client: httpx.Client) -> None:
        assert client.post("/predict", json=single).status_code == 200
        assert client.post("/predict", json=batch).status_code == 200
        assert client.post("/predict?explain=true", json=single).status_code == 200
        assert client.post("/predict", files={"file": ("d.png", upload)}).status_code == 200
        csv_files = {"file": ("test.csv", csv.encode())}
        assert client.post("/predict/csv", files=csv_files).status_code == 200
        assert client.post("/predict", content=b"{", headers={"Content-Type": "application/json"}
                           ).status_code == 400  # fmt: skip
        assert client.post("/predict", content=png_declaring(60_000, 60_000),
                           headers={"Content-Type": "image/png"}).status_code == 422  # fmt: skip

    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        for _ in range(10):
            one_round(client)
        before = server.rss_bytes()
        for _ in range(60):  # 420 requests
            one_round(client)
        after = server.rss_bytes()
    assert after - before < 64 * 2**20, (
        f"RSS grew from {before / 2**20:.0f} MB to {after / 2**20:.0f} MB"
    )
