"""The prediction server (serve/): every endpoint, every kind of bad input, with TestClient;
uvicorn's part (connections, timeouts, its log) over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import logging
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from digit_recognizer import predict as predict_module
from digit_recognizer.cli import app as cli_app
from digit_recognizer.data.images import MAX_IMAGE_PIXELS, conform_to_mnist, load_image
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.errors import ConfigError, ModelFileError
from digit_recognizer.estimator import build_estimator, count_parameters, save_estimator
from digit_recognizer.explain import grad_cam
from digit_recognizer.models import build
from digit_recognizer.models.registry import get_spec
from digit_recognizer.models.storage import PREPROCESSING, load_net, read_meta, save_net
from digit_recognizer.predict import PredictConfig, Predictor, conform_rows
from digit_recognizer.serve import ServeConfig, create_app
from digit_recognizer.serve.app import (
    GRAD_CAM_NEEDS_TORCH,
    ServedModel,
    address,
    listening_socket,
    load_served_model,
    make_server,
)
from tests.conftest import free_port
from tests.test_images import (
    CONTINENTAL_ONE,
    SEVEN,
    SEVENS_BAR,
    drawing,
    drawn_digit,
    encode,
    frame_filling,
    png_header,
    semeion_like,
)
from tests.test_predict_evaluate import ones_read_as_sevens_unless_crossed

LIMITS = {"max_body_bytes": 100_000, "max_csv_bytes": 300_000, "max_batch": 4, "max_csv_rows": 50}


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny run: the onnx backend writes model.onnx into it."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("serve") / "run"))


@pytest.fixture(scope="module")
def client(run_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(run_dir, ServeConfig(**LIMITS))) as client:
        yield client


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.load([run_dir], PredictConfig(amp=False))


@pytest.fixture(scope="module")
def digits(small_test: DigitSet) -> np.ndarray:
    return small_test.images[:6]


def pixels_body(image: np.ndarray) -> dict:
    return {"pixels": image.ravel().tolist()}


# --- endpoints ---------------------------------------------------------------------------------


def test_health_and_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": "cnn", "backend": "torch"}
    info = client.get("/model").json()
    assert info["model"] == "cnn" and info["backend"] == "torch"
    assert info["n_parameters"] == 278_890
    assert 0 < info["validation_accuracy"] <= 1  # model.json of a run without metrics.json
    assert info["limits"] == ServeConfig(**LIMITS).limits()
    # The digits it trained on: a client sees a model that never learnt some of them.
    counts = info["train_class_counts"]
    assert len(counts) == 10 and min(counts) > 0 and sum(counts) > 1000


def test_page_static_files_and_docs(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    assert "pointerdown" in client.get("/static/app.js").text
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/csv", "/health", "/model"} <= set(schema["paths"])
    content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/png"} <= set(content)


def test_head_is_answered_wherever_get_is(client: TestClient) -> None:
    """Uptime monitors probe with HEAD: /, /health and /model had answered 405. It gets GET's
    status and headers, no body, and is not listed beside the GETs in the schema."""
    for path in ("/", "/health", "/model", "/docs", "/static/app.js"):
        head, get = client.head(path), client.get(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-length"] == get.headers["content-length"], path
        assert head.headers["content-type"] == get.headers["content-type"], path
    refused = client.head("/predict")
    assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
    schema = client.get("/openapi.json").json()
    assert {method for path in schema["paths"].values() for method in path} == {"get", "post"}


def test_the_api_docs_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    """FastAPI's /docs and /redoc take their scripts from a CDN, and stayed blank offline: every
    file they load is the server's own."""
    for docs in ("/docs", "/redoc"):
        page = client.get(docs)
        assert page.status_code == 200
        loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert any(url.endswith(".js") for url in loaded), loaded
        for url in loaded:
            assert url.startswith("/") and client.get(url).status_code == 200, url


def test_predict_pixels_and_image(client: TestClient, predictor: Predictor, digits) -> None:
    expected = predictor.predict_proba(digits[:1])[0]
    for body in (pixels_body(digits[0]), {"image": digits[0].tolist()}):
        answer = client.post("/predict", json=body).json()
        assert answer["label"] == expected.argmax()
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        assert answer["latency_ms"] > 0 and "image" not in answer and "grad_cam" not in answer


def test_predict_batch(client: TestClient, predictor: Predictor, digits) -> None:
    body = [pixels_body(digits[0]), {"image": digits[1].tolist()}, pixels_body(digits[2])]
    answer = client.post("/predict", json=body).json()
    assert [p["label"] for p in answer["predictions"]] == predictor.predict(digits[:3]).tolist()
    assert answer["latency_ms"] > 0


def test_a_batch_of_max_batch_digits_is_served_and_one_more_is_refused(
    client: TestClient, digits
) -> None:
    limit = LIMITS["max_batch"]  # the limit is the largest batch served, not the first refused
    full = client.post("/predict", json=[pixels_body(digit) for digit in digits[:limit]])
    assert full.status_code == 200 and len(full.json()["predictions"]) == limit
    over = client.post("/predict", json=[pixels_body(digit) for digit in digits[: limit + 1]])
    assert over.status_code == 413 and "ServeConfig.max_batch" in over.json()["detail"]


def test_predict_uploads(client: TestClient, predictor: Predictor) -> None:
    png = encode(drawing())
    seen = load_image(png)
    expected = int(predictor.predict(seen[None])[0])
    raw = client.post("/predict", content=png, headers={"Content-Type": "image/png"}).json()
    form = client.post("/predict", files={"file": ("one.png", png, "image/png")}).json()
    for answer in (raw, form):
        assert answer["label"] == expected
        np.testing.assert_array_equal(answer["image"], seen)  # the image the model saw
    # Ignored, the upload had been redone as MNIST's as if ?as_is=true were not given.
    as_is = client.post("/predict?as_is=true", content=png, headers={"Content-Type": "image/png"})
    assert (as_is.status_code, as_is.json()["detail"]) == (
        422,
        "query.as_is applies to JSON digits; an uploaded image is always redone as MNIST's "
        "(cropped, scaled and centred): send its 28 x 28 pixels as JSON to predict them as they "
        "are",
    )


def test_predict_explain(client: TestClient, digits) -> None:
    answer = client.post("/predict?explain=true", json=pixels_body(digits[0])).json()
    heatmap = np.array(answer["grad_cam"])
    assert heatmap.shape == (28, 28) and heatmap.min() >= 0 and heatmap.max() == 1
    batch = client.post("/predict?explain=true", json=[pixels_body(d) for d in digits[:2]])
    assert all(np.shape(p["grad_cam"]) == (28, 28) for p in batch.json()["predictions"])


def test_model_describes_the_run_and_prefers_its_evaluated_accuracy(
    run_dir: Path, tmp_path: Path
) -> None:
    """/model reports the run's own model.json, and the accuracy `digits evaluate` measured
    (metrics.json) over the one training last saw, where the run has both."""
    meta = json.loads((run_dir / "model.json").read_text())
    evaluated = Path(shutil.copytree(run_dir, tmp_path / "evaluated"))
    (evaluated / "metrics.json").write_text('{"validation": {"accuracy": 0.9911}}')
    with TestClient(create_app(evaluated, ServeConfig())) as evaluated_client:
        info = evaluated_client.get("/model").json()
    assert info["validation_accuracy"] == 0.9911 != meta["valid_accuracy"]
    assert info["description"] == get_spec("cnn").description
    assert info["params"] == meta["params"] and info["preprocessing"] == PREPROCESSING
    assert info["test_accuracy"] is None and info["test_tta"] is None


