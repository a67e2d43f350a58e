"""The Kaggle replica: Kaggle's shapes, a seeded permutation of MNIST, same seed same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.data.kaggle_csv import read_kaggle_csv, read_submission
from digit_recognizer.data.mnist import load_mnist
from digit_recognizer.data.replica import (
    LEFTOVER_AGE_S,
    MANIFEST,
    ReplicaFiles,
    build_replica,
    cached_replica,
    default_cache_dir,
    ready_replica,
    replica_files,
    replica_is_complete,
)
from digit_recognizer.errors import DigitsError, OutputError

from .conftest import feed_if_read


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> ReplicaFiles:
    return build_replica(tmp_path_factory.mktemp("replica"), seed=0)


def sha256s(files: ReplicaFiles) -> dict[str, str]:
    return json.loads(files.manifest.read_text())["sha256"]


def test_replica_is_the_seeded_permutation_of_mnist(replica: ReplicaFiles) -> None:
    train, test = read_kaggle_csv(replica.train), read_kaggle_csv(replica.test)
    solution = read_submission(replica.solution, expected_rows=28_000)
    assert train.images.shape == (42_000, 28, 28) and train.has_labels
    assert test.images.shape == (28_000, 28, 28) and not test.has_labels
    mnist = load_mnist()
    order = np.random.default_rng(0).permutation(70_000)
    np.testing.assert_array_equal(train.images, mnist.images[order[:42_000]])
    np.testing.assert_array_equal(train.labels, mnist.labels[order[:42_000]])
    np.testing.assert_array_equal(test.images, mnist.images[order[42_000:]])
    np.testing.assert_array_equal(solution, mnist.labels[order[42_000:]])
    # Together the two files hold every MNIST digit once.
    counts = np.bincount(train.labels, minlength=10) + np.bincount(solution, minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(mnist.labels, minlength=10))


def test_same_seed_same_bytes_other_seed_other_bytes(replica: ReplicaFiles, tmp_path: Path) -> None:
    again = build_replica(tmp_path / "again", seed=0)
    assert sha256s(again) == sha256s(replica)
    other = build_replica(tmp_path / "other", seed=1)
    other_sums, sums = sha256s(other), sha256s(replica)
    assert all(other_sums[name] != sums[name] for name in sums)
    assert replica_is_complete(tmp_path / "other", seed=1)
    assert not replica_is_complete(tmp_path / "other", seed=0)


def test_replica_is_complete(replica: ReplicaFiles, tmp_path: Path) -> None:
    assert replica_is_complete(replica.train.parent, seed=0)
    assert not replica_is_complete(tmp_path / "nothing-here", seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(replica.train.parent, copy)
    assert replica_is_complete(copy, seed=0)
    solution = copy / "solution.csv"
    solution.write_text(solution.read_text().replace("\n1,", "\n1,0", 1))
    assert not replica_is_complete(copy, seed=0)  # edited by hand
    (copy / MANIFEST).write_text("{not json")
    assert not replica_is_complete(copy, seed=0)
    (copy / MANIFEST).unlink()
    assert not replica_is_complete(copy, seed=0)  # the manifest is what a finished build writes


def test_a_ready_replica_is_reused_and_a_damaged_one_rebuilt(
    replica: ReplicaFiles, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(replica.train.parent, copy)
    written = {path.name: path.stat().st_mtime_ns for path in copy.iterdir()}
    assert ready_replica(copy, seed=0) == replica_files(copy)
    assert {path.name: path.stat().st_mtime_ns for path in copy.iterdir()} == written
    with (copy / "test.csv").open("r+b") as test_csv:
        test_csv.truncate(1000)  # an interrupted copy
    ready_replica(copy, seed=0)
    assert replica_is_complete(copy, seed=0) and sha256s(replica_files(copy)) == sha256s(replica)


def test_csvs_no_replica_wrote_are_kept_unless_overwritten(tmp_path: Path) -> None:
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "train.csv").write_text("label,pixel0\n")  # the user's own download, say
    with pytest.raises(OutputError, match=r"train\.csv exists and is not a replica's"):
        build_replica(kaggle, seed=0)
    assert (kaggle / "train.csv").read_text() == "label,pixel0\n"
    assert not (kaggle / "test.csv").exists()
    build_replica(kaggle, seed=0, overwrite=True)
    assert replica_is_complete(kaggle, seed=0)
    build_replica(kaggle, seed=1)  # a replica's files may be rebuilt with another seed
    assert replica_is_complete(kaggle, seed=1)
    # Their bytes decide, not the manifest beside them: a file copied over a replica's is kept.
    (kaggle / "test.csv").write_text("pixel0\n")
    with pytest.raises(OutputError, match=r"test\.csv exists and is not a replica's"):
        build_replica(kaggle, seed=2)
    assert (kaggle / "test.csv").read_text() == "pixel0\n"


@pytest.mark.parametrize("manifest", ["[]", '{"sha256": 5}', '{"sha256": ["a"]}', "{"])
def test_a_manifest_no_replica_wrote_records_no_file(tmp_path: Path, manifest: str) -> None:
    """A replica.json of another tool's shape, or cut short: the CSVs beside it are the user's,
    kept as such, not a TypeError from reading it."""
    (tmp_path / MANIFEST).write_text(manifest)
    (tmp_path / "train.csv").write_text("label,pixel0\n")
    with pytest.raises(OutputError, match=r"train\.csv exists and is not a replica's"):
        build_replica(tmp_path, seed=0)
    assert not replica_is_complete(tmp_path, seed=0)


def test_a_pipe_or_folder_named_test_csv_is_refused_before_any_file_is_written(
    tmp_path: Path,
) -> None:
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    os.mkfifo(kaggle / "test.csv")
    for build in (build_replica, ready_replica):
        feed_if_read(kaggle / "test.csv", "pixel0\n")
        with pytest.raises(OutputError, match=r"test\.csv: not a regular file"):
            build(kaggle, seed=0)
        # The cache's check hashes the files its manifest names: the pipe is not read either.
        (kaggle / "train.csv").write_text("label,pixel0\n")
        (kaggle / "solution.csv").write_text("ImageId,Label\n")
        (kaggle / MANIFEST).write_text(json.dumps({"seed": 0, "sha256": {}}))
    assert (kaggle / "test.csv").is_fifo()
    assert (kaggle / "train.csv").read_text() == "label,pixel0\n"  # refused before writing
    (kaggle / "test.csv").unlink()
    (kaggle / MANIFEST).unlink()
    os.mkfifo(kaggle / MANIFEST)  # read for the hashes it records
    for build in (build_replica, ready_replica):
        feed_if_read(kaggle / MANIFEST, "{}")
        with pytest.raises(OutputError, match=r"replica\.json: not a regular file"):
            build(kaggle, seed=0)
    (kaggle / MANIFEST).unlink()
    (kaggle / "test.csv").mkdir()
    with pytest.raises(OutputError, match=r"test\.csv: a directory, where the replica writes"):
        build_replica(kaggle, seed=0, overwrite=True)
    assert (kaggle / "train.csv").read_text() == "label,pixel0\n"


def test_a_pipe_among_the_replicas_files_is_not_read_for_its_hash(tmp_path: Path) -> None:
    """A pipe is read until a writer comes, which may be never: the files that match the
    manifest but for a pipe named test.csv are no complete replica, its bytes unread."""
    texts = {"train.csv": "label,pixel0\n1,0\n", "test.csv": "pixel0\n0\n",
             "solution.csv": "ImageId,Label\n1,1\n"}  # fmt: skip
    sums = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()}
    (tmp_path / MANIFEST).write_text(json.dumps({"seed": 0, "sha256": sums}))
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    assert replica_is_complete(tmp_path, seed=0)
    (tmp_path / "test.csv").unlink()
    os.mkfifo(tmp_path / "test.csv")
    feed_if_read(tmp_path / "test.csv", texts["test.csv"])  # the very bytes, were it read
    assert not replica_is_complete(tmp_path, seed=0)


def test_an_interrupted_build_is_incomplete_and_its_own_files_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_replica(tmp_path, seed=0)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("digit_recognizer.data.replica.write_submission", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_replica(tmp_path, seed=1)  # train.csv and test.csv are seed 1's, solution.csv 0's
    monkeypatch.undo()
    assert not replica_is_complete(tmp_path, seed=1) and not replica_is_complete(tmp_path, seed=0)
    build_replica(tmp_path, seed=1)  # no --force: every file there is a replica's
    assert replica_is_complete(tmp_path, seed=1)


def test_a_build_stopped_as_a_file_takes_its_name_knows_it_for_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its hash had been recorded only after train.csv took its name: stopped in between, the
    rerun refused the file as the user's and asked for --force."""
    replace = os.replace

    def stopped_once_placed(source: str, target: str) -> None:
        replace(source, target)
        if Path(target).name == "train.csv":
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped_once_placed)
    with pytest.raises(KeyboardInterrupt):
        build_replica(tmp_path, seed=0)
    monkeypatch.undo()
    assert (tmp_path / "train.csv").exists() and not (tmp_path / "test.csv").exists()
    build_replica(tmp_path, seed=0)  # no --force
    assert replica_is_complete(tmp_path, seed=0)


