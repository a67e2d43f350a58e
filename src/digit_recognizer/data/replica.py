"""An offline replica of Kaggle's Digit Recognizer files, built from the embedded MNIST.

Kaggle's 42,000 + 28,000 images are MNIST's 70,000 re-split, so a seeded permutation of the
embedded MNIST gives files in exactly Kaggle's format: ``train.csv``, ``test.csv`` and
``solution.csv`` (the true labels of ``test.csv`` as ``ImageId,Label``). Same seed, same bytes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_recognizer.data.kaggle_csv import write_kaggle_csv, write_submission
from digit_recognizer.data.mnist import load_mnist
from digit_recognizer.errors import OutputError
from digit_recognizer.fileio import sha256_file, write_text

log = logging.getLogger(__name__)

N_TRAIN = 42_000  # Kaggle's split of MNIST's 70,000 images
MANIFEST = "replica.json"


@dataclass(frozen=True)
class ReplicaFiles:
    """Paths of the three replica files."""

    train: Path
    test: Path
    solution: Path


def replica_files(out_dir: str | Path) -> ReplicaFiles:
    """Where ``build_replica`` puts its files in ``out_dir``."""
    out_dir = Path(out_dir)
    return ReplicaFiles(out_dir / "train.csv", out_dir / "test.csv", out_dir / "solution.csv")


def build_replica(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> ReplicaFiles:
    """Write ``train.csv`` (42,000 labelled), ``test.csv`` (28,000) and ``solution.csv``.

    Images are ``np.random.default_rng(seed).permutation(70000)`` of the embedded MNIST: the
    first 42,000 go to train, the rest to test. ``replica.json`` (seed and SHA-256 of each file)
    is written last, so ``replica_is_complete`` never trusts a build that was interrupted: each
    file is replaced atomically, and until the new manifest is written the old one names other
    bytes (or, for the same seed, the same ones). Files of the same names that no replica wrote,
    such as Kaggle's own, are kept unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: not a directory; the replica's three files go in one")
    files = replica_files(out_dir)
    if not overwrite and not (out_dir / MANIFEST).is_file():
        for path in (files.train, files.test, files.solution):
            if path.exists():
                raise OutputError(f"{path} exists and is not a replica's: choose another folder "
                                  "or overwrite it (digits data kaggle --force)")  # fmt: skip
    mnist = load_mnist()
    order = np.random.default_rng(seed).permutation(len(mnist.images))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    write_kaggle_csv(files.train, mnist.images[train], mnist.labels[train])
    write_kaggle_csv(files.test, mnist.images[test])
    write_submission(files.solution, mnist.labels[test])
    write_text(out_dir / MANIFEST, json.dumps(_manifest(files, seed), indent=2) + "\n")
    return files


def ready_replica(out_dir: str | Path, seed: int = 0) -> ReplicaFiles:
    """The replica for ``seed`` in ``out_dir``: the one there if complete, else built there."""
    if replica_is_complete(out_dir, seed):
        return replica_files(out_dir)
    log.info("building the Kaggle replica (seed %d) in %s", seed, out_dir)
    return build_replica(out_dir, seed, overwrite=True)


def replica_is_complete(out_dir: str | Path, seed: int = 0) -> bool:
    """True if ``out_dir`` holds a finished replica for ``seed`` whose files are unmodified.

    Hashing the three files (~120 MB) takes ~0.3 s, a tenth of a rebuild, and catches a file
    edited or truncated by hand.
    """
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        return manifest == _manifest(replica_files(out_dir), seed)
    except (OSError, ValueError):
        return False


def _manifest(files: ReplicaFiles, seed: int) -> dict[str, object]:
    paths = (files.train, files.test, files.solution)
    return {"seed": seed, "sha256": {path.name: sha256_file(path) for path in paths}}
