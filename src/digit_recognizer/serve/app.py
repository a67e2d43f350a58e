"""The FastAPI app: configuration, model loading in ``lifespan``, and the request-size limit.

Routes live in ``routes.py``; inference goes through ``predict.Predictor`` (torch) or
``export.OnnxPredictor`` (onnxruntime), image uploads through ``data.images.load_image``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from digit_recognizer import __version__
from digit_recognizer.config import check_fields
from digit_recognizer.data.images import MAX_IMAGE_PIXELS
from digit_recognizer.errors import ConfigError, ModelFileError
from digit_recognizer.evaluate import METRICS_FILE, read_metrics
from digit_recognizer.export import ONNX_FILE, ONNX_PREPROCESSING, OnnxPredictor
from digit_recognizer.models.classical import is_pipeline
from digit_recognizer.models.storage import META_FILE, WEIGHTS_FILE, read_meta
from digit_recognizer.predict import PredictConfig, Predictor, check_predicts_numbers

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CSV_PATH = "/predict/csv"
GRAD_CAM_NEEDS_TORCH = (
    "Grad-CAM needs the torch backend (gradients); this server runs onnx. "
    "Restart it with --backend torch for heatmaps."
)


@dataclass
class ServeConfig:
    """How to serve a run; the limits turn oversized requests into 413/422 answers."""

    host: str = "127.0.0.1"  # this machine only; "0.0.0.0" exposes the model to the network
    port: int = 8000
    backend: Literal["torch", "onnx"] = "torch"  # onnx: ~3x the throughput on CPU (README)
    # Intra-op threads per inference. Concurrent requests already fill the cores, and on 2 busy
    # cores one image took 1.9 ms with 1 torch thread but 160 ms with 2 spinning against other
    # processes; under load (benchmarks/serve_load.py) 1 and 2 measured alike, within noise.
    n_threads: int = 1
    access_log: bool = False  # a log line per request costs throughput; uvicorn's errors still log
    max_body_bytes: int = 10 * 2**20  # JSON and image uploads; a 24 MP JPEG is ~8 MB
    max_csv_bytes: int = 64 * 2**20  # CSV uploads to /predict/csv; Kaggle's test.csv is 51 MB
    max_batch: int = 256  # images per JSON request to /predict
    max_csv_rows: int = 30_000  # rows per CSV upload; Kaggle's test.csv has 28,000
    # CSV uploads handled at once; more get 503 before their body is read. Each holds its body,
    # a temporary copy and its parsed rows (~300 MB for Kaggle's test.csv) until it answers.
    max_csv_jobs: int = 2
    # Seconds a CSV upload may take to arrive once it holds one of those slots: two clients
    # stalled mid-body would otherwise keep every other upload out (a 51 MB test.csv at 1 MB/s).
    csv_upload_timeout_s: float = 120
    # Seconds a JSON or image body to /predict may take to arrive: uvicorn bounds none, and a
    # client gone quiet mid-body would hold its connection and up to max_body_bytes for ever.
    # 10 MiB at 1 Mbit/s take 84 s.
    body_timeout_s: float = 120
    # Seconds a connection may take to send a request's headers, from its opening or the last
    # answer: uvicorn times neither, and a client that connects and sends nothing, or sends its
    # headers a byte at a time, would hold its connection for ever. A connection that sends nothing
    # after an answer is closed sooner, by uvicorn's timeout_keep_alive (5 s).
    header_timeout_s: float = 10
    max_image_pixels: int = MAX_IMAGE_PIXELS  # decoded size of an uploaded image (bombs)

    def __post_init__(self) -> None:
        check_fields(self)  # the backend among them
        if self.host.startswith("[") and self.host.endswith("]"):  # [::1], as a URL writes it
            self.host = self.host[1:-1]
        if not self.host:  # binding to "" would listen on every interface
            raise ConfigError("host is empty; give an address, e.g. 127.0.0.1 (this machine)")
        for name in ("n_threads", "max_body_bytes", "max_csv_bytes", "max_batch",
                     "max_csv_rows", "max_csv_jobs", "max_image_pixels"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("csv_upload_timeout_s", "body_timeout_s", "header_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:  # nan too
                raise ConfigError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:  # 0: any free port
            raise ConfigError(f"port must be from 0 to 65535, got {self.port}")

    def limits(self) -> dict[str, int | float]:
        """The request limits, as ``GET /model`` reports them."""
        names = ("max_body_bytes", "max_csv_bytes", "max_batch", "max_csv_rows", "max_csv_jobs",
                 "csv_upload_timeout_s", "body_timeout_s", "header_timeout_s",
                 "max_image_pixels")  # fmt: skip
        return {name: getattr(self, name) for name in names}


@dataclass
class ServedModel:
    """What the routes need: probabilities, Grad-CAM where the backend allows, and metadata."""

    backend: str  # what computes the answers: torch, onnx, or scikit-learn (under torch's flag)
    predictor: Predictor | OnnxPredictor
    meta: dict[str, Any]  # model.json
    metrics: dict[str, Any]  # metrics.json, {} when the run has none
    # Grad-CAM's own copy of the net (a net on the torch backend): its forward hook must not
    # catch the forwards of predictions running at the same time in other threads.
    explain_net: torch.nn.Module | None = None
    explain_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def grad_cam_error(self) -> str | None:
        """Why ``grad_cam`` gives no heatmaps here, as answers say it; None where it does."""
        if self.backend == "onnx":
            return GRAD_CAM_NEEDS_TORCH
        if self.explain_net is None:  # loaded without one: a scikit-learn pipeline
            return (
                f"Grad-CAM needs a net (gradients); this server runs '{self.meta['model']}', a "
                "scikit-learn model. Serve a net's run directory for heatmaps."
            )
        return None

    def predict_proba(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self.predictor.predict_proba(images)

    def grad_cam(
        self, images: NDArray[np.uint8], predicted: NDArray[np.int64]
    ) -> NDArray[np.float32]:
        """Heatmaps (N, 28, 28) in [0, 1] for the ``predicted`` digits; where ``grad_cam_error``
        is None only."""
        from digit_recognizer.explain import grad_cam

        assert self.explain_net is not None, self.grad_cam_error
        with self.explain_lock:  # one at a time: each adds and removes a hook on the net
            return grad_cam(self.explain_net, images, target=predicted)


def load_served_model(run_dir: Path, config: ServeConfig) -> ServedModel:
    """Load the run for ``config.backend``; ``ModelFileError`` if it is not a trained run."""
    meta = read_meta(run_dir)
    is_classical = is_pipeline(meta)
    explain_net = None
    # Not load_net's "this command takes a net's run": the torch backend serves a pipeline.
    if config.backend == "onnx" and is_classical:
        raise ModelFileError(f"{run_dir}: '{meta['model']}' is a scikit-learn model, which "
                             "exports to no ONNX: serve it with --backend torch")  # fmt: skip
    if config.backend == "onnx":
        predictor: Predictor | OnnxPredictor = OnnxPredictor.load(run_dir, config.n_threads)
        meta = meta | {"preprocessing": ONNX_PREPROCESSING}  # GET /model: what it serves takes
    elif not (run_dir / WEIGHTS_FILE).exists() and (run_dir / ONNX_FILE).exists():
        raise ModelFileError(f"{run_dir} holds model.onnx without PyTorch's weights: serve it "
                             "with --backend onnx")  # fmt: skip
    else:
        # fp32: bf16 autocast gains nothing on single images (2.15 vs 2.33 ms per image; under
        # load 365-500 vs 437-501 requests/s, within noise), and fp32 keeps the two backends'
        # probabilities within 1e-4 of each other. Batch norm unfolded, as README's figures were
        # measured.
        predictor = Predictor.load([run_dir], PredictConfig(amp=False, fuse_batch_norm=False))
        if not is_classical:  # a pipeline predicts, but has no gradients
            # Copied, not read again, else a training rewriting the run between two reads has
            # the heatmaps explain another net than the one predicting.
            explain_net = copy.deepcopy(predictor.models[0])
    # Refused as `digits serve` starts, not served with a /health of "ok" and a 500 for each
    # prediction.
    check_predicts_numbers(predictor.predict_proba, run_dir)
    metrics = read_metrics(run_dir)
    check_reported_figures(run_dir, meta, metrics)
    # A pipeline is served under --backend torch, but torch has no part in its answers.
    backend = "scikit-learn" if is_classical else config.backend
    return ServedModel(backend, predictor, meta, metrics, explain_net)


class _MetaFigures(BaseModel):  # other keys are not reported, and go unchecked
    n_parameters: int | None = None
    params: dict[str, Any] = {}
    preprocessing: dict[str, Any] = {}
    valid_accuracy: float | None = None


class _Validation(BaseModel):
    accuracy: float | None = None


class _MetricsFigures(BaseModel):
    validation: _Validation | None = None
    test_accuracy: float | None = None
    test_tta: bool | None = None


_REPORTED_FIGURES = {META_FILE: _MetaFigures, METRICS_FILE: _MetricsFigures}


def check_reported_figures(run_dir: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
    """``ModelFileError`` naming the file and key where a figure that ``GET /model`` reports has
    the wrong type: a hand-edited model.json or metrics.json would otherwise fail every request
    to /model (500) while predictions are served."""
    for name, record in ((META_FILE, meta), (METRICS_FILE, metrics)):
        try:
            _REPORTED_FIGURES[name].model_validate(record)
        except ValidationError as error:
            problem = error.errors()[0]
            key = ".".join(map(str, problem["loc"]))
            # not pydantic's "or instance of _Validation"
            message = "should be an object" if problem["type"] == "model_type" else problem["msg"]
            raise ModelFileError(
                f"{run_dir / name}: '{key}' is {problem['input']!r:.40}: {message}; correct "
                "it or delete the key"
            ) from None


class BodySizeLimit:
    """Answer 413 to request bodies over the limit before they reach memory (pure ASGI).

    A declared Content-Length is checked up front; a chunked body is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_csv_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_csv_bytes = max_csv_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # /predict/csv/ too, which the router redirects there
        is_csv = scope["path"].rstrip("/") == CSV_PATH
        limit = self.max_csv_bytes if is_csv else self.max_body_bytes
        limit_name = "max_csv_bytes" if is_csv else "max_body_bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await _send_413(send, limit, limit_name)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not response_started:
                await _send_413(send, limit, limit_name)


