"""HTTP routes: the prediction API (``api``) and the draw-a-digit page (``pages``).

Every route reads the model that ``lifespan`` put on ``app.state``; bad input gets a 4xx whose
``detail`` says what to fix, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from digit_recognizer.data.images import load_image
from digit_recognizer.data.kaggle_csv import (
    is_csv_name,
    parse_kaggle_csv,
    show_value,
    submission_chunks,
)
from digit_recognizer.data.lighting import MIN_CONTRAST
from digit_recognizer.errors import DataError, UnknownModelError
from digit_recognizer.models.registry import get_spec
from digit_recognizer.predict import PredictConfig, conform_rows, predict_rows, read_together
from digit_recognizer.serve.app import CSV_PATH, STATIC_DIR, ServeConfig, ServedModel

api = APIRouter()
pages = APIRouter(include_in_schema=False)

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff")
AS_IS_QUERY = "?as_is=true"  # a client's --as-is, as the warnings of redone digits name it
# Files, and text fields, a form may hold before Starlette refuses it with its own 400: enough
# for the answer to name what a client sent beside its one file. The body's limit bounds bytes.
MAX_FORM_PARTS = 8

T = TypeVar("T")


# --- request and response bodies ---------------------------------------------------------------


def _exactly(n_items: int, items: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Schema only: the array branch of an optional field holds ``n_items`` ``items``. The
    validators below enforce it with better messages; the schema lets clients (and
    schemathesis) generate requests the server accepts."""

    def update(schema: dict[str, Any]) -> None:
        schema["anyOf"][0].update(items=items, minItems=n_items, maxItems=n_items)

    return update


_PIXEL = {"type": "integer", "minimum": 0, "maximum": 255}