def test_the_cache_follows_an_absolute_xdg_cache_home_and_ignores_a_relative_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative XDG_CACHE_HOME had moved the cache with the working folder, rebuilding
    replicas anywhere; the XDG spec says to ignore it (as the skops key's XDG_DATA_HOME is)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "digit-recognizer"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "digit-recognizer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "digit-recognizer"


def test_digits_data_kaggle_run_again_removes_what_its_killed_build_left(tmp_path: Path) -> None:
    """`digits data kaggle DIR` killed while writing train.csv, then run again, had kept the
    killed build's 30 MB `.train.csv.PID-RANDOM.tmp` in DIR for good. A build that another
    process is making there is refused."""
    import fcntl

    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "train.csv").write_text("label,pixel0\n")  # refused: the quick way to a build's end
    killed = kaggle / ".train.csv.999999999-abcdefgh.tmp"  # no process has that pid
    killed.write_text("partial")
    with pytest.raises(OutputError, match="is not a replica's"):
        build_replica(kaggle, seed=0)
    assert sorted(path.name for path in kaggle.iterdir()) == [".lock", "train.csv"]
    with open(kaggle / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another build, under way
        with pytest.raises(DigitsError, match=f"{kaggle} is in use by .* another folder$"):
            build_replica(kaggle, seed=0, overwrite=True)


def test_a_killed_builds_temporary_files_are_removed_from_a_complete_replica(
    replica: ReplicaFiles,
) -> None:
    """A build killed while writing left a 30 MB `.test.csv.PID-RANDOM.tmp` in the cache, and a
    complete cache is never rebuilt: it stayed for good. A live writer's file stays, and so
    does a recent one, which another container's build may be writing."""
    folder = replica.train.parent
    writer = subprocess.Popen(["sleep", "60"])
    try:
        dead = folder / ".test.csv.999999999-abcdefgh.tmp"  # no process has that pid
        recent = folder / ".train.csv.999999999-abcdefgh.tmp"
        live = folder / f".test.csv.{writer.pid}-abcdefgh.tmp"
        for path in (dead, recent, live):
            path.write_text("partial")
        long_ago = time.time() - LEFTOVER_AGE_S - 1
        for path in (dead, live):
            os.utime(path, (long_ago, long_ago))
        assert ready_replica(folder, seed=0) == replica
        assert not dead.exists() and recent.exists() and live.exists()
    finally:
        writer.kill()
        for path in folder.glob(".*.tmp"):
            path.unlink()


def test_a_cache_that_cannot_be_written_says_where_it_is_set(tmp_path: Path) -> None:
    """A read-only home had said only that train.csv could not be written."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with pytest.raises(OutputError, match=r"cannot be written .*; the replicas' cache is set by "
                       r"XDG_CACHE_HOME, or give your own files \(--train, --test\)"):  # fmt: skip
        cached_replica(0, blocked)