class HeadAsGet:
    """Answer HEAD wherever GET is answered, with GET's status and headers and no body (RFC
    9110), as Starlette's own routes do: FastAPI's answer 405, and uptime monitors probe with
    HEAD. The OpenAPI schema lists the GETs alone, HEAD being implied by HTTP (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class _BodyTooLargeError(Exception):
    """Raised inside ``receive`` to abandon a request whose body passed the limit."""


async def _send_413(send: Send, limit: int, limit_name: str) -> None:
    detail = (
        f"request body is over the limit of {limit:,} bytes (ServeConfig.{limit_name}); "
        "send a smaller file or split the batch"
    )
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    run_dir: Path, config: ServeConfig | None = None, model: ServedModel | None = None
) -> FastAPI:
    """The app serving ``run_dir``: ``model`` if loaded already, else loaded at startup
    (``lifespan``) onto ``app.state``."""
    from digit_recognizer.serve.routes import api, describe, pages

    run_dir, config = Path(run_dir), config or ServeConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.model = model or load_served_model(run_dir, config)
        log.info("serving %s (%s backend)", run_dir, app.state.model.backend)
        yield

    # /docs and /redoc with their scripts served from here (FastAPI's come from a CDN, and
    # stay blank offline).
    app = FastAPIOffline(
        title="digit-recognizer",
        summary="Handwritten digit recognition: draw, upload, or send pixels.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.csv_slots = asyncio.Semaphore(config.max_csv_jobs)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes,
                       max_csv_bytes=config.max_csv_bytes)  # fmt: skip
    app.add_middleware(HeadAsGet)
    app.include_router(api)
    app.include_router(pages)

    @app.exception_handler(ModelFileError)
    async def damaged_model(_request: Request, error: ModelFileError) -> JSONResponse:
        # Probabilities that are not numbers for some digits only, past the load's check: the
        # model's fault, not the request's, which a bare "Internal Server Error" does not say.
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _error: ClientDisconnect) -> Response:
        # Gone mid-upload (a tab closed, the page giving up): nobody to answer, and no
        # traceback to log, on every route that reads a body. 499: nginx's "client closed
        # request", for an access log.
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def invalid_query(_request: Request, error: RequestValidationError) -> JSONResponse:
        # One sentence in "detail", as every other 4xx answer has, not FastAPI's list.
        return JSONResponse({"detail": describe(error.errors())}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:8000``) as URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (``host``, ``port``; 0: a free one) and listening, for uvicorn;
    ``ConfigError`` when the address cannot be had (a port in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on connections accepted from
    # a socket that says it is TCP, and without it each keep-alive answer waits ~40 ms on the
    # client's delayed ACK (10x the latency).
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(socket.SOMAXCONN)
    except OSError as error:
        listening.close()
        # strerror: a failed name lookup's errno is negative, which os.strerror cannot name
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot serve at {address(host, port)} ({reason}); choose another "
                          "--port or --host") from None  # fmt: skip
    return listening


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on each request's headers, counted from
    the connection's opening or the previous answer, however the bytes trickle in meanwhile.

    uvicorn times a connection only from an answer to the next byte (timeout_keep_alive), and
    h11 bounds the headers' size (16 KiB), not their time: a connection opened and left silent,
    or sending its headers a byte at a time (slowloris), would be held for ever."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        # Before uvicorn's: it parses a request pipelined behind this one, which disarms it.
        self._await_headers()
        super().on_response_complete()

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        # A request's headers arrived: h11 parses no other before this one is answered.
        if self.scope is not scope:
            self._stop_awaiting_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_awaiting_headers()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_awaiting_headers()
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        # As nginx and Apache do: 408 to a client that sent part of a request, and no answer to
        # one that sent nothing (as uvicorn closes an idle keep-alive connection), such as a
        # browser's preconnected socket, which could read an unasked 408 as the answer to the
        # request it sends next. h11 holds the bytes of headers still arriving; IDLE: no answer
        # begun since the last one ended.
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
            detail = (
                f"the request's headers did not arrive within {self.header_timeout_s:g} s "
                "(ServeConfig.header_timeout_s); send it again over a faster link"
            )
            body = json.dumps({"detail": detail}).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(body))),
                       ("connection", "close")]  # fmt: skip
            for event in (h11.Response(status_code=408, headers=headers, reason="Request Timeout"),
                          h11.Data(data=body), h11.EndOfMessage()):  # fmt: skip
                self.transport.write(self.conn.send(event))
        self.transport.close()

    def _stop_awaiting_headers(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None


def make_server(app: ASGIApp, config: ServeConfig, port: int) -> uvicorn.Server:
    """uvicorn serving ``app`` under ``config``'s limits on connections; run it with
    ``server.run(sockets=[listening])``, ``listening`` bound to ``port`` (``listening_socket``)."""
    # python-multipart logs a WARNING for each malformed form ("Did not find CR at end of
    # boundary (10)"), which the client is answered 400 for: a line its operator can do nothing
    # about, as many as any client likes. Its module is python_multipart since 0.0.13.
    for name in ("python_multipart", "multipart"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # h11, which the deadline extends, even where httptools is installed (uvicorn's pick then;
    # this package does not require it).
    protocol = functools.partial(HeaderDeadlineProtocol, header_timeout_s=config.header_timeout_s)
    server_config = uvicorn.Config(
        app, host=config.host, port=port, access_log=config.access_log, http=protocol
    )
    return uvicorn.Server(server_config)


def run_server(
    run_dir: Path, config: ServeConfig | None = None, announce: Callable[[str], None] = log.info
) -> None:
    """Serve ``run_dir`` with uvicorn until interrupted (``digits serve``); ``announce`` gets
    the address once the run is known to load."""
    config = config or ServeConfig()
    # Loaded here, not at uvicorn's startup: a run that does not load fails in one line
    # (ModelFileError) before anything is announced, not in a traceback of the server's.
    model = load_served_model(Path(run_dir), config)
    # Bound here, so that the address announced is the one served (--port 0: a free one) and a
    # port in use is a one-line error rather than uvicorn's exit after the announcement.
    listening = listening_socket(config.host, config.port)
    port = listening.getsockname()[1]
    url = f"http://{address(config.host, port)}"
    announce(f"serving {run_dir} ({model.backend}) at {url}, API docs at {url}/docs")
    # The server process owns its threads: set once here, not in create_app, which tests share.
    torch.set_num_threads(config.n_threads)
    app = create_app(run_dir, config, model)
    server = make_server(app, config, port)
    # uvicorn shuts down on SIGTERM itself, then raises it again: with the default action this
    # process ends by the signal, the clean stop a service manager expects (systemd counts an
    # exit status of 143 as a failure), not as the commands' interruption. A closed terminal's
    # SIGHUP, which uvicorn does not handle, ends it at once by its default action too, as
    # nothing is left to clean up (raised in uvicorn's loop, it would fail with a traceback), unless
    # ignored (nohup).
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (tests' servers)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
    server.run(sockets=[listening])