def test_each_digit_of_a_batch_gets_its_own_probabilities_and_heatmap(
    client: TestClient, predictor: Predictor, digits
) -> None:
    answer = client.post("/predict?explain=true", json=[pixels_body(d) for d in digits[:3]])
    predictions = answer.json()["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in predictions],
                               predictor.predict_proba(digits[:3]), atol=1e-5)  # fmt: skip
    for digit, prediction in zip(digits[:3], predictions, strict=True):
        alone = client.post("/predict?explain=true", json=pixels_body(digit)).json()
        np.testing.assert_allclose(prediction["grad_cam"], alone["grad_cam"], atol=2e-3)
    assert predictions[0]["grad_cam"] != predictions[1]["grad_cam"]


def test_explain_and_predict_requests_at_the_same_time(client: TestClient, digits) -> None:
    # The server runs requests in a thread pool: Grad-CAM's hook must see its own forward only.
    urls = ["/predict?explain=true", "/predict"] * 12
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda url: client.post(url, json=pixels_body(digits[0])), urls))
    assert [answer.status_code for answer in answers] == [200] * len(urls)
    maps = [answer.json()["grad_cam"] for answer in answers[::2]]
    assert all(heatmap == maps[0] for heatmap in maps)


def health_answered_while_held(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, step: str, url: str, body: dict
) -> tuple[bool, httpx.Response]:
    """Whether /health answered while ``routes.<step>``, a step of answering the POST of
    ``body`` to ``url``, was held; and that answer."""
    from digit_recognizer.serve import routes

    real_step = getattr(routes, step)
    started, go_on, done = threading.Event(), threading.Event(), threading.Event()

    def held_step(*args: object, **kwargs: object) -> object:
        started.set()
        go_on.wait(timeout=5)  # a big batch, still being worked on
        done.set()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(routes, step, held_step)
    with ThreadPoolExecutor(max_workers=1) as pool:
        posted = pool.submit(client.post, url, json=body)
        assert started.wait(timeout=30)
        health = client.get("/health")
        answered_meanwhile = not done.is_set()
        go_on.set()
        answer = posted.result()
    return health.status_code == 200 and answered_meanwhile, answer