class DigitInput(BaseModel):
    """One digit in MNIST format (white ink on black, centred): ``pixels`` or ``image``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["pixels"]}, {"required": ["image"]}]},
    )

    pixels: list[StrictInt] | None = Field(
        None,
        description="784 values 0-255, row by row (Kaggle's pixel0 ... pixel783)",
        json_schema_extra=_exactly(784, _PIXEL),
    )
    image: list[list[StrictInt]] | None = Field(
        None,
        description="28 rows of 28 values 0-255",
        json_schema_extra=_exactly(28, {"type": "array", "items": _PIXEL, "minItems": 28,
                                        "maxItems": 28}),
    )  # fmt: skip

    @field_validator("pixels", "image", mode="wrap")
    @classmethod
    def _accept_whole_numbers(cls, values: Any, strict: ValidatorFunctionWrapHandler) -> Any:
        """255.0 and 1e2 as the integers they are: numpy's ``tolist()`` of a float array writes
        them so (and JSON Schema's "integer" takes them). Converted only where the strict
        integers fail, which keeps integer bodies off a Python loop over every value."""
        try:
            return strict(values)
        except ValidationError:
            return strict(_whole_numbers_as_ints(values))  # 0.5, NaN: refused as floats

    @field_validator("pixels")
    @classmethod
    def _check_pixels(cls, pixels: list[int] | None) -> list[int] | None:
        if pixels is not None:
            if len(pixels) != 784:
                raise ValueError(f"expected 784 values (28 x 28, row by row), got {len(pixels)}")
            _check_range(np.asarray(pixels), lambda i: f"index {i[0]}")
        return pixels

    @field_validator("image")
    @classmethod
    def _check_image(cls, image: list[list[int]] | None) -> list[list[int]] | None:
        if image is not None:
            if len(image) != 28:
                raise ValueError(f"expected 28 rows of 28 values, got {len(image)} rows")
            for row, values in enumerate(image):
                if len(values) != 28:
                    raise ValueError(f"row {row} has {len(values)} values, expected 28")
            _check_range(np.asarray(image), lambda i: f"row {i[0]}, column {i[1]}")
        return image

    @model_validator(mode="after")
    def _exactly_one(self) -> DigitInput:
        if (self.pixels is None) == (self.image is None):
            raise ValueError("give exactly one of 'pixels' (784 values) or 'image' (28 x 28)")
        # A blank digit (black, white or grey all over), or one scaled 0-1 (binarised), would
        # get a confident-looking answer; an image upload without ink gets "no digit found".
        image = self.to_image()
        brightest, darkest = int(image.max()), int(image.min())
        if brightest - darkest < MIN_CONTRAST:
            raise ValueError(
                f"no digit: its pixels range from {darkest} to {brightest}, where MNIST's run "
                "from 0 (paper) to 255 (ink); values are 0-255 with the ink bright (scale 0-1 "
                "values by 255)"
            )
        return self

    def to_image(self) -> NDArray[np.uint8]:
        """uint8 (28, 28)."""
        values = self.pixels if self.pixels is not None else self.image
        return np.asarray(values, dtype=np.uint8).reshape(28, 28)


def _whole_numbers_as_ints(values: Any) -> Any:
    """``values`` with each float that is a whole number (not NaN, not infinite) as an int,
    through nested lists."""
    if isinstance(values, list):
        return [_whole_numbers_as_ints(value) for value in values]
    if isinstance(values, float) and values.is_integer():
        return int(values)
    return values


def _check_range(values: NDArray[Any], where: Callable[[tuple[int, ...]], str]) -> None:
    """ValueError naming the first value outside 0-255, ``where(index)`` saying where it is."""
    bad = np.argwhere((values < 0) | (values > 255))
    if len(bad):
        index = tuple(bad[0])
        # Cut short: JSON allows integers of thousands of digits, all echoed back otherwise.
        shown = show_value(str(values[index]))
        raise ValueError(f"{where(index)} is {shown}; pixel values must be 0-255")


class Prediction(BaseModel):
    label: int = Field(description="the predicted digit")
    probabilities: list[float] = Field(description="probability of each digit 0-9")
    image: list[list[int]] | None = Field(
        None,
        description="the 28 x 28 image the model saw, where it is not the one sent: an upload's, "
        "or a JSON digit's redone in MNIST's layout (grad_cam lies over it)",
    )
    grad_cam: list[list[float]] | None = Field(
        None,
        description="with ?explain=true: Grad-CAM heatmap 28 x 28 in [0, 1] (a saliency map "
        "for a net without convolutions, such as mlp)",
    )


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request, and how to fix it")


class PredictResponse(Prediction):
    latency_ms: float = Field(description="server time: decoding, preprocessing, inference")
    grad_cam_error: str | None = Field(None, description="why grad_cam is missing, if it is")


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    latency_ms: float
    grad_cam_error: str | None = None


class ModelInfo(BaseModel):
    model: str = Field(description="registry name, see `digits models`")
    description: str | None = Field(description="null for a model this version does not know")
    backend: str = Field(description="torch, onnx, or scikit-learn (a classical model)")
    n_parameters: int | None
    params: dict[str, Any] = Field(description="builder arguments")
    validation_accuracy: float | None
    test_accuracy: float | None = Field(description="replica test score, if the run has one")
    test_tta: bool | None = Field(
        description="whether test_accuracy was scored with test-time augmentation, which the "
        "server does not use"
    )
    preprocessing: dict[str, Any]
    train_class_counts: list[int] | None = Field(
        description="rows of each digit 0-9 the model trained on (a digit of none it never "
        "predicts right); null where the run does not say"
    )
    limits: dict[str, int | float] = Field(description="ServeConfig limits on requests")


_SINGLE = TypeAdapter(DigitInput)
_BATCH = TypeAdapter(list[DigitInput])
_JSON_SCHEMA = {"oneOf": [_SINGLE.json_schema(), {"type": "array", "items": _SINGLE.json_schema()}]}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE_FIELD = {
    "schema": {
        "type": "object",
        "properties": {"file": _BINARY["schema"]},
        "required": ["file"],
        "additionalProperties": False,
    }
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON digit(s) in MNIST format, or an image file of a digit (any "
        "background, any size: it is cropped, scaled and centred as MNIST was)",
        "content": {
            "application/json": {"schema": _JSON_SCHEMA},
            "multipart/form-data": _FILE_FIELD,
            **dict.fromkeys(IMAGE_TYPES, _BINARY),
        },
    }
}
CSV_BODY = {
    "requestBody": {
        "required": True,
        "description": "Kaggle's test.csv (pixel0 ... pixel783), as a form field or raw body",
        "content": {"multipart/form-data": _FILE_FIELD, "text/csv": _BINARY},
    }
}


# --- routes ------------------------------------------------------------------------------------


# /health and /model run on the event loop, not in the thread pool that predictions fill: a
# queue of slow requests (heatmaps of 256 digits, big CSVs) would keep a health check waiting 8 s.
@api.get("/health")
async def health(request: Request) -> dict[str, str]:
    """Liveness: the model is loaded and the server answers."""
    served: ServedModel = request.app.state.model
    return {"status": "ok", "model": served.meta["model"], "backend": served.backend}


@api.get("/model")
async def model_info(request: Request) -> ModelInfo:
    """The served model: architecture, size, accuracy from the run, and the request limits."""
    served: ServedModel = request.app.state.model
    meta, metrics = served.meta, served.metrics
    validation = (metrics.get("validation") or {}).get("accuracy", meta.get("valid_accuracy"))
    try:
        description = get_spec(meta["model"]).description
    except UnknownModelError:  # a model.json from a newer version, served by ONNX
        description = None
    return ModelInfo(
        model=meta["model"],
        description=description,
        backend=served.backend,
        n_parameters=meta.get("n_parameters"),
        params=meta.get("params", {}),
        validation_accuracy=validation,
        test_accuracy=metrics.get("test_accuracy"),
        test_tta=metrics.get("test_tta"),
        preprocessing=meta.get("preprocessing", {}),
        train_class_counts=meta.get("train_class_counts"),
        limits=request.app.state.config.limits(),
    )


@api.post(
    "/predict",
    response_model=PredictResponse | BatchResponse,
    response_model_exclude_none=True,
    openapi_extra=PREDICT_BODY,
    responses={400: {"model": ErrorResponse,
                     "description": "body is not valid JSON, or a malformed multipart form"},
               408: {"model": ErrorResponse,
                     "description": "the body took over body_timeout_s to arrive"},
               413: {"model": ErrorResponse,
                     "description": "body, batch or image over a ServeConfig limit"},
               415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
               422: {"model": ErrorResponse,
                     "description": "invalid digit, query or unreadable image"}},
)  # fmt: skip
async def predict(
    request: Request,
    explain: bool = Query(
        False, description="add a Grad-CAM heatmap per digit (a net, torch backend)"
    ),
    as_is: bool = Query(
        False, description="JSON digits: predict them unchanged, not first redone in MNIST's layout"
    ),
) -> Response:
    """Predict digit(s): JSON ``{"pixels": [...]}``, ``{"image": [[...]]}``, a list of those
    (a batch), or an uploaded PNG/JPEG image (raw body or form field ``file``).

    JSON digits not laid out as MNIST's (20 x 20 pixels, centred by mass) are first redone as
    MNIST made its own, as uploads always are (``data.images``), unless ``as_is``."""
    start = time.perf_counter()
    served: ServedModel = request.app.state.model
    config: ServeConfig = request.app.state.config
    images, is_batch, is_upload = await _read_digits(request, config)
    if is_upload and as_is:  # refused as `digits explain --as-is` refuses an image file
        raise HTTPException(
            422,
            "query.as_is applies to JSON digits; an uploaded image is always redone as MNIST's "
            "(cropped, scaled and centred): send its 28 x 28 pixels as JSON to predict them as "
            "they are",
        )
    # What the model sees goes back with the answer where it is not what was sent, so that a
    # Grad-CAM heatmap can be laid over the image it belongs to.
    shown = np.full(len(images), is_upload)
    together = not (is_upload or as_is)
    if together:
        sent = images
        # Not judged transposed or stretched, as files are: more passes over a batch would multiply
        # its cost. Whether the writers cross their 7s (read_together) costs none.
        images = await run_in_threadpool(
            conform_rows, images, PredictConfig(), "/predict", as_is=AS_IS_QUERY
        )
        shown = (images != sent).any(axis=(1, 2))
    # In a worker thread even for one image: inference releases the GIL, so the event loop parses
    # the next requests meanwhile (torch: 540 vs 360 requests/s inline, benchmarks/serve_load.py).
    # The answer is written there too: 256 digits with heatmaps take 0.2-0.7 s to build and
    # serialise through FastAPI's response model, which on the event loop would hold /health and
    # every other request meanwhile; pydantic's model_dump_json writes the same bytes in 0.03 s.
    answer = await run_in_threadpool(
        _predict_answer, served, images, shown, together, explain, is_batch, start
    )
    return Response(answer, media_type="application/json")


@api.post(
    CSV_PATH,
    response_class=Response,
    openapi_extra=CSV_BODY,
    responses={200: {"content": {"text/csv": {}}, "description": "submission.csv"},
               400: {"model": ErrorResponse, "description": "a malformed multipart form"},
               413: {"model": ErrorResponse, "description": "over max_csv_bytes or max_csv_rows"},
               415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
               422: {"model": ErrorResponse,
                     "description": "the CSV is not in Kaggle's format, or an invalid query"},
               408: {"model": ErrorResponse,
                     "description": "the upload took over csv_upload_timeout_s to arrive"},
               503: {"model": ErrorResponse,
                     "description": "max_csv_jobs uploads in progress; retry after a few seconds"}},
)  # fmt: skip
async def predict_csv(
    request: Request,
    as_is: bool = Query(
        False,
        description="rows in their own layout, not redone in MNIST's (faint ink is "
        "still scaled to 0-255)",
    ),
) -> Response:
    """Predict every row of a Kaggle ``test.csv``; returns ``submission.csv`` (ImageId,Label).

    Rows not laid out as MNIST's are first redone as MNIST made its own, unless ``as_is``."""
    content_type = _content_type(request)
    if content_type not in ("multipart/form-data", "text/csv", "application/octet-stream"):
        raise HTTPException(
            415,
            f"Content-Type '{content_type or 'none'}' is not supported here; upload the CSV "
            "as multipart/form-data (field 'file') or as text/csv",
        )
    served: ServedModel = request.app.state.model
    config: ServeConfig = request.app.state.config
    slots: asyncio.Semaphore = request.app.state.csv_slots
    if slots.locked():  # answered before the body is read: waiting uploads would hold theirs
        raise HTTPException(
            503,
            f"{config.max_csv_jobs} CSV uploads are being predicted (ServeConfig.max_csv_jobs); "
            "retry in a few seconds",
            headers={"Retry-After": "5"},
        )
    async with slots:
        data, name = await _arrived_within(
            _read_upload(request, content_type, "test.csv", config.max_csv_bytes),
            config.csv_upload_timeout_s,
            "csv_upload_timeout_s",
        )
        submission = await run_in_threadpool(
            _submission_csv, served, data, name, config.max_csv_rows, not as_is
        )
    headers = {"Content-Disposition": 'attachment; filename="submission.csv"'}
    return Response(submission, media_type="text/csv", headers=headers)


@pages.get("/")
def draw_page() -> FileResponse:
    """The draw-a-digit page."""
    return FileResponse(STATIC_DIR / "index.html")


# --- helpers -----------------------------------------------------------------------------------


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_digits(
    request: Request, config: ServeConfig
) -> tuple[NDArray[np.uint8], bool, bool]:
    """Images uint8 (N, 28, 28) from the request, whether it was a batch and an image upload."""
    content_type = _content_type(request)
    if content_type == "application/json":
        # In a worker thread: validating a batch of 256 digits takes 0.5 s on 2 busy cores, and
        # the 3,000 a 10 MB body holds 6 s before max_batch refuses them, all of which /health
        # and every other request would wait on the event loop.
        body = await _arrived_within(request.body(), config.body_timeout_s, "body_timeout_s")
        images, is_batch = await run_in_threadpool(_parse_json, body, config.max_batch)
        return images, is_batch, False
    # Any image/* type: Pillow reads the format from the bytes, and browsers and systems label
    # one format several ways (image/jpg, image/pjpeg, image/x-png, image/x-ms-bmp).
    is_image = content_type.startswith("image/")
    if is_image or content_type in ("multipart/form-data", "application/octet-stream"):
        data, name = await _arrived_within(
            _read_upload(request, content_type, "image", config.max_body_bytes),
            config.body_timeout_s,
            "body_timeout_s",
        )
        try:
            image = await run_in_threadpool(load_image, data, name, config.max_image_pixels)
        except DataError as error:
            # A CSV uploaded here as a file is told where it goes, not only that it is no image.
            csv_route = f"; a CSV of digits goes to {CSV_PATH}" if is_csv_name(name) else ""
            raise HTTPException(422, f"{error}{csv_route}") from None
        return image[None], False, True
    # A CSV sent here is told where a CSV goes, not only to send JSON or an image.
    csv_route = f" (a CSV of digits goes to {CSV_PATH})" if content_type == "text/csv" else ""
    raise HTTPException(
        415,
        f"Content-Type '{content_type or 'none'}' is not supported{csv_route}; send "
        "application/json digits, an image body (image/png, image/jpeg, ...), or "
        "multipart/form-data with a field 'file'",
    )


async def _arrived_within(reading: Awaitable[T], timeout_s: float, limit_name: str) -> T:
    """What ``reading`` (of a request's body) returns, or 408 naming the ServeConfig field
    ``limit_name`` where it takes over ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reading
    except TimeoutError:
        raise HTTPException(
            408,
            f"the upload did not arrive within {timeout_s:g} s (ServeConfig.{limit_name}); "
            "send it again over a faster link",
            # RFC 9110: the rest of the body would otherwise keep the connection open
            headers={"Connection": "close"},
        ) from None


def _parse_json(body: bytes, max_batch: int) -> tuple[NDArray[np.uint8], bool]:
    # RFC 8259 lets a parser ignore a BOM, which Windows PowerShell 5 writes into UTF-8 files
    # (CSV uploads skip it too); pydantic calls it invalid JSON at line 1 column 1.
    body = body.removeprefix(codecs.BOM_UTF8)
    is_batch = body.lstrip()[:1] == b"["
    try:
        parsed = (_BATCH if is_batch else _SINGLE).validate_json(body)
    except ValidationError as error:
        is_json_error = error.errors()[0]["type"] == "json_invalid"
        raise HTTPException(400 if is_json_error else 422, describe(error.errors())) from None
    digits = parsed if is_batch else [parsed]
    if not digits:
        raise HTTPException(422, "empty batch: send a list of at least one digit")
    if len(digits) > max_batch:
        raise HTTPException(
            413,
            f"batch of {len(digits)} digits is over the limit of {max_batch} "
            "(ServeConfig.max_batch); split it",
        )
    return np.stack([digit.to_image() for digit in digits]), is_batch


def _predict_answer(
    served: ServedModel,
    images: NDArray[np.uint8],
    shown: NDArray[np.bool_],
    together: bool,
    explain: bool,
    is_batch: bool,
    start: float,
) -> bytes:
    """The JSON answer to ``/predict``: a ``PredictResponse``, or a ``BatchResponse`` for a batch;
    ``shown``: which images go back with their prediction, ``together``: whether the digits are
    read as one writer's (``read_together``), ``start``: the request's ``perf_counter()``."""
    probas = served.predict_proba(images)
    if together:
        probas = read_together(images, probas, served.predictor.layout_judge, "/predict",
                               AS_IS_QUERY)  # fmt: skip
    cam_error = served.grad_cam_error if explain else None
    if explain and cam_error is None:
        heatmaps = served.grad_cam(images, probas.argmax(axis=1))
    else:
        heatmaps = None
    predictions = [
        Prediction(
            label=int(proba.argmax()),
            probabilities=proba.tolist(),
            image=images[i].tolist() if shown[i] else None,
            grad_cam=np.round(heatmaps[i], 3).tolist() if heatmaps is not None else None,
        )
        for i, proba in enumerate(probas)
    ]
    latency_ms = round((time.perf_counter() - start) * 1000, 3)
    answer: BaseModel = (
        BatchResponse(predictions=predictions, latency_ms=latency_ms, grad_cam_error=cam_error)
        if is_batch
        else PredictResponse(
            **dict(predictions[0]), latency_ms=latency_ms, grad_cam_error=cam_error
        )
    )
    return answer.model_dump_json(exclude_none=True).encode()


def describe(errors: Sequence[Any], shown: int = 3) -> str:
    """``pixels[5]: Input should be a valid integer`` for the first few of pydantic's ``errors``
    (a body's, or FastAPI's for a query: ``query.explain: ...``)."""
    problems = []
    for item in errors[:shown]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
        if item["type"] == "json_invalid":
            return f"request body is not valid JSON ({item['ctx']['error']})"
        message = str(item["ctx"]["error"]) if item["type"] == "value_error" else item["msg"]
        if item["type"] == "int_type" and isinstance(item.get("input"), float):
            scaled = " (scale 0-1 values by 255)" if 0 <= item["input"] <= 1 else ""
            message = f"{item['input']} is not an integer 0-255{scaled}"
        problems.append(f"{where.lstrip('.') or 'body'}: {message}")
    more = len(errors) - shown
    return "; ".join(problems) + (f" (and {more} more problems)" if more > 0 else "")


async def _read_upload(
    request: Request, content_type: str, default_name: str, max_bytes: int
) -> tuple[bytes, str]:
    """The uploaded file's bytes and name: form field ``file`` or the raw body; ``max_bytes``:
    the body's limit (``BodySizeLimit`` holds it)."""
    if content_type != "multipart/form-data":
        return await request.body(), default_name
    try:
        # A text part as large as the body may be: one over Starlette's 1 MB for text would be
        # refused with its 400 "Part exceeded maximum size of 1024KB", not told to send a file.
        form = await request.form(
            max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=max_bytes
        )
    except StarletteHTTPException as error:  # malformed, or past MAX_FORM_PARTS: its 400
        reason = str(error.detail).rstrip(".")
        raise HTTPException(
            error.status_code, f"multipart upload: {reason}; {_send_alone(default_name)}"
        ) from None
    try:
        upload = _the_file(form, default_name)
        return await upload.read(), upload.filename or default_name
    finally:
        await form.close()


def _the_file(form: FormData, default_name: str) -> UploadFile:
    """The form's one part, a file in field ``file``; 422 naming any other part."""
    unexpected = next((name for name in form if name != "file"), None)
    if unexpected is not None:
        raise HTTPException(
            422,
            f"multipart upload: unexpected field {show_value(unexpected)}; "
            f"{_send_alone(default_name)}",
        )
    parts = form.getlist("file")
    if len(parts) > 1:
        raise HTTPException(
            422, f"multipart upload: {len(parts)} parts in field 'file'; send one file per request"
        )
    if not parts:
        raise HTTPException(422, "multipart upload without a file: put it in a field 'file'")
    if isinstance(parts[0], str):  # a part without a filename, which forms take for text
        raise HTTPException(
            422,
            "multipart upload: field 'file' is a text field, not a file; send it as a file "
            f"(a part with a filename: curl -F file=@{default_name})",
        )
    return parts[0]


def _send_alone(default_name: str) -> str:
    return f"send the file alone, in a field 'file' (curl -F file=@{default_name})"


def _submission_csv(
    served: ServedModel, data: bytes, name: str, max_rows: int, conform: bool
) -> bytes:
    """Read the CSV with the package's strict reader, predict (rows conformed to MNIST's
    layout if ``conform``), write it as a submission."""
    try:
        digits = parse_kaggle_csv(data, name)
    except DataError as error:
        raise HTTPException(422, str(error)) from None
    # Counted after the parse, not before: the header's and the compression's checks come first
    # (a gzip or binary upload counted by its line ends would be told to split the file), and
    # max_csv_bytes bounds the parse (64 MiB hold at most 42,794 rows, 1.4x max_csv_rows).
    if len(digits) > max_rows:
        raise HTTPException(
            413,
            f"{name}: {len(digits):,} rows is over the limit of {max_rows:,} "
            "(ServeConfig.max_csv_rows); split the file",
        )
    config = PredictConfig(conform=conform)
    probas = predict_rows(served.predictor, digits.images, config, name, as_is=AS_IS_QUERY)
    return "".join(submission_chunks(probas.argmax(axis=1))).encode()
