"""An offline replica of Kaggle's Digit Recognizer files, built from the embedded MNIST.

Kaggle's 42,000 + 28,000 images are MNIST's 70,000 re-split, so a seeded permutation of the
embedded MNIST gives files in exactly Kaggle's format: ``train.csv``, ``test.csv`` and
``solution.csv`` (the true labels of ``test.csv`` as ``ImageId,Label``). Same seed, same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_recognizer.data.kaggle_csv import write_kaggle_csv, write_submission
from digit_recognizer.data.mnist import load_mnist
from digit_recognizer.data.splits import check_seed
from digit_recognizer.errors import OutputError
from digit_recognizer.fileio import (
    LEFTOVER_AGE_S,
    atomic_path,
    locked_dir,
    refuse_special_file,
    remove_leftovers,
    sha256_file,
    write_text,
    xdg_home,
)

log = logging.getLogger(__name__)

N_TRAIN = 42_000  # Kaggle's split of MNIST's 70,000 images
MANIFEST = "replica.json"


@dataclass(frozen=True)
class ReplicaFiles:
    """Paths of the three replica CSVs and of the manifest that records their hashes."""

    train: Path
    test: Path
    solution: Path
    manifest: Path

    @property
    def csvs(self) -> tuple[Path, Path, Path]:
        """The three CSVs, in the order a build writes them."""
        return self.train, self.test, self.solution

    @property
    def all_files(self) -> tuple[Path, Path, Path, Path]:
        """The manifest and the three CSVs."""
        return self.manifest, *self.csvs


def replica_files(out_dir: str | Path) -> ReplicaFiles:
    """Where ``build_replica`` puts its files in ``out_dir``."""
    out_dir = Path(out_dir)
    return ReplicaFiles(
        out_dir / "train.csv", out_dir / "test.csv", out_dir / "solution.csv", out_dir / MANIFEST
    )


def build_replica(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> ReplicaFiles:
    """Write ``train.csv`` (42,000 labelled), ``test.csv`` (28,000) and ``solution.csv``.

    Images are ``np.random.default_rng(seed).permutation(70000)`` of the embedded MNIST: the
    first 42,000 go to train, the rest to test. ``replica.json`` records the SHA-256 of each file
    as it is written, and the seed only once all three are, so ``replica_is_complete`` never
    trusts a build that was interrupted. Files of the same names whose bytes no replica wrote,
    such as Kaggle's own, are kept unless ``overwrite``. ``out_dir`` is locked meanwhile
    (``locked_dir``): a second build into it is refused, and the temporary file a build killed
    there left (30 MB of train.csv) is removed at once.
    """
    check_seed(seed, "--seed")  # as every other command's: numpy's would take any size
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: not a directory; the replica's three files go in one")
    with locked_dir(out_dir, elsewhere="another folder"):
        return _write_replica(out_dir, seed, overwrite)


def _write_replica(out_dir: Path, seed: int, overwrite: bool) -> ReplicaFiles:
    files = replica_files(out_dir)
    for path in files.all_files:
        # Before reading or hashing any: a pipe is read until a writer comes, which may be never.
        refuse_special_file(path)
        if path.is_dir():  # refused before a file is written, not after train.csv
            raise OutputError(f"{path}: a directory, where the replica writes a file; move it "
                              "or choose another folder")  # fmt: skip
    written = _recorded_hashes(files.manifest)
    for path in files.csvs:
        if not overwrite and path.exists() and sha256_file(path) != written.get(path.name):
            raise OutputError(f"{path} exists and is not a replica's: choose another folder "
                              "or overwrite it (digits data kaggle --force)")  # fmt: skip
    mnist = load_mnist()
    order = np.random.default_rng(seed).permutation(len(mnist.images))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    _write_recorded(
        files.train,
        written,
        lambda tmp: write_kaggle_csv(tmp, mnist.images[train], mnist.labels[train]),
    )
    _write_recorded(files.test, written, lambda tmp: write_kaggle_csv(tmp, mnist.images[test]))
    _write_recorded(files.solution, written, lambda tmp: write_submission(tmp, mnist.labels[test]))
    _write_manifest(files.manifest, {"seed": seed, "sha256": written})
    return files


def ready_replica(out_dir: str | Path, seed: int = 0) -> ReplicaFiles:
    """The replica for ``seed`` in ``out_dir``: the one there if complete, else built there.
    A killed build's temporary files there are removed (a complete cache is never rebuilt, so
    nothing else removes them) once ``LEFTOVER_AGE_S`` old: no lock keeps out another
    container's build, sharing the cache, whose pid says nothing here."""
    if Path(out_dir).is_dir():
        remove_leftovers(Path(out_dir), min_age_s=LEFTOVER_AGE_S)
    if replica_is_complete(out_dir, seed):
        return replica_files(out_dir)
    log.info("building the Kaggle replica (seed %d) in %s", seed, out_dir)
    # Not locked as build_replica is: commands sharing the cache build it side by side, rather
    # than all but one being refused.
    return _write_replica(Path(out_dir), seed, overwrite=True)


def default_cache_dir() -> Path:
    """Where replicas are built: $XDG_CACHE_HOME/digit-recognizer (usually ~/.cache/...)."""
    return xdg_home("XDG_CACHE_HOME", ".cache") / "digit-recognizer"


def cached_replica(seed: int, cache_dir: Path | None = None) -> ReplicaFiles:
    """The replica for ``seed`` in the cache (``default_cache_dir``), built there the first time."""
    try:
        return ready_replica((cache_dir or default_cache_dir()) / f"replica-seed{seed}", seed)
    except OutputError as error:  # a read-only home, most often
        raise OutputError(f"{error}; the replicas' cache is set by XDG_CACHE_HOME, or give "
                          "your own files (--train, --test)") from None  # fmt: skip


def replica_is_complete(out_dir: str | Path, seed: int = 0) -> bool:
    """True if ``out_dir`` holds a finished replica for ``seed`` whose files are unmodified.

    Hashing the three files (~120 MB) takes ~0.3 s, a tenth of a rebuild, and catches a file
    edited or truncated by hand.
    """
    files = replica_files(out_dir)
    if not all(path.is_file() for path in files.all_files):
        return False  # a pipe among them would be read until a writer came
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
        return manifest == _manifest(files, seed)
    except (OSError, ValueError):
        return False


def _recorded_hashes(manifest: Path) -> dict[str, str]:
    """The SHA-256 of each file a replica build wrote, by name, as its ``manifest`` records."""
    try:
        return dict(json.loads(manifest.read_text(encoding="utf-8"))["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_recorded(path: Path, written: dict[str, str], write: Callable[[Path], None]) -> None:
    """``write`` a file to ``path``, its SHA-256 added to the manifest (without the seed that
    would mark the build complete) before the file takes its name: recorded after, a build
    stopped in between (0.3 s of hashing) would leave a file that its rerun takes for the user's.
    ``write`` writes atomically too, so the file is on disk by then and the rename follows."""
    with atomic_path(path) as tmp:
        write(tmp)
        written[path.name] = sha256_file(tmp)
        _write_manifest(path.parent / MANIFEST, {"sha256": written})


def _write_manifest(path: Path, manifest: dict[str, object]) -> None:
    write_text(path, json.dumps(manifest, indent=2) + "\n")


def _manifest(files: ReplicaFiles, seed: int) -> dict[str, object]:
    return {"seed": seed, "sha256": {path.name: sha256_file(path) for path in files.csvs}}