def test_health_answers_while_a_json_batch_is_validated(
    client: TestClient, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validated on the event loop, a batch held every other request until it was done (256
    digits: 0.5 s on 2 busy cores; the 3,000 of a 10 MB body: 6 s, then refused by max_batch)."""
    answered, answer = health_answered_while_held(
        client, monkeypatch, "_parse_json", "/predict", pixels_body(digits[0])
    )
    assert answered and answer.status_code == 200


def test_health_answers_while_a_prediction_is_answered(
    client: TestClient, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built and serialised on the event loop, an answer held every other request until it was
    done (256 digits with heatmaps: 0.2-0.7 s on 2 busy cores)."""
    answered, answer = health_answered_while_held(
        client, monkeypatch, "Prediction", "/predict?explain=true", pixels_body(digits[0])
    )
    assert answered and answer.status_code == 200
    assert np.shape(answer.json()["grad_cam"]) == (28, 28)
    assert answer.headers["content-type"] == "application/json"


def test_json_and_csv_digits_in_another_layout_are_conformed(
    client: TestClient, predictor: Predictor, small_test, tmp_path, caplog
) -> None:
    """Digits filling the frame (another collection's layout) are redone as MNIST's before
    prediction, as `digits predict` does, unless ?as_is=true."""
    foreign = np.stack([frame_filling(digit) for digit in small_test.images[:40]])
    conformed = conform_to_mnist(foreign)[0]
    expected, as_is = predictor.predict(conformed), predictor.predict(foreign)
    assert not np.array_equal(expected, as_is)  # the layout matters to this net
    path = tmp_path / "foreign.csv"
    write_kaggle_csv(path, foreign)
    for query, labels in (("", expected), ("?as_is=true", as_is)):
        batches = [foreign[start : start + 4] for start in range(0, len(foreign), 4)]
        answers = [
            client.post(f"/predict{query}", json=[pixels_body(d) for d in batch]).json()
            for batch in batches
        ]
        assert [p["label"] for a in answers for p in a["predictions"]] == labels.tolist()
        upload = {"file": ("foreign.csv", path.read_bytes())}
        with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
            lines = client.post(f"/predict/csv{query}", files=upload).text.splitlines()
        assert [int(line.split(",")[1]) for line in lines[1:]] == labels.tolist()
        assert ("foreign.csv: 40 of 40 digits were not laid out" in caplog.text) == (not query)
        # The server's switch, not the CLI's --as-is, which `digits serve` does not have.
        assert ("?as_is=true predicts them unchanged" in caplog.text) == (not query)
        assert "--as-is" not in caplog.text
        caplog.clear()
    # A redone digit's answer shows what the model saw (its Grad-CAM's frame); MNIST's own,
    # passed through untouched, need not.
    mixed = [pixels_body(foreign[0]), pixels_body(small_test.images[0])]
    redone, untouched = client.post("/predict?explain=true", json=mixed).json()["predictions"]
    np.testing.assert_array_equal(redone["image"], conformed[0])
    assert "image" not in untouched


def test_json_digits_sent_together_are_read_as_their_writers_cross_their_sevens(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A batch is one writer's digits, as a file's rows are: with three crossed 7s, a continental
    1 the net reads as 7, else 1, reads as 1, as `digits predict` reads a file; alone, or
    ?as_is=true, as the net reads it."""
    monkeypatch.setattr(Predictor, "predict_proba", ones_read_as_sevens_unless_crossed)
    monkeypatch.setattr(predict_module, "MIN_SURE_SEVENS", 3)
    one, crossed = drawn_digit(*CONTINENTAL_ONE), drawn_digit(*SEVEN, SEVENS_BAR)
    batch = [pixels_body(digit) for digit in (one, crossed, crossed, crossed)]
    with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
        together = client.post("/predict", json=batch).json()["predictions"]
    assert [prediction["label"] for prediction in together] == [1, 7, 7, 7]
    assert "/predict: the writers cross their 7s" in caplog.text
    assert "?as_is=true reads it as the model does" in caplog.text
    assert client.post("/predict", json=batch[0]).json()["label"] == 7
    as_is = client.post("/predict?as_is=true", json=batch).json()["predictions"]
    assert [prediction["label"] for prediction in as_is] == [7, 7, 7, 7]


def test_a_heatmap_is_of_the_digit_its_answer_predicts(
    client: TestClient, run_dir: Path, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the label is not the net's own fp32 reading (a near tie read in bf16, a digit read
    as its writers write), the heatmap is still the label's, not that of Grad-CAM's own pass."""
    net = load_net(run_dir)[0]
    with torch.no_grad():
        own = int(net(to_model_input(torch.as_tensor(digits[:1]))).argmax())
    favoured = (own + 1) % 10
    probas = np.full((1, 10), 0.01, np.float32)
    probas[0, favoured] = 0.91
    monkeypatch.setattr(Predictor, "predict_proba", lambda _predictor, _images: probas)
    answer = client.post("/predict?explain=true", json=pixels_body(digits[0])).json()
    assert answer["label"] == favoured
    expected = grad_cam(net, digits[:1], target=favoured)[0]
    np.testing.assert_allclose(answer["grad_cam"], expected, atol=2e-3)


def test_csv_digits_stored_transposed_are_read_transposed(
    client: TestClient, predictor: Predictor, small_test, tmp_path
) -> None:
    """An uploaded CSV of digits stored transposed (as EMNIST's are) is read as MNIST's own,
    as `digits predict` reads it, unless ?as_is=true."""
    images = small_test.images[:40]
    stored = np.ascontiguousarray(images.transpose(0, 2, 1))
    path = tmp_path / "transposed.csv"
    write_kaggle_csv(path, stored)
    expected, as_is = predictor.predict(images), predictor.predict(stored)
    assert (expected != as_is).mean() > 0.5  # the orientation matters to this net
    for query, labels in (("", expected), ("?as_is=true", as_is)):
        upload = {"file": ("transposed.csv", path.read_bytes())}
        lines = client.post(f"/predict/csv{query}", files=upload).text.splitlines()
        assert [int(line.split(",")[1]) for line in lines[1:]] == labels.tolist()


def test_csv_digits_stretched_to_their_frame_are_read_as_digits_predict_reads_them(
    client: TestClient, predictor: Predictor, small_test, tmp_path
) -> None:
    """An uploaded CSV of digits stretched to fill their frame (as Semeion's are) has each read
    at the width the net reads most surely, as `digits predict` reads it."""
    stretched = np.stack([semeion_like(digit) for digit in small_test.images[:40]])
    path = tmp_path / "stretched.csv"
    write_kaggle_csv(path, stretched)
    read = conform_rows(stretched, PredictConfig(), "stretched.csv", predictor.layout_judge)
    expected = predictor.predict(read)
    assert (expected != predictor.predict(conform_to_mnist(stretched)[0])).any()  # narrowed
    upload = {"file": ("stretched.csv", path.read_bytes())}
    lines = client.post("/predict/csv", files=upload).text.splitlines()
    assert [int(line.split(",")[1]) for line in lines[1:]] == expected.tolist()


def test_predict_csv(client: TestClient, predictor: Predictor, small_test, tmp_path) -> None:
    path = tmp_path / "test.csv"
    write_kaggle_csv(path, small_test.images[:30])
    expected = predictor.predict(small_test.images[:30])
    form = client.post("/predict/csv", files={"file": ("test.csv", path.read_bytes())})
    raw = client.post(
        "/predict/csv", content=path.read_bytes(), headers={"Content-Type": "text/csv"}
    )
    # Bytes of no declared kind are taken too, and media types are case-insensitive (RFC 9110).
    octets = client.post(
        "/predict/csv",
        content=path.read_bytes(),
        headers={"Content-Type": "Application/Octet-Stream"},
    )
    for response in (form, raw, octets):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "submission.csv" in response.headers["content-disposition"]
        lines = response.text.splitlines()
        assert lines[0] == "ImageId,Label" and len(lines) == 31
        assert [int(line.split(",")[1]) for line in lines[1:]] == expected.tolist()
    # Errors name the upload (its bytes are parsed as they came, no file of ours between).
    zipped = client.post("/predict/csv", files={"file": ("test.csv.gz", gzip.compress(b"x"))})
    assert zipped.status_code == 422
    assert zipped.json()["detail"] == ("test.csv.gz: gzip-compressed, not CSV text; gunzip it "
                                       "first and pass the CSV")  # fmt: skip
    bad = path.read_bytes().replace(b"\n0,", b"\nx,", 1)
    answer = client.post("/predict/csv", files={"file": ("mine.csv", bad)})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("mine.csv, line 2, ")


def test_onnx_backend(run_dir: Path, predictor: Predictor, digits) -> None:
    with TestClient(create_app(run_dir, ServeConfig(backend="onnx"))) as onnx_client:
        assert onnx_client.get("/health").json()["backend"] == "onnx"
        # What the served graph takes, not the torch net's float32 (N, 1, 28, 28)
        input_described = onnx_client.get("/model").json()["preprocessing"]["input"]
        assert input_described.startswith("images: uint8 (N, 28, 28)")
        answer = onnx_client.post("/predict?explain=true", json=pixels_body(digits[0])).json()
    expected = predictor.predict_proba(digits[:1])[0]
    assert answer["label"] == expected.argmax()
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-4)
    assert "grad_cam" not in answer and answer["grad_cam_error"] == GRAD_CAM_NEEDS_TORCH


def test_onnx_deployment_of_a_model_this_version_does_not_know(run_dir: Path, tmp_path) -> None:
    """model.json and model.onnx alone, from a newer version: /model answers, as /predict does."""
    with TestClient(create_app(run_dir, ServeConfig(backend="onnx"))):
        pass  # exports model.onnx
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    shutil.copy(run_dir / "model.onnx", deployed)
    meta = json.loads((run_dir / "model.json").read_text())
    (deployed / "model.json").write_text(json.dumps(meta | {"model": "cnn-from-the-future"}))
    (deployed / "metrics.json").write_text('{"test_accuracy": 0.9975, "test_tta": true}')
    with TestClient(create_app(deployed, ServeConfig(backend="onnx"))) as onnx_client:
        info = onnx_client.get("/model").json()
        half_inked = {"pixels": [0] * 392 + [255] * 392}
        assert onnx_client.post("/predict", json=half_inked).status_code == 200
    assert info["model"] == "cnn-from-the-future" and info["description"] is None
    assert info["test_accuracy"] == 0.9975 and info["test_tta"] is True  # not the server's pass
    with pytest.raises(ModelFileError, match=r"model\.onnx without PyTorch's weights: serve it"):
        load_served_model(deployed, ServeConfig())  # the torch backend, by default


def test_a_classical_model_is_served_without_grad_cam(
    small_train: DigitSet, digits, tmp_path: Path
) -> None:
    """A scikit-learn model's directory, which Predictor loads, is served as the onnx backend
    is: predictions, and why there is no heatmap (loading Grad-CAM's net had failed). The onnx
    backend, which has no export of it, names the backend that serves it."""
    logreg = build_estimator("logreg").fit(small_train.images[:300], small_train.labels[:300])
    save_estimator(logreg, tmp_path, "logreg")
    with TestClient(create_app(tmp_path)) as classical_client:
        info = classical_client.get("/model").json()
        # Its size as compare counts it (PCA's components, the coefficients): the page had "?"
        assert (info["model"], info["n_parameters"]) == ("logreg", count_parameters(logreg))
        assert info["n_parameters"] > 10_000
        # It said backend torch, which has no part in a pipeline's answers.
        assert classical_client.get("/model").json()["backend"] == "scikit-learn"
        assert classical_client.get("/health").json()["backend"] == "scikit-learn"
        answer = classical_client.post("/predict?explain=true", json=pixels_body(digits[0]))
        batch = classical_client.post("/predict?explain=true", json=[pixels_body(digits[1])])
    expected = logreg.predict_proba(digits[:2])
    assert answer.status_code == 200 and "grad_cam" not in answer.json()
    np.testing.assert_allclose(answer.json()["probabilities"], expected[0], atol=1e-6)
    reason = ("Grad-CAM needs a net (gradients); this server runs 'logreg', a scikit-learn "
              "model. Serve a net's run directory for heatmaps.")  # fmt: skip
    assert answer.json()["grad_cam_error"] == batch.json()["grad_cam_error"] == reason
    with pytest.raises(ModelFileError, match="'logreg' is a scikit-learn model, which exports to "
                       "no ONNX: serve it with --backend torch"):  # fmt: skip
        load_served_model(tmp_path, ServeConfig(backend="onnx"))


def test_grad_cam_explains_the_net_that_predicts(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grad-CAM's net had been read from the run a second time: where a training rewrote the
    weights between the two reads, the heatmaps explained another net than the one predicting."""
    from digit_recognizer.models import storage

    read_safetensors, n_reads = storage.read_safetensors, []

    def read_then_retrained(*args: object) -> dict[str, torch.Tensor]:
        state = read_safetensors(*args)
        n_reads.append(1)  # each read after the first finds the weights of a later training
        return {key: value + len(n_reads) - 1 for key, value in state.items()}

    monkeypatch.setattr(storage, "read_safetensors", read_then_retrained)
    served = load_served_model(run_dir, ServeConfig())
    predicting = served.predictor.models[0].state_dict()
    explained = served.explain_net.state_dict()
    assert all(torch.equal(explained[key], value) for key, value in predicting.items())


def test_a_run_whose_probabilities_are_not_numbers_is_refused_as_it_loads(
    tmp_path: Path, digits
) -> None:
    """A negative batch-norm variance loads, and predicts NaN for every digit: served, /health
    had said "ok" while /predict answered a bare "Internal Server Error", on both backends. A
    model damaged for some digits only, past that check, answers 500 saying what is wrong."""
    net = build("cnn-tiny").eval()
    next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(-1)
    save_net(tmp_path, net, "cnn-tiny", {})
    damaged = "a model's probabilities are not numbers (NaN or infinite)"
    # Checked whatever the backend (onnx's export alone would take 20 s here).
    with pytest.raises(ModelFileError, match=rf"^{tmp_path}: {re.escape(damaged)}"):
        load_served_model(tmp_path, ServeConfig())
    unchecked = ServedModel("torch", Predictor.load([tmp_path]), read_meta(tmp_path), {})
    write_kaggle_csv(tmp_path / "test.csv", digits[:1])
    csv_body = (tmp_path / "test.csv").read_bytes()
    with TestClient(create_app(tmp_path, model=unchecked)) as damaged_client:
        answer = damaged_client.post("/predict", json=pixels_body(digits[0]))
        csv_answer = damaged_client.post("/predict/csv", files={"file": ("test.csv", csv_body)})
    for response in (answer, csv_answer):
        assert response.status_code == 500 and response.json()["detail"].startswith(damaged)


def test_figures_of_the_wrong_type_in_the_run_s_files_are_refused_as_it_loads(
    run_dir: Path, tmp_path: Path
) -> None:
    """GET /model reports them: a hand-edited one had made it answer 500 to every request."""
    meta = json.loads((run_dir / "model.json").read_text())
    for index, (name, figures, message) in enumerate([
        ("metrics.json", {"test_accuracy": "high"}, "'test_accuracy' is 'high': Input should be "
         "a valid number, unable to parse string as a number; correct it or delete the key"),
        ("metrics.json", {"validation": [0.99]}, "'validation' is [0.99]: should be an object"),
        ("model.json", meta | {"n_parameters": "many"}, "'n_parameters' is 'many': Input should "
         "be a valid integer"),
    ]):  # fmt: skip
        edited = Path(shutil.copytree(run_dir, tmp_path / f"edited-{index}"))
        (edited / name).write_text(json.dumps(figures))
        with pytest.raises(ModelFileError) as error:
            load_served_model(edited, ServeConfig())
        assert str(error.value).startswith(f"{edited / name}: {message}")


# --- bad input: exact status and detail, and the server keeps serving --------------------------

GOOD = list(range(256)) * 3 + [0] * 16  # 784 valid values
RANGE = "pixel values must be 0-255"
EXACTLY_ONE = "body: give exactly one of 'pixels' (784 values) or 'image' (28 x 28)"
NOT_INT = "Input should be a valid integer"
LENGTH = "expected 784 values (28 x 28, row by row), got 783"
NO_INK = ("no digit: its pixels range from {} to {}, where MNIST's run from 0 (paper) to 255 "
          "(ink); values are 0-255 with the ink bright (scale 0-1 values by 255)")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"pixels": GOOD[:-1]}, 422, f"pixels: {LENGTH}"),
        ({"pixels": [*GOOD, 0]}, 422, f"pixels: {LENGTH.replace('783', '785')}"),
        ({"pixels": [*GOOD[:5], 300, *GOOD[6:]]}, 422, f"pixels: index 5 is 300; {RANGE}"),
        ({"pixels": [-1, *GOOD[1:]]}, 422, f"pixels: index 0 is -1; {RANGE}"),
        (  # JSON's integers may run to 4,300 digits: cut short, as CSV cells are
            {"pixels": [10**4299, *GOOD[1:]]},
            422,
            f"pixels: index 0 is '1{'0' * 23}...'; {RANGE}",
        ),
        ({"pixels": [*GOOD[:3], "a", *GOOD[4:]]}, 422, f"pixels[3]: {NOT_INT}"),
        (
            {"pixels": [0.5, *GOOD[1:]]},
            422,
            "pixels[0]: 0.5 is not an integer 0-255 (scale 0-1 values by 255)",
        ),
        ({"pixels": [128.5, *GOOD[1:]]}, 422, "pixels[0]: 128.5 is not an integer 0-255"),
        ({"pixels": [256.0, *GOOD[1:]]}, 422, f"pixels: index 0 is 256; {RANGE}"),
        ({"pixels": [0] * 784}, 422, f"body: {NO_INK.format(0, 0)}"),
        ({"pixels": [255] * 784}, 422, f"body: {NO_INK.format(255, 255)}"),  # a white page
        ({"pixels": [128] * 783 + [150]}, 422, f"body: {NO_INK.format(128, 150)}"),  # grey
        ({"pixels": [int(v > 127) for v in GOOD]}, 422, f"body: {NO_INK.format(0, 1)}"),  # 0-1
        ({"image": [[0] * 28] * 27}, 422, "image: expected 28 rows of 28 values, got 27 rows"),
        (
            {"image": [[0] * 28] * 2 + [[0] * 29] + [[0] * 28] * 25},
            422,
            "image: row 2 has 29 values, expected 28",
        ),
        (
            {"image": [[0] * 28] * 2 + [[0] * 27] + [[0] * 28] * 25},
            422,
            "image: row 2 has 27 values, expected 28",
        ),
        (
            {"image": [[0] * 28] * 27 + [[0] * 27 + [256]]},
            422,
            f"image: row 27, column 27 is 256; {RANGE}",
        ),
        (
            {"image": [[-(10**4299)] + [0] * 27] + [[0] * 28] * 27},
            422,
            f"image: row 0, column 0 is '-1{'0' * 22}...'; {RANGE}",
        ),
        ({}, 422, EXACTLY_ONE),
        ({"pixels": GOOD, "image": [[0] * 28] * 28}, 422, EXACTLY_ONE),
        ({"pixels": GOOD, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ("seven", 422, "body: Input should be an object"),
        ([], 422, "empty batch: send a list of at least one digit"),
        (
            [{"pixels": GOOD}] * 5,
            413,
            "batch of 5 digits is over the limit of 4 (ServeConfig.max_batch); split it",
        ),
        ([{"pixels": GOOD}, {"pixels": GOOD[:-1]}], 422, f"[1].pixels: {LENGTH}"),
    ],
    ids=[
        "short",
        "long",
        "over-255",
        "negative",
        "huge",
        "string",
        "float",
        "float-0-255",
        "whole-float-over-255",
        "blank",
        "white",
        "grey",
        "binarised",
        "27-rows",
        "long-row",
        "short-row",
        "image-range",
        "image-huge",
        "empty-object",
        "both",
        "extra-key",
        "not-an-object",
        "empty-batch",
        "batch-over-limit",
        "bad-batch-item",
    ],
)
def test_bad_json(client: TestClient, body: object, status: int, detail: str) -> None:
    response = client.post("/predict", json=body)
    assert (response.status_code, response.json()["detail"]) == (status, detail)


def test_pixels_that_are_whole_numbers_written_as_floats_are_read(
    client: TestClient, digits
) -> None:
    """numpy's tolist() of a float array writes 255.0, and 1e2 is JSON for 100 too: they had been
    refused as "not an integer 0-255". 0.5, NaN and infinity still are."""
    expected = client.post("/predict", json={"image": digits[0].tolist()}).json()
    as_floats = digits[0].astype(np.float32)
    for body in ({"image": as_floats.tolist()}, {"pixels": as_floats.ravel().tolist()}):
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200
        assert answer.json()["probabilities"] == expected["probabilities"]
    for value, detail in [("1e2", None), ("NaN", "nan is not an integer 0-255"),
                          ("-Infinity", "-inf is not an integer 0-255")]:  # fmt: skip
        values = ", ".join([value, *map(str, digits[0].ravel()[1:])])
        answer = client.post("/predict", content=f'{{"pixels": [{values}]}}',
                             headers={"Content-Type": "application/json"})  # fmt: skip
        if detail is None:
            assert answer.status_code == 200
        else:
            assert answer.json()["detail"] == f"pixels[0]: {detail}"


def test_a_bad_query_is_one_sentence_too(client: TestClient) -> None:
    """As every other 4xx answer is, and as the OpenAPI schema says, not FastAPI's list."""
    for path in ("/predict", "/predict/csv"):
        response = client.post(f"{path}?as_is=maybe", content=b"")
        assert response.status_code == 422
        assert response.json() == {
            "detail": "query.as_is: Input should be a valid boolean, unable to interpret input"
        }
    schema = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert (
        schema["paths"]["/predict"]["post"]["responses"]["422"]["content"]["application/json"][
            "schema"
        ]
        == error
    )


def test_many_problems_are_summarised(client: TestClient) -> None:
    response = client.post("/predict", json=[{"pixels": ["x"] * 784}])
    assert response.json()["detail"] == (
        "[0].pixels[0]: Input should be a valid integer; [0].pixels[1]: Input should be a valid "
        "integer; [0].pixels[2]: Input should be a valid integer (and 781 more problems)"
    )


def test_invalid_json(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b'{"pixels": [1, 2', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    detail = "request body is not valid JSON (EOF while parsing a list at line 1 column 16)"
    assert response.json()["detail"] == detail


def test_json_saved_with_a_byte_order_mark_is_read(client: TestClient, digits) -> None:
    """Windows PowerShell 5's `Out-File -Encoding utf8` starts its files with a UTF-8 BOM, which
    CSV uploads skip; JSON had got 400, 'not valid JSON ... at line 1 column 1'."""
    for body in (pixels_body(digits[0]), [pixels_body(digits[0])] * 2):
        plain = client.post("/predict", json=body).json()
        response = client.post(
            "/predict",
            content=b"\xef\xbb\xbf" + json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.json().keys() == plain.keys()  # a batch is still read as one


NOT_IMAGE = "not an image file of a kind read here (PNG, JPEG, GIF, BMP, TIFF, WebP, PBM/PGM/PPM)"


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"GIF89a? no, plain text", f"image: {NOT_IMAGE}"),
        (
            encode(Image.new("L", (40, 40), 255)),
            "image: no digit found (the image is blank or has too little contrast)",
        ),
        (
            png_header(6000, 5000),
            "image: 6000 x 5000 = 30,000,000 pixels is over the limit of "
            f"{MAX_IMAGE_PIXELS:,}; scale the image down",
        ),
        (
            png_header(100_000, 100_000),
            "image: too many pixels (decompression bomb?); scale it down",
        ),
    ],
    ids=["not-an-image", "blank", "over-pixel-limit", "decompression-bomb"],
)
def test_bad_image_upload(client: TestClient, content: bytes, detail: str) -> None:
    response = client.post("/predict", content=content, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()["detail"]) == (422, detail)


def test_a_csv_uploaded_as_an_image_is_pointed_to_the_csv_route(client: TestClient) -> None:
    """`curl -F file=@test.csv .../predict` had been told only that test.csv is no image."""
    csv = b"pixel0,pixel1\n0,0\n"
    response = client.post("/predict", files={"file": ("test.csv", csv, "text/csv")})
    assert response.status_code == 422
    assert (
        response.json()["detail"] == f"test.csv: {NOT_IMAGE}; a CSV of digits goes to /predict/csv"
    )
    response = client.post("/predict", files={"file": ("one.png", b"", "image/png")})
    assert response.json()["detail"] == "one.png: an empty file (0 bytes); give the image's file"


def test_the_configured_image_pixel_limit_is_applied(run_dir: Path) -> None:
    # ServeConfig.max_image_pixels, not load_image's default, decides which uploads are decoded:
    # a server on a small machine lowers it. 10,000 here: 101 x 100 is over, 100 x 100 is not.
    config = ServeConfig(**LIMITS, max_image_pixels=10_000)
    over, at_limit = (
        encode(drawing(size, line=(50, 10, 55, 90))) for size in ((101, 100), (100, 100))
    )
    with TestClient(create_app(run_dir, config)) as small:
        assert small.get("/model").json()["limits"]["max_image_pixels"] == 10_000

        def upload(png: bytes) -> list:
            raw = small.post("/predict", content=png, headers={"Content-Type": "image/png"})
            form = small.post("/predict", files={"file": ("one.png", png, "image/png")})
            return [raw, form]

        raw, form = upload(over)
        assert raw.status_code == 422, raw.text
        assert raw.json()["detail"] == (
            "image: 101 x 100 = 10,100 pixels is over the limit of 10,000; scale the image down"
        )
        assert form.status_code == 422 and "over the limit of 10,000" in form.json()["detail"]
        for response in upload(at_limit):
            assert response.status_code == 200 and "label" in response.json(), response.text


def test_bad_multipart_and_content_type(client: TestClient) -> None:
    named = client.post("/predict", files={"file": ("notes.txt", b"just text", "text/plain")})
    assert (named.status_code, named.json()["detail"]) == (422, f"notes.txt: {NOT_IMAGE}")
    no_file = client.post("/predict", files={"other": ("a", b"x")})
    assert (no_file.status_code, no_file.json()["detail"]) == (
        422,
        "multipart upload: unexpected field 'other'; send the file alone, in a field 'file' "
        "(curl -F file=@image)",
    )
    # In field 'file', but as text (no filename): it had been told to put it in a field 'file'
    as_text = client.post("/predict/csv", files={"file": (None, b"pixel0\n0\n")})
    assert (as_text.status_code, as_text.json()["detail"]) == (
        422,
        "multipart upload: field 'file' is a text field, not a file; send it as a file (a part "
        "with a filename: curl -F file=@test.csv)",
    )
    text = client.post("/predict", content=b"7", headers={"Content-Type": "text/plain"})
    assert (text.status_code, text.json()["detail"]) == (
        415,
        (
            "Content-Type 'text/plain' is not supported; send application/json digits, an "
            "image body (image/png, image/jpeg, ...), or multipart/form-data with a field 'file'"
        ),
    )
    csv = client.post("/predict", content=b"pixel0\n0\n", headers={"Content-Type": "text/csv"})
    assert (csv.status_code, csv.json()["detail"]) == (
        415,
        "Content-Type 'text/csv' is not supported (a CSV of digits goes to /predict/csv); send "
        "application/json digits, an image body (image/png, image/jpeg, ...), or "
        "multipart/form-data with a field 'file'",
    )
    png = encode(drawing())
    as_png = client.post("/predict", content=png, headers={"Content-Type": "image/png"}).json()
    for label in ("image/x-png", "image/jpg", "image/pjpeg", "image/x-ms-bmp"):  # bytes decide
        response = client.post("/predict", content=png, headers={"Content-Type": label})
        assert response.status_code == 200 and response.json() == as_png | {
            "latency_ms": response.json()["latency_ms"]}, label  # fmt: skip


def test_a_form_with_more_than_its_one_file_names_what_else_came(client: TestClient) -> None:
    """Starlette had answered a second file with its bare 400 'Too many files. Maximum number
    of files is 1.', and a second text field beside the file with 'Too many fields ...' (one
    was ignored), naming neither the field nor what to send."""
    png = ("seven.png", encode(drawing()), "image/png")
    alone = "send the file alone, in a field 'file' (curl -F file=@"
    forms = [
        ({"files": [("file", png), ("file", png)]},
         "multipart upload: 2 parts in field 'file'; send one file per request"),
        ({"files": [("file", png), ("other", png)]},
         f"multipart upload: unexpected field 'other'; {alone}image)"),
        ({"files": {"file": png}, "data": {"name": "seven"}},
         f"multipart upload: unexpected field 'name'; {alone}image)"),
        ({"files": {"file": png}, "data": {"name": "seven", "note": "x"}},
         f"multipart upload: unexpected field 'name'; {alone}image)"),
    ]  # fmt: skip
    for form, detail in forms:
        answer = client.post("/predict", **form)
        assert (answer.status_code, answer.json()["detail"]) == (422, detail), detail
    csv = client.post("/predict/csv", files=[("file", png), ("extra", png)])
    assert csv.json()["detail"] == f"multipart upload: unexpected field 'extra'; {alone}test.csv)"
    # Past the parts Starlette takes, or malformed: its reason, and what to send.
    many = client.post("/predict", files=[("file", png)] * 20)
    assert (many.status_code, many.json()["detail"]) == (
        400,
        f"multipart upload: Too many files. Maximum number of files is 8; {alone}image)",
    )
    no_boundary = client.post(
        "/predict", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert (no_boundary.status_code, no_boundary.json()["detail"]) == (
        400,
        f"multipart upload: Missing boundary in multipart; {alone}image)",
    )
    assert client.post("/predict", files={"file": png}).status_code == 200


def test_a_text_part_over_1_mb_is_told_to_be_sent_as_a_file(
    client: TestClient, run_dir: Path
) -> None:
    """Starlette refuses text parts over 1 MB itself: a test.csv sent so had been answered its
    400 'Part exceeded maximum size of 1024KB', not how to send it."""
    over_1_mb = b"pixel0\n" + b"0\n" * 600_000
    with TestClient(create_app(run_dir, model=client.app.state.model)) as default_limits:
        for path, default_name in (("/predict/csv", "test.csv"), ("/predict", "image")):
            answer = default_limits.post(path, files={"file": (None, over_1_mb)})
            assert (answer.status_code, answer.json()["detail"]) == (
                422,
                "multipart upload: field 'file' is a text field, not a file; send it as a "
                f"file (a part with a filename: curl -F file=@{default_name})",
            )


def test_huge_bodies_get_413(client: TestClient) -> None:
    detail = (
        "request body is over the limit of 100,000 bytes (ServeConfig.max_body_bytes); "
        "send a smaller file or split the batch"
    )
    declared = client.post(
        "/predict", content=b"0" * 100_001, headers={"Content-Type": "image/png"}
    )
    # A generator body goes out chunked, without Content-Length: counted as it arrives.
    chunked = client.post(
        "/predict",
        content=(b"0" * 10_000 for _ in range(20)),
        headers={"Content-Type": "application/json"},
    )
    for response in (declared, chunked):
        assert (response.status_code, response.json()["detail"]) == (413, detail)


def test_bad_csv_uploads(client: TestClient, small_test: DigitSet, tmp_path: Path) -> None:
    bad = client.post("/predict/csv", files={"file": ("test.csv", b"a,b\n1,2\n")})
    assert (bad.status_code, bad.json()["detail"]) == (
        422,
        (
            "test.csv, line 1: the header 'a,b' has 2 columns; expected "
            "'label,pixel0,...,pixel783' or 'pixel0,...,pixel783'"
        ),
    )
    path = tmp_path / "test.csv"
    write_kaggle_csv(path, small_test.images[:51])
    rows = client.post("/predict/csv", files={"file": ("big.csv", path.read_bytes())})
    limit = "big.csv: 51 rows is over the limit of 50 (ServeConfig.max_csv_rows); split the file"
    assert (rows.status_code, rows.json()["detail"]) == (413, limit)
    huge = client.post("/predict/csv", content=b"0" * 300_001, headers={"Content-Type": "text/csv"})
    assert huge.status_code == 413 and "ServeConfig.max_csv_bytes" in huge.json()["detail"]
    image = client.post("/predict/csv", content=b"x", headers={"Content-Type": "image/png"})
    assert image.status_code == 415


def test_a_csv_posted_with_a_trailing_slash_gets_the_csv_limit(client: TestClient) -> None:
    """/predict/csv/ is redirected to /predict/csv; a file over max_body_bytes had got 413
    naming that limit instead, though within max_csv_bytes."""
    body = b"pixel0\n" + b"0\n" * 60_000  # 120 kB: over max_body_bytes, within max_csv_bytes
    plain, slashed = (
        client.post(path, content=body, headers={"Content-Type": "text/csv"})
        for path in ("/predict/csv", "/predict/csv/")
    )
    assert plain.status_code == 422  # read: a header of one column
    assert (slashed.status_code, slashed.json()) == (plain.status_code, plain.json())


def test_server_keeps_serving_after_bad_input(client: TestClient, digits) -> None:
    client.post("/predict", content=b"\x00" * 50, headers={"Content-Type": "image/jpeg"})
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json=pixels_body(digits[0])).status_code == 200


def test_serve_config_and_cli_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'backend' must be one of 'torch', 'onnx', got 'tf'"):
        ServeConfig(backend="tf")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_batch must be at least 1, got 0"):
        ServeConfig(max_batch=0)
    with pytest.raises(ConfigError, match="port must be from 0 to 65535, got 70000"):
        ServeConfig(port=70000)
    limits = tmp_path / "serve.toml"
    limits.write_text("max_batch = 0\n")
    result = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--config", str(limits)])
    assert result.exit_code == 1 and f"{limits}: max_batch must be at least 1" in result.output
    # Weights that do not load fail in one line, before the server announces an address.
    broken = Path(shutil.copytree(run_dir, tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    result = CliRunner().invoke(cli_app, ["serve", str(broken), "--port", "1"])
    assert result.exit_code == 1 and "not a readable safetensors file" in result.output
    assert "serving" not in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "model.json: not found; is" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path), "--backend", "tf"])
    assert result.exit_code == 1 and "--backend must be one of 'torch', 'onnx'" in result.output
    # A port in use: one line, and no address announced that another program answers at.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--port", str(port)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot serve at 127.0.0.1:{port} (Address already in use)" in result.output
    assert "serving" not in result.output


