"""The embedded MNIST: the four IDX files vendored with the package, checksum-verified.

MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0. Kaggle's Digit Recognizer images are
exactly MNIST's 60,000 training + 10,000 test images, re-split 42,000 / 28,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from digit_recognizer.data.idx import read_idx
from digit_recognizer.errors import DataError
from digit_recognizer.fileio import sha256_file

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


MNIST_TRAIN_ROWS = 60_000  # its training set, first in ``Mnist``; its test set's 10,000 follow


@dataclass(frozen=True)
class Mnist:
    """All 70,000 images, MNIST's training set first: images uint8 (70000, 28, 28), labels int64."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]


def mnist_dir() -> Path:
    """The folder holding the vendored files: inside an installed wheel, else the source tree."""
    packaged = Path(__file__).parent / "mnist_files"  # pyproject.toml's force-include
    source_tree = Path(__file__).resolve().parents[3] / "data" / "mnist"
    for candidate in (packaged, source_tree):
        if (candidate / "SHA256SUMS").is_file():
            return candidate
    raise DataError(
        f"embedded MNIST not found in {packaged} or {source_tree}; reinstall the package"
    )


def read_checksums(path: Path) -> dict[str, str]:
    """File name -> SHA-256 (lowercase hex) from a ``sha256sum`` listing: ``<digest>  <name>``,
    or ``<digest> *<name>`` as its binary mode writes it. Blank lines (an editor's extra newline)
    are skipped, as are Windows line ends and a byte-order mark."""
    if not path.is_file():
        raise DataError(f"{path}: embedded MNIST checksum list is missing; reinstall the package")
    sums = {}
    for number, line in enumerate(path.read_text("utf-8-sig", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*([0-9a-fA-F]{64})\s+\*?(.*\S)\s*", line)
        if match is None:
            raise DataError(
                f"{path}, line {number}: expected '<64 hex digits>  <file name>', got {line!r}; "
                "reinstall the package (in a checkout: `git checkout data/mnist`)"
            )
        sums[match[2]] = match[1].lower()
    return sums


def verify_checksums(folder: Path) -> None:
    """Check each file against ``SHA256SUMS``; raise ``DataError`` naming the first mismatch."""
    sums = read_checksums(folder / "SHA256SUMS")
    for name in FILES.values():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: embedded MNIST file is missing")
        actual = sha256_file(path)
        if actual != sums.get(name):
            raise DataError(
                f"{path}: SHA-256 {actual} does not match SHA256SUMS ({sums.get(name)}); "
                "the file is corrupt: reinstall the package (in a checkout: `git checkout "
                "data/mnist`)"
            )


def load_mnist(folder: str | Path | None = None) -> Mnist:
    """Load and verify all 70,000 MNIST images and labels."""
    folder = Path(folder) if folder is not None else mnist_dir()
    verify_checksums(folder)
    parts = {key: read_idx(folder / name) for key, name in FILES.items()}
    images = np.concatenate([parts["train_images"], parts["test_images"]])
    labels = np.concatenate([parts["train_labels"], parts["test_labels"]]).astype(np.int64)
    if images.shape != (70000, 28, 28) or labels.shape != (70000,):
        raise DataError(f"{folder}: expected 70,000 28x28 images, got {images.shape}")
    return Mnist(images=images, labels=labels)
