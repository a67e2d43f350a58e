"""Shared fixtures: small real slices of the embedded MNIST and one tiny trained run."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv, write_submission
from digit_recognizer.data.mnist import Mnist, load_mnist
from digit_recognizer.train import TrainConfig, train

# A recipe that learns within one short epoch on a few thousand images (tests only).
TINY_RECIPE = {"epochs": 2, "lr": 0.02, "batch_size": 64, "seed": 0}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def own_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The installation's files (the key that signs forests' skops files) in a folder of the
    test session's, not the user's ~/.local/share; and this checkout's code in the processes
    tests start (pyproject's pythonpath reaches this one only: a child had imported whatever
    checkout the venv had installed)."""
    source = str(Path(__file__).parents[1] / "src")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data_home")))
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
        )
        yield


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def small_train(mnist: Mnist) -> DigitSet:
    """3,000 labelled images from MNIST's training part."""
    return DigitSet(mnist.images[:3000], mnist.labels[:3000])


@pytest.fixture(scope="session")
def small_test(mnist: Mnist) -> DigitSet:
    """1,000 labelled images from MNIST's test part (disjoint from small_train)."""
    return DigitSet(mnist.images[60000:61000], mnist.labels[60000:61000])


@pytest.fixture(scope="session")
def small_csvs(tmp_path_factory: pytest.TempPathFactory, small_train: DigitSet,
               small_test: DigitSet) -> dict[str, Path]:  # fmt: skip
    """Kaggle-format train.csv, test.csv and solution.csv of the small slices."""
    folder = tmp_path_factory.mktemp("kaggle")
    paths = {name: folder / f"{name}.csv" for name in ("train", "test", "solution")}
    write_kaggle_csv(paths["train"], small_train.images, small_train.labels)
    write_kaggle_csv(paths["test"], small_test.images)
    write_submission(paths["solution"], small_test.labels)
    return paths


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, small_train: DigitSet,
             small_test: DigitSet) -> Path:  # fmt: skip
    """A run directory of the default CNN trained briefly on small_train."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(**TINY_RECIPE)
    train(config, small_train, DigitSet(small_test.images[:300], small_test.labels[:300]), run_dir)
    return run_dir


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(labels)).mean())


def feed_if_read(fifo: Path, text: str, seconds: float = 5.0) -> None:
    """Write ``text`` into ``fifo`` if something opens it to read within ``seconds``: a
    regression then fails on the text instead of hanging the test."""

    def feed() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.05)
                continue
            os.write(descriptor, text.encode())
            os.close(descriptor)
            return

    threading.Thread(target=feed, daemon=True).start()


def disk_full_at(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """``Path.write_text`` fails as a full disk does for files named ``prefix``... (an atomic
    write's temporary file, ``.model.json.``), and writes every other file."""
    write_text = Path.write_text

    def full_at(path: Path, *args, **kwargs) -> int:
        if path.name.startswith(prefix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at)