def test_connections_to_the_server_socket_are_not_delayed_by_nagle() -> None:
    """asyncio sets TCP_NODELAY on the connections a socket accepts only when the socket says it
    is TCP; without it each keep-alive answer waited ~40 ms for the client's delayed ACK."""

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = writer.get_extra_info("socket")
            accepted.set_result(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = listening_socket("127.0.0.1", 0)
        server = await asyncio.start_server(on_connect, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname())
        nodelay = await asyncio.wait_for(accepted, 10)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(nodelay_of_an_accepted_connection()) == 1


@contextlib.contextmanager
def served(run_dir: Path, config: ServeConfig, model: ServedModel) -> Iterator[int]:
    """``model`` served as ``digits serve`` serves it (``make_server``) on a free port of
    127.0.0.1, in a thread; yields the port."""
    listening = listening_socket("127.0.0.1", 0)
    server = make_server(create_app(run_dir, config, model), config, listening.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]})
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield listening.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


def read_until_closed(connection: socket.socket) -> bytes:
    """All the server sends on ``connection`` until it closes it; fails after 10 s open."""
    connection.settimeout(10)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open; it sent {received!r}") from None
    except ConnectionResetError:  # closed with bytes of ours unread
        pass
    return received


def test_a_connection_slow_to_send_its_headers_is_closed(client: TestClient, run_dir: Path) -> None:
    """uvicorn times a connection only from an answer to its next byte: one that connected and
    sent nothing, or sent its headers slowly, was held open for ever (slowloris). One that sent
    part of a request is answered 408, as nginx answers it; one that sent nothing is not."""
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    config = ServeConfig(header_timeout_s=0.5)
    with served(run_dir, config, client.app.state.model) as port:
        connect = functools.partial(socket.create_connection, ("127.0.0.1", port), timeout=10)
        silent, partial, after_an_answer, trickling = connect(), connect(), connect(), connect()
        partial.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        after_an_answer.sendall(health)
        assert after_an_answer.recv(65536).startswith(b"HTTP/1.1 200")
        after_an_answer.sendall(b"GET /health HTTP/1.1\r\nHo")
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
        for byte in head:  # a byte every 50 ms: the deadline is not renewed
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                trickling.sendall(bytes([byte]))
            if select.select([trickling], [], [], 0.05)[0]:  # readable: closed
                break
        else:
            raise AssertionError("the server read 200 bytes of headers over 10 s")
        with trickling:  # its bytes still arriving, the 408 may be lost to a reset
            read_until_closed(trickling)  # fails if it is still open 10 s on
        with silent, partial, after_an_answer:
            assert read_until_closed(silent) == b""
            for connection in (partial, after_an_answer):  # the latter's 200 read in part
                last_answer = read_until_closed(connection).rpartition(b"HTTP/1.1 ")[2]
                head, _, body = last_answer.partition(b"\r\n\r\n")
                assert head.startswith(b"408 ") and b"\r\nconnection: close" in head.lower()
                assert b"ServeConfig.header_timeout_s" in body
        # Requests sent at once are answered, two in one packet too.
        with connect() as pipelining:
            pipelining.sendall(
                health + health.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            )
            assert read_until_closed(pipelining).count(b"HTTP/1.1 200 OK") == 2


def test_csv_uploads_beyond_max_csv_jobs_get_503(
    run_dir: Path, small_test: DigitSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digit_recognizer.serve import routes

    predicting, release = threading.Event(), threading.Event()
    submission_csv = routes._submission_csv

    def held_submission_csv(*args: object) -> bytes:
        predicting.set()
        release.wait(timeout=30)
        return submission_csv(*args)

    monkeypatch.setattr(routes, "_submission_csv", held_submission_csv)
    path = tmp_path / "test.csv"
    write_kaggle_csv(path, small_test.images[:3])
    upload = {"files": {"file": ("test.csv", path.read_bytes())}}
    with TestClient(create_app(run_dir, ServeConfig(max_csv_jobs=1))) as client:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/predict/csv", **upload)
            assert predicting.wait(timeout=30)
            busy = client.post("/predict/csv", **upload)
            release.set()
            assert first.result().status_code == 200
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "5")
        assert "ServeConfig.max_csv_jobs" in busy.json()["detail"]
        assert client.post("/predict/csv", **upload).status_code == 200  # the slot is free again


def test_a_csv_upload_too_slow_to_arrive_gets_408_and_frees_its_slot(
    run_dir: Path, small_test: DigitSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clients stalled mid-body had held both slots for as long as they liked."""
    from digit_recognizer.serve import routes

    read_upload = routes._read_upload
    stalled = iter([True])

    async def stalling_read(*args: object, **kwargs: object) -> tuple[bytes, str]:
        if next(stalled, False):  # the first upload stalls, as a client gone quiet would
            await asyncio.sleep(30)
        return await read_upload(*args, **kwargs)

    monkeypatch.setattr(routes, "_read_upload", stalling_read)
    path = tmp_path / "test.csv"
    write_kaggle_csv(path, small_test.images[:3])
    config = ServeConfig(max_csv_jobs=1, csv_upload_timeout_s=0.5)
    with TestClient(create_app(run_dir, config)) as client:
        slow = client.post("/predict/csv", files={"file": ("test.csv", path.read_bytes())})
        assert slow.status_code == 408 and "csv_upload_timeout_s" in slow.json()["detail"]
        assert slow.headers["connection"] == "close"  # the rest of its body is not waited for
        again = client.post("/predict/csv", files={"file": ("test.csv", path.read_bytes())})
        assert again.status_code == 200


def test_a_body_too_slow_to_arrive_at_predict_gets_408(client: TestClient, run_dir: Path) -> None:
    """uvicorn bounds no body's arrival: a client that sent its headers and part of a body, then
    went quiet, held its connection and the part buffered for ever."""
    png = encode(drawing())
    boundary = b"b0undary"
    form = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="seven.png"\r\nContent-Type: image/png\r\n\r\n' + png)  # fmt: skip
    config = ServeConfig(body_timeout_s=0.2)
    with TestClient(create_app(run_dir, config, model=client.app.state.model)) as quick:

        async def answer_to_a_stalled_body(content_type: bytes, sent: bytes) -> tuple[int, dict]:
            pending = [{"type": "http.request", "body": sent, "more_body": True}]

            async def receive() -> dict:  # part of the body, then nothing more
                if pending:
                    return pending.pop()
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

            answer: dict = {}

            async def send(message: dict) -> None:
                answer.update(message)

            headers = [(b"content-type", content_type), (b"content-length", b"9999999")]
            scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
                     "path": "/predict", "raw_path": b"/predict", "root_path": "",
                     "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
                     "server": ("127.0.0.1", 80)}  # fmt: skip
            await asyncio.wait_for(quick.app(scope, receive, send), 10)  # no answer: fails
            return answer["status"], json.loads(answer["body"])

        stalled = [(b"image/png", png), (b"application/json", b'{"pixels": ['),
                   (b"multipart/form-data; boundary=" + boundary, form)]  # fmt: skip
        for content_type, sent in stalled:
            status, body = asyncio.run(answer_to_a_stalled_body(content_type, sent))
            assert (status, body["detail"]) == (
                408,
                "the upload did not arrive within 0.2 s (ServeConfig.body_timeout_s); send it "
                "again over a faster link",
            ), content_type
        assert quick.get("/model").json()["limits"]["body_timeout_s"] == 0.2


def test_a_body_too_slow_to_arrive_gets_408_and_its_connection_is_closed(
    client: TestClient, run_dir: Path
) -> None:
    """Over a real socket, as uvicorn sends it: the rest of the body is not waited for."""
    config = ServeConfig(body_timeout_s=0.5)
    with (
        served(run_dir, config, client.app.state.model) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
    ):
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"pixels": ['
        )
        head, _, body = read_until_closed(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close" in head.lower()
    assert b"ServeConfig.body_timeout_s" in body


def test_a_malformed_form_is_answered_without_the_form_parser_s_warnings(
    client: TestClient, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """python-multipart logged a WARNING for each malformed form ("Did not find CR at end of
    boundary (10)"): a line the server's operator can do nothing about, as many as a client
    likes, for a request already answered 400 with what to fix."""
    with (
        served(run_dir, ServeConfig(), client.app.state.model) as port,
        caplog.at_level(logging.WARNING),  # as `digits serve` logs
    ):
        response = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            content=b"--b0undaryX",
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        )
    assert response.status_code == 400 and "Invalid multipart data" in response.json()["detail"]
    assert [record.getMessage() for record in caplog.records if "multipart" in record.name] == []


def test_a_client_gone_mid_upload_is_no_logged_traceback(client: TestClient) -> None:
    """A client that disconnected mid-body (a tab closed, the page giving up a slow upload)
    raised out of /predict, which uvicorn logs as "Exception in ASGI application" with a
    traceback; /predict/csv alone answered it 499."""

    async def statuses_answered(path: str, content_type: bytes) -> list[int]:
        body = [{"type": "http.request", "body": b"0" * 100, "more_body": True}]

        async def receive() -> dict:  # 100 of the 1,000 bytes declared, then gone
            return body.pop() if body else {"type": "http.disconnect"}

        answered = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])

        headers = [(b"content-type", content_type), (b"content-length", b"1000")]
        scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80)}  # fmt: skip
        await client.app(scope, receive, send)
        return answered

    for path, content_type in [("/predict", b"image/png"), ("/predict", b"application/json"),
                               ("/predict/csv", b"text/csv")]:  # fmt: skip
        assert asyncio.run(statuses_answered(path, content_type)) == [499], content_type


def test_a_host_in_brackets_is_taken_as_its_address() -> None:
    assert ServeConfig(host="[::1]").host == "::1"


def test_an_ipv6_address_is_written_in_brackets() -> None:
    assert address("::1", 8000) == "[::1]:8000" and address("127.0.0.1", 80) == "127.0.0.1:80"
    try:
        taken = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve at \[::1\]:{port} \("):
            listening_socket("::1", port)


def test_a_host_left_empty_or_a_timeout_of_nan_is_refused() -> None:
    """'[]' stripped to "" had listened on every interface; nan passed `<= 0` and turned the
    upload timeout off (and read null in GET /model)."""
    for host in ("", "[]"):
        with pytest.raises(ConfigError, match="host is empty"):
            ServeConfig(host=host)
    for name in ("csv_upload_timeout_s", "body_timeout_s", "header_timeout_s"):
        for timeout in (0, float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=f"{name} must be > 0 and finite"):
                ServeConfig(**{name: timeout})


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, "nohup"])
def test_serve_ends_by_the_signal_that_stops_it(run_dir: Path, stop: int | str) -> None:
    """SIGTERM: uvicorn's clean shutdown, then the signal's own end, as service managers expect.
    SIGHUP (a closed terminal), which uvicorn does not handle, had raised the commands'
    interruption inside uvicorn's loop: a traceback. Under nohup (SIGHUP ignored) it serves on."""
    port = free_port()
    # As in a terminal or under nohup, whatever pytest's own SIGHUP is: an ignored signal is
    # inherited, a handler is the default action after exec.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN if stop == "nohup" else signal.SIG_DFL)
    try:
        server = subprocess.Popen([sys.executable, "-m", "digit_recognizer", "serve",
                                   str(run_dir), "--port", str(port)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        assert server.stdout.readline().startswith(f"serving {run_dir}")
        deadline = time.monotonic() + 30
        while True:  # the announcement comes before uvicorn takes the signals: wait for it
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        if stop == "nohup":
            server.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                stop = signal.SIGTERM
        server.send_signal(stop)
        _, stderr = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == -stop and "Traceback" not in stderr, stderr


def test_the_header_deadline_ends_with_the_headers(client: TestClient, run_dir: Path) -> None:
    """header_timeout_s bounds a request's headers alone: a body that takes longer to arrive
    (within body_timeout_s) is answered, behind a pipelined request too, whose answer arms the
    deadline for headers already read."""
    boundary = b"b0undary"
    form = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="seven.png"\r\nContent-Type: image/png\r\n\r\n' + encode(drawing())
            + b"\r\n--" + boundary + b"--\r\n")  # fmt: skip
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
            b"multipart/form-data; boundary=" + boundary + b"\r\nContent-Length: "
            + str(len(form)).encode() + b"\r\n\r\n")  # fmt: skip
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with served(run_dir, ServeConfig(header_timeout_s=0.3), client.app.state.model) as port:
        alone, pipelined = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
        with alone, pipelined:
            alone.sendall(head + form[:10])
            pipelined.sendall(health + head + form[:10])
            time.sleep(1)  # the body's rest comes past the header deadline
            for connection in (alone, pipelined):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    connection.sendall(form[10:])
            answers = [read_until_closed(connection) for connection in (alone, pipelined)]
    assert [answer.count(b"HTTP/1.1 200 OK") for answer in answers] == [1, 2]


def test_a_malformed_form_logs_no_warning_from_the_multipart_parser(
    client: TestClient, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """python-multipart logged a WARNING for each malformed form the client is answered 400 for
    ("Did not find CR at end of boundary"): as many lines as a client likes, none the operator
    can act on. The server `digits serve` runs (make_server) leaves them out."""
    make_server(client.app, ServeConfig(), 0)
    body = b"--b0undaryX"  # no CR after the boundary
    with caplog.at_level(logging.WARNING):
        answer = client.post(
            "/predict",
            content=body,
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        )
    assert answer.status_code == 400
    assert not [record for record in caplog.records if "multipart" in record.name]


def test_model_reports_the_header_deadline_among_its_limits(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, ServeConfig(header_timeout_s=3))) as client:
        assert client.get("/model").json()["limits"]["header_timeout_s"] == 3
