"""Shards, manifests, expansion and the streaming reader (data/shards.py, data/stream.py)."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from digit_recognizer.cli import app
from digit_recognizer.data import shards, stream
from digit_recognizer.data.kaggle_csv import (
    DigitSet,
    check_kaggle_csv,
    count_lines,
    read_kaggle_csv,
    write_kaggle_csv,
    write_submission,
)
from digit_recognizer.data.lighting import MIN_CONTRAST
from digit_recognizer.data.shards import (
    MANIFEST_FILE,
    SHARD_NAME,
    check_kaggle_source,
    choose_loading,
    expand,
    is_data_source,
    read_data_source,
    read_labelled,
    read_manifest,
    read_shards,
    resolve_data_source,
    shard_csv,
)
from digit_recognizer.data.stream import ShardStream, batches_per_rank, shuffled_batches
from digit_recognizer.errors import ConfigError, DataError, DigitsError, OutputError
from digit_recognizer.fileio import locked_dir
from digit_recognizer.pipeline import training_data
from digit_recognizer.predict import predict_csv, predict_source, predict_stream
from digit_recognizer.train import TrainConfig, train

from .conftest import feed_if_read


def numbered(n_rows: int, seed: int = 0) -> DigitSet:
    """Random images whose first two pixels spell the row index, so every row is recognisable."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_rows, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n_rows) // 256, np.arange(n_rows) % 256
    return DigitSet(images, rng.integers(0, 10, size=n_rows).astype(np.int64))


def row_ids(images) -> list[int]:
    images = np.asarray(images, dtype=np.int64)
    return (images[:, 0, 0] * 256 + images[:, 0, 1]).tolist()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DigitSet]:
    data = numbered(1003)
    path = tmp_path_factory.mktemp("source") / "train.csv"
    write_kaggle_csv(path, data.images, data.labels)
    return path, data


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, source) -> Path:
    out_dir = tmp_path_factory.mktemp("shards")
    shard_csv(source[0], out_dir, parts=5)
    return out_dir


# --- shards and manifests -----------------------------------------------------------------------


def test_shard_round_trip_rows_and_bytes(source, shard_dir: Path) -> None:
    path, data = source
    manifest = read_manifest(shard_dir)
    assert manifest.n_rows == 1003 and manifest.has_labels and len(manifest.shards) == 5
    assert [shard.n_rows for shard in manifest.shards] == [200, 201, 200, 201, 201]
    header, bodies = [], []
    for shard in manifest.shards:
        raw = shard.path.read_bytes()
        assert shard.sha256 == hashlib.sha256(raw).hexdigest() and shard.n_bytes == len(raw)
        first_line, body = raw.split(b"\n", 1)
        header.append(first_line)
        bodies.append(body)
    original_header, original_body = path.read_bytes().split(b"\n", 1)
    assert set(header) == {original_header} and b"".join(bodies) == original_body
    back = read_data_source(shard_dir)
    assert np.array_equal(back.images, data.images) and np.array_equal(back.labels, data.labels)
    assert resolve_data_source(shard_dir / MANIFEST_FILE) == manifest
    # Each shard's rows of each digit, listed for training to warn before it streams them.
    starts = np.cumsum([0] + [shard.n_rows for shard in manifest.shards])
    assert [list(shard.class_counts) for shard in manifest.shards] == [
        np.bincount(data.labels[start:stop], minlength=10).tolist()
        for start, stop in itertools.pairwise(starts)
    ]
    assert manifest.class_counts == np.bincount(data.labels, minlength=10).tolist()
    assert resolve_data_source(path).class_counts is None  # a CSV: not counted to resolve it


def test_data_check_of_shards_checks_their_rows_and_their_manifests_hashes(source, tmp_path):
    """`digits data check DIR` had said only "is a directory, expected a CSV file"."""
    path = source[0]
    out_dir = tmp_path / "shards"
    shard_csv(path, out_dir, parts=3)
    expected = check_kaggle_csv(path)
    for given in (out_dir, out_dir / MANIFEST_FILE, f"{out_dir}/part-*.csv"):
        summary = check_kaggle_source(given)
        assert (summary.path, summary.n_rows) == (Path(given), 1003)
        assert summary.class_counts == expected.class_counts
    with pytest.raises(DataError, match="not a submission; only a submission's rows"):
        check_kaggle_source(out_dir, expected_rows=1003)
    last = read_manifest(out_dir).shards[-1].path
    last.write_bytes(last.read_bytes().replace(b"\n1,", b"\n2,", 1))  # one label, rows kept
    with pytest.raises(DataError) as raised:
        check_kaggle_source(out_dir)
    assert str(raised.value) == (
        f"{last}: its SHA-256 is not the one the manifest lists; it changed after the manifest "
        "was written: rebuild the shards"
    )


def test_data_check_of_shards_reads_each_shard_once(source, tmp_path, monkeypatch) -> None:
    """`digits data check DIR` had read every shard twice: its rows, then again for its SHA-256."""
    out_dir = tmp_path / "shards"
    shard_csv(source[0], out_dir, parts=3)
    opened = []
    real_open = io.open

    def recording_open(file, *args, **kwargs):
        opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", recording_open)
    monkeypatch.setattr(builtins, "open", recording_open)
    assert check_kaggle_source(out_dir).n_rows == 1003
    assert sorted(name for name in opened if name != MANIFEST_FILE) == [
        "part-00000.csv", "part-00001.csv", "part-00002.csv"
    ]  # fmt: skip


def test_data_check_of_a_csv_past_stream_file_bytes_reads_it_a_piece_at_a_time(
    source, tmp_path, monkeypatch
):
    """`digits data check big.csv` had read a CSV of digits whole (0.87 GB of memory for one of
    153 MB), where `digits predict` streams it: now a piece at a time, with the same summary
    and the same messages. A submission, whose ImageIds are checked together, is read whole."""
    path, data = source
    lines = path.read_bytes().splitlines(keepends=True)
    bad_cell = tmp_path / "bad_cell.csv"  # line 901: in a late piece
    bad_cell.write_bytes(b"".join([*lines[:900], lines[900].replace(b",", b",x", 1), *lines[901:]]))
    bad_header = tmp_path / "bad_header.csv"  # said against the three headers data check takes
    bad_header.write_bytes(b"".join([b"ImageId,Labels\n", *lines[1:]]))
    submission = tmp_path / "submission.csv"
    write_submission(submission, data.labels)
    expected = {(file, None): check_kaggle_csv(file) for file in (path, submission)}
    for file, rows in ((bad_cell, None), (bad_header, None), (path, 1003)):
        with pytest.raises(DataError) as raised:
            check_kaggle_csv(file, rows)
        expected[file, rows] = str(raised.value)
    monkeypatch.setattr(shards, "STREAM_FILE_BYTES", 1000)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 100_000)

    def whole_if_a_submission(file, expected_rows=None):
        assert Path(file) == submission, f"{file} was read whole"
        return check_kaggle_csv(file, expected_rows)

    monkeypatch.setattr(shards, "check_kaggle_csv", whole_if_a_submission)
    assert submission.stat().st_size > 1000
    for (file, rows), outcome in expected.items():
        if isinstance(outcome, str):
            with pytest.raises(DataError) as raised:
                check_kaggle_source(file, rows)
            assert str(raised.value) == outcome
        else:
            assert check_kaggle_source(file, rows) == outcome


def test_shards_go_to_a_folder_whose_name_is_not_utf8(source, tmp_path: Path) -> None:
    out_dir = tmp_path / os.fsdecode(b"shards-\xff")  # a Latin-1 name on a Linux disk
    shard_csv(source[0], out_dir, parts=2)
    assert np.array_equal(read_data_source(out_dir).labels, source[1].labels)


def test_a_glob_or_a_csv_resolves_like_a_manifest(source, shard_dir: Path) -> None:
    by_glob = resolve_data_source(f"{shard_dir}/part-*.csv")
    assert by_glob.shards == read_manifest(shard_dir).shards
    single = resolve_data_source(source[0])
    assert single.n_rows == 1003 and single.has_labels and len(single.shards) == 1
    with pytest.raises(DataError, match="no file matches this pattern"):
        resolve_data_source(f"{shard_dir}/nothing-*.csv")
    with pytest.raises(DataError, match=r"manifest.json: not found; expected a shard directory"):
        resolve_data_source(shard_dir.parent)


def test_an_image_named_with_glob_characters_is_no_data_source(tmp_path: Path) -> None:
    """`digits explain RUN 'scan [1].png'` had read the photo as a CSV ("line 1: not UTF-8
    text"): a name is a pattern only where no file has it."""
    photo = tmp_path / "scan [1].png"
    photo.write_bytes(b"\x89PNG")
    assert not is_data_source(photo)
    assert is_data_source(tmp_path / "scan [2].png")  # no such file: a pattern
    assert is_data_source(f"{tmp_path}/*.csv") and is_data_source(tmp_path / "rows [1].csv")


def test_a_scanned_csv_is_hashed_once_and_only_when_its_hash_is_asked(
    source, shard_dir: Path, monkeypatch
) -> None:
    """Each scan had hashed the CSV for a hash that predict and evaluate never read: `digits
    predict --nproc 2 big.csv` in the parent and in every process (4 s each for 562 MB), and
    `digits evaluate` besides its own check that the run did not train on it."""
    hashed = []
    monkeypatch.setattr(shards, "sha256_file", lambda path: hashed.append(path) or "digest")
    manifest = resolve_data_source(source[0])
    assert manifest.n_rows == 1003 and hashed == []
    assert [manifest.shards[0].sha256, manifest.shards[0].sha256] == ["digest", "digest"]
    assert hashed == [source[0]]
    listed = read_manifest(shard_dir).shards[0]  # a manifest's hash, as it lists it
    assert listed.sha256 == hashlib.sha256(listed.path.read_bytes()).hexdigest()
    assert hashed == [source[0]]


def test_a_csv_named_in_capitals_is_a_data_source(tmp_path: Path) -> None:
    """`digits explain RUN TEST.CSV` reads rows, as of test.csv, not one image."""
    rows = tmp_path / "TEST.CSV"
    rows.write_text("pixel0\n")
    assert is_data_source(rows)


def test_a_shard_directory_s_manifest_named_is_a_data_source(shard_dir: Path) -> None:
    """`digits explain RUN shards/manifest.json` reads the shards' rows, as of the folder, not
    the manifest as one image."""
    assert is_data_source(shard_dir / MANIFEST_FILE)


def test_a_pipe_is_read_once_or_refused_where_it_would_be_read_twice(
    tmp_path: Path, source
) -> None:
    fifo = tmp_path / "rows"  # what `digits eda <(gzip -dc train.csv.gz)` is given
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(source[0].read_bytes()))
    writer.start()
    assert np.array_equal(read_data_source(fifo).images, source[1].images)
    writer.join()
    with pytest.raises(
        DataError, match=r"rows: not a regular file \(a pipe\?\), and its rows are read"
    ):
        resolve_data_source(fifo)  # scanned, then read: the second read would find it empty


def test_predict_reads_a_pipe_once_and_a_manifests_path_as_its_shards(
    tmp_path: Path, tiny_run: Path, small_csvs, shard_dir: Path
) -> None:
    """`digits predict RUN <(gzip -dc test.csv.gz)` had been refused as a pipe, which eda and
    evaluate read; a manifest.json given by path had been read as a CSV."""
    predict_source([tiny_run], small_csvs["test"], tmp_path / "file.csv")
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    writer = threading.Thread(
        target=lambda: fifo.write_bytes(small_csvs["test"].read_bytes()), daemon=True
    )
    writer.start()
    try:
        predict_source([tiny_run], fifo, tmp_path / "pipe.csv")
    finally:  # failing before it opened the pipe, it would leave the writer waiting forever
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=30)
    assert (tmp_path / "pipe.csv").read_bytes() == (tmp_path / "file.csv").read_bytes()
    predict_source([tiny_run], shard_dir, tmp_path / "dir.csv")
    predict_source([tiny_run], shard_dir / MANIFEST_FILE, tmp_path / "manifest.csv")
    assert (tmp_path / "manifest.csv").read_bytes() == (tmp_path / "dir.csv").read_bytes()


def test_a_glob_orders_numbered_files_by_their_numbers(tmp_path: Path, source, monkeypatch) -> None:
    for name in ("test_1", "test_2", "test_10", "test_01"):
        write_kaggle_csv(tmp_path / f"{name}.csv", source[1].images[:1])
    # Equal numbers (01 and 1) are ordered by name, whatever order the directory lists them in.
    listed = shards.glob.glob(f"{tmp_path}/test_*.csv")
    for listing in (sorted(listed), sorted(listed, reverse=True)):
        monkeypatch.setattr(shards.glob, "glob", lambda pattern, listing=listing: listing)
        files = [shard.path.name for shard in resolve_data_source(f"{tmp_path}/test_*.csv").shards]
        # the rows' ImageIds follow
        assert files == ["test_01.csv", "test_1.csv", "test_2.csv", "test_10.csv"]


def test_unlabelled_shards_and_mixed_sources(tmp_path: Path, source, shard_dir: Path) -> None:
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, source[1].images[:10])
    manifest = shard_csv(test_csv, tmp_path / "unlabelled", parts=2)
    assert not manifest.has_labels and read_data_source(tmp_path / "unlabelled").labels is None
    (tmp_path / "mixed").mkdir()
    for name, path in (("a.csv", test_csv), ("b.csv", shard_dir / "part-00000.csv")):
        (tmp_path / "mixed" / name).write_bytes(path.read_bytes())
    with pytest.raises(DataError, match=r"b.csv, line 1: the header is labelled but the other"):
        resolve_data_source(f"{tmp_path}/mixed/*.csv")
    with pytest.raises(ConfigError, match=r"^--parts must be from 1 to the number of rows"):
        shard_csv(test_csv, tmp_path / "too-many", parts=11)


def test_resharding_leaves_no_stale_shard_and_never_writes_over_its_source(
    tmp_path: Path, source
) -> None:
    out_dir = tmp_path / "shards"
    shard_csv(source[0], out_dir, parts=5)
    shard_csv(source[0], out_dir, parts=2)
    # A glob of the directory reads what its manifest lists, not three shards of the first build.
    assert sorted(path.name for path in out_dir.glob("part-*.csv")) == [
        "part-00000.csv", "part-00001.csv"
    ]  # fmt: skip
    assert len(read_data_source(f"{out_dir}/*.csv")) == 1003
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    for write in (
        lambda: shard_csv(out_dir, out_dir, parts=5),
        lambda: expand(out_dir, out_dir, copies=2, parts=4, valid_size=0),
    ):
        with pytest.raises(ConfigError, match=r"part-00000\.csv is read and would be overwritten"):
            write()
        assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    # A plain CSV beside the shards is no shard of theirs.
    (out_dir / "train.csv").write_bytes(source[0].read_bytes())
    assert shard_csv(out_dir / "train.csv", out_dir, parts=3).n_rows == 1003
    # A rebuild that fails part-way (a malformed row, a full disk) leaves the earlier build as
    # it was, and nothing of its own: it writes beside the directory and moves in once whole.
    earlier = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    calls = itertools.count()
    write_table = shards.write_table

    def failing_write(*args):
        if next(calls) == 1:
            raise OSError("disk full")
        write_table(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "write_table", failing_write)
        with pytest.raises(OutputError, match=r"part-00001\.csv: cannot be written \(disk full\)"):
            shard_csv(source[0], out_dir, parts=4)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shards"]
    assert len(read_data_source(out_dir)) == 1003


def test_a_first_build_on_a_full_disk_names_its_directory_and_leaves_none_behind(
    tmp_path: Path, source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error had named the hidden folder the shards are built in (out/.building-x1y2z3/
    part-00001.csv), which is gone once it is told, and the directory made for the build, and
    those above it, had stayed behind, empty."""
    out_dir = tmp_path / "new" / "shards"
    write_table = shards.write_table

    def full_at_the_second_shard(*args) -> None:
        if next(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_table(*args)

    monkeypatch.setattr(shards, "write_table", full_at_the_second_shard)
    for build in (
        lambda: shard_csv(source[0], out_dir, parts=4),
        lambda: expand(source[0], out_dir, copies=2, parts=4, valid_size=0),
    ):
        calls = itertools.count()  # each build's second shard
        with pytest.raises(OutputError) as failed:
            build()
        said = f"{out_dir / 'part-00001.csv'}: cannot be written: no space left on the device"
        assert str(failed.value).startswith(said)
        assert list(tmp_path.iterdir()) == []


def test_a_build_on_a_disk_full_from_the_start_names_its_directory(
    tmp_path: Path, source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hidden build folder's lock, its first write, had been told as DIR/.lock, a file
    nothing had tried to write."""

    def no_room(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_room)
    out_dir = tmp_path / "shards"
    with pytest.raises(OutputError) as failed:
        shard_csv(source[0], out_dir, parts=2)
    assert str(failed.value).startswith(f"{out_dir}: cannot be written: no space left on the")


def test_a_build_going_on_is_not_taken_for_a_killed_ones(
    tmp_path: Path, source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's hidden folder is locked while it writes: unlocked, a second `digits data
    shard` into the same folder, starting meanwhile, took it for a killed build's and removed
    its shards from under it."""
    out_dir = tmp_path / "out"
    write_table = shards.write_table

    def another_build_starts_meanwhile(*args):
        shards.remove_unlocked_dirs(out_dir.glob(f"{shards.BUILDING_PREFIX}*"))
        write_table(*args)

    monkeypatch.setattr(shards, "write_table", another_build_starts_meanwhile)
    manifest = shard_csv(source[0], out_dir, parts=2)
    assert manifest.n_rows == 1003 and len(read_data_source(out_dir)) == 1003


def test_a_second_build_into_a_folder_being_built_is_refused(
    tmp_path: Path, source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds into one folder at once had both moved their shards in: `digits data shard
    a.csv out` and `digits data shard b.csv out` left a's manifest over one shard of b's, which
    read_data_source took for a's rows."""
    out_dir = tmp_path / "shards"
    other = tmp_path / "other.csv"
    rows = numbered(600, seed=1)
    write_kaggle_csv(other, rows.images, rows.labels)
    replace = os.replace
    refusals = []

    def another_build_starts_meanwhile(src, dst) -> None:
        if Path(dst) == out_dir / "part-00001.csv" and not refusals:
            refusals.append("none")  # the second build's own moves pass
            with pytest.raises(DigitsError) as refused:
                shard_csv(other, out_dir, parts=2)
            refusals[0] = str(refused.value)
        replace(src, dst)

    monkeypatch.setattr(shards.os, "replace", another_build_starts_meanwhile)
    shard_csv(source[0], out_dir, parts=2)
    assert refusals == [
        f"{out_dir} is in use by process {os.getpid()}; wait for it to finish or choose "
        "another folder"
    ]
    assert row_ids(read_data_source(out_dir).images) == list(range(1003))


def test_a_rebuild_stopped_while_moving_its_shards_in_is_refused_until_run_again(
    tmp_path: Path, source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its first shard replaced the old one, a rebuild had left no manifest, and
    the error then suggested the glob 'DIR/*.csv', which read one new shard and two old ones
    as one set of rows. A CSV of the user's beside them is no shard, and is read (a large one,
    which `digits predict` streams, had been refused)."""
    out_dir = tmp_path / "shards"
    shard_csv(source[0], out_dir, parts=3)
    other = tmp_path / "other.csv"
    rows = numbered(600, seed=1)
    write_kaggle_csv(other, rows.images, rows.labels)
    replace = os.replace

    def stopped_at_the_second_shard(src, dst) -> None:
        if Path(dst) == out_dir / "part-00001.csv":
            raise KeyboardInterrupt
        replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(shards.os, "replace", stopped_at_the_second_shard)
        with pytest.raises(KeyboardInterrupt):
            shard_csv(other, out_dir, parts=3)
    said = f"{out_dir}: `digits data shard` was stopped while moving its shards in"
    (out_dir / "test.csv").write_bytes(other.read_bytes())  # no shard: its own rows
    assert resolve_data_source(out_dir / "test.csv").n_rows == 600
    for half_replaced in (out_dir, f"{out_dir}/*.csv", f"{out_dir}/part-*.csv"):
        with pytest.raises(DataError, match=said):
            read_data_source(half_replaced)
    (out_dir / "test.csv").unlink()
    shard_csv(other, out_dir, parts=3)  # run again, it ends the swap
    assert row_ids(read_data_source(f"{out_dir}/*.csv").images) == list(range(600))


def test_sharding_into_a_directory_removes_only_its_own_earlier_shards(
    tmp_path: Path, source
) -> None:
    """Every part-*.csv had been removed as stale: a Spark output's part-00000-c000.csv, a
    user's part-final-report.csv."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    theirs = {name: name.encode() for name in ("part-final-report.csv", "part-00000-c000.csv")}
    for name, data in theirs.items():
        (out_dir / name).write_bytes(data)
    # What a build killed outright left goes; a build going on beside (its folder locked) stays.
    killed, live = out_dir / ".building-k1ll3d00", out_dir / ".building-l1v3b1d0"
    killed.mkdir()
    (killed / "part-00000.csv").write_bytes(b"label,pixel0\n")
    (killed / ".lock").write_text("process 999999999\n")  # its holder's lock gone with it
    shard_csv(source[0], out_dir, parts=3)
    with locked_dir(live):
        shard_csv(source[0], out_dir, parts=2)  # a rebuild removes its own third shard, no other
        # (Inside: once unlocked, the folder locked_dir made and left empty goes.)
        assert sorted(path.name for path in out_dir.glob(".building-*")) == [live.name]
    assert {name: (out_dir / name).read_bytes() for name in theirs} == theirs
    assert not (out_dir / "part-00002.csv").exists()
    assert SHARD_NAME.fullmatch("part-100000.csv")  # the 100,001st part's name is ours too
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "a web app\'s manifest"}')
    with pytest.raises(ConfigError, match=r"manifest\.json is not a shard manifest"):
        shard_csv(source[0], other, parts=2)
    assert sorted(path.name for path in other.iterdir()) == ["manifest.json"]


def test_expand_counts_determinism_and_copy_major_order(tmp_path: Path, source) -> None:
    path, data = source
    first = expand(path, tmp_path / "a", copies=3, parts=4, seed=7, valid_size=0)
    again = expand(path, tmp_path / "b", copies=3, parts=2, seed=7, valid_size=0)
    other = expand(path, tmp_path / "c", copies=3, parts=4, seed=8, valid_size=0)
    assert first.n_rows == again.n_rows == 3 * 1003 and len(first.shards) == 4
    assert first.origin == {"command": "expand", "source": str(path), "copies": 3, "seed": 7,
                            "valid_rows": 0}  # fmt: skip
    rows = read_data_source(tmp_path / "a")
    assert np.array_equal(rows.images, read_data_source(tmp_path / "b").images)  # parts: only cuts
    assert not np.array_equal(rows.images, read_data_source(tmp_path / "c").images)
    assert [shard.sha256 for shard in other.shards] != [shard.sha256 for shard in first.shards]
    assert np.array_equal(rows.labels, np.tile(data.labels, 3))  # the whole set once per copy
    assert not np.array_equal(rows.images[:1003], data.images)  # augmented, not copied
    assert not np.array_equal(rows.images[:1003], rows.images[1003:2006])


def test_expand_holds_out_images_that_validate_training_and_are_never_copied(
    tmp_path: Path, source, caplog
) -> None:
    """Every image of an expanded set is in it `copies` times, so no split of it validates
    honestly: the images held out, as they are, in a last shard do, in memory or streamed."""
    path, data = source
    manifest = expand(path, tmp_path / "e", copies=2, parts=3, seed=7, valid_size=0.1)
    assert len(manifest.shards) == 4 and manifest.origin["valid_rows"] == 101
    assert read_manifest(tmp_path / "e").n_rows == 2 * 902 + 101
    valid = read_kaggle_csv(manifest.shards[-1].path)
    held = np.zeros(len(data), dtype=bool)
    held[row_ids(valid.images)] = True
    assert held.sum() == 101
    np.testing.assert_array_equal(valid.images, data.images[held])  # unaugmented, in order
    # By class, as training's own split: each class's tenth, to the row.
    share = np.bincount(valid.labels, minlength=10) - 0.1 * np.bincount(data.labels, minlength=10)
    assert np.abs(share).max() <= 1
    copies = read_shards(replace(manifest, shards=manifest.shards[:-1]))
    np.testing.assert_array_equal(copies.labels, np.tile(data.labels[~held], 2))
    in_memory, valid_set, *_ = training_data(TrainConfig(), tmp_path / "e")
    assert isinstance(in_memory, DigitSet) and len(in_memory) == 2 * 902
    # Its copies are augmented already; training would compound the ranges, and says so.
    assert "augmented copies" in caplog.text and "--augment 0" in caplog.text
    caplog.clear()
    training_data(TrainConfig(augment=0), tmp_path / "e")
    assert "augmented copies" not in caplog.text
    assert row_ids(valid_set.images) == row_ids(valid.images)
    streamed, valid_set, *_ = training_data(TrainConfig(max_memory_gb=1e-6), tmp_path / "e")
    assert isinstance(streamed, shards.Manifest) and streamed.n_rows == 2 * 902
    assert row_ids(valid_set.images) == row_ids(valid.images)
    expand(path, tmp_path / "all", copies=2, parts=2, valid_size=0)
    for split_rows, remedy in (
        (lambda: training_data(TrainConfig(), tmp_path / "all"), "with --valid-size 0"),
        (lambda: read_labelled(tmp_path / "e", to_split=True), "the CSV it was expanded from"),
    ):  # training; tune and compare
        with pytest.raises(DataError, match=f"validates on copies of training images; .*{remedy}"):
            split_rows()
    assert len(read_labelled(tmp_path / "e")) == 2 * 902 + 101  # compare --test: no split
    # --valid-size 0: nothing validates, streamed or not, and every shard trains.
    for directory, n_rows in (("all", 2 * 1003), ("e", 2 * 902 + 101)):
        for max_memory_gb in (2.0, 0):  # 0: always streamed
            config = TrainConfig(valid_size=0, max_memory_gb=max_memory_gb)
            train_set, valid_set, *_ = training_data(config, tmp_path / directory)
            n_train = train_set.n_rows if isinstance(train_set, shards.Manifest) else len(train_set)
            assert (n_train, len(valid_set)) == (n_rows, 0), (directory, max_memory_gb)


def test_expand_holds_out_its_count_where_a_digit_has_one_row(tmp_path: Path) -> None:
    """A row of one, which trains, had left the split a row short of the count the shards
    were cut at: with --copies 2 an IndexError, with 1 an augmented copy that validated."""
    data = numbered(101)
    data.labels[:] = np.arange(101) % 9  # no 9 ...
    data.labels[50] = 9  # ... but this one
    write_kaggle_csv(tmp_path / "train.csv", data.images, data.labels)
    for copies in (1, 2):
        manifest = expand(tmp_path / "train.csv", tmp_path / f"e{copies}", copies=copies,
                          parts=2, valid_size=0.1)  # fmt: skip
        assert manifest.origin["valid_rows"] == manifest.shards[-1].n_rows == 11
        held = read_kaggle_csv(manifest.shards[-1].path).images
        np.testing.assert_array_equal(held, data.images[sorted(row_ids(held))])  # as they are
        assert 50 not in row_ids(held)


def test_expand_refuses_copies_the_disk_has_no_room_for(tmp_path: Path, source, monkeypatch):
    """`digits data expand --copies 99999999999` had written until stopped: an expansion its
    file system has no room for is refused before a row is written, stating both sizes."""
    path, _ = source
    room = shutil.disk_usage(tmp_path)._replace(free=int(1.5 * path.stat().st_size))
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: room)
    room_said = f"{room.free / 1e6:,.1f} MB"
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'two'}: --copies 2 would write about "
                       rf"5\.\d MB \(2,006 rows\), and its file system has {room_said} free; "
                       "give fewer --copies, or give a folder on another disk$"):  # fmt: skip
        expand(path, tmp_path / "two", copies=2, parts=2, valid_size=0)
    assert list(tmp_path.iterdir()) == []
    assert expand(path, tmp_path / "one", copies=1, parts=2, valid_size=0).n_rows == 1003
    # Sharding writes about its source's size: refused where less is free, named so.
    room = room._replace(free=int(0.5 * path.stat().st_size))
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'parts'}: its shards would write about "
                       r"2\.\d MB \(1,003 rows\), and its file system has .* free; free some "
                       "space there, or give a folder on another disk$"):  # fmt: skip
        shard_csv(path, tmp_path / "parts", parts=2)
    assert not (tmp_path / "parts").exists()
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["data", "expand", str(path), str(tmp_path / "huge"),
                                      "--copies", "99999999999", "--parts", "4"])  # fmt: skip
    assert result.exit_code == 1
    assert "--copies 99999999999 would write about" in result.output
    assert "(95,199,999,999,099 rows" in result.output  # 952 rows copied, 51 held out
    assert not (tmp_path / "huge").exists()


def test_an_expansion_of_one_copy_is_split_like_any_csv(tmp_path: Path, source) -> None:
    """With --copies 1 each image is in the expansion once, so a split of its rows holds
    training and validation images apart: it had been refused as if they were there twice."""
    expand(source[0], tmp_path / "one", copies=1, parts=2, valid_size=0)
    train_set, valid_set, *_ = training_data(TrainConfig(), tmp_path / "one")
    assert len(train_set) + len(valid_set) == 1003 and len(valid_set) > 0
    for files in (tmp_path / "one", f"{tmp_path}/one/*.csv"):
        assert len(read_labelled(files, to_split=True)) == 1003  # compare and tune
    # Its re-sharding is refused for what it is, not for copies the held-out images would mix with.
    expand(source[0], tmp_path / "out", copies=1, parts=2, valid_size=0.1)
    lost = "would not record that its rows are augmented copies already"
    with pytest.raises(ConfigError, match=f"{lost}, nor which 101 images it held out to validate;"):
        shard_csv(tmp_path / "out", tmp_path / "s", parts=3)
    with pytest.raises(ConfigError, match=f"{lost}; expand the CSV again"):
        shard_csv(tmp_path / "one", tmp_path / "s", parts=3)


def test_expand_copies_faint_rows_as_training_augments_them(tmp_path: Path, small_train) -> None:
    """0/1 rows are scaled to full ink before they are augmented, as training scales them:
    augmented as 0/1 and rounded back, the copies had kept two levels, and some no ink at all."""
    binarised = (small_train.images[:100] > 128).astype(np.uint8)
    write_kaggle_csv(tmp_path / "binarised.csv", binarised, small_train.labels[:100])
    manifest = expand(tmp_path / "binarised.csv", tmp_path / "big", copies=1, parts=1,
                      valid_size=0)  # fmt: skip
    copies = read_kaggle_csv(manifest.shards[0].path).images
    assert (copies.max(axis=(1, 2)) >= MIN_CONTRAST).all() and len(np.unique(copies)) > 100


def test_an_expansion_is_known_through_a_reshard_a_glob_or_a_second_expansion(
    tmp_path: Path, source
) -> None:
    """Re-sharded (origin "shard") or globbed (no manifest), an expansion had been split to
    validate on copies of training images, and expanded again had held out copies."""
    expand(source[0], tmp_path / "e", copies=2, parts=2, seed=7, valid_size=0.1)
    for write in (lambda: shard_csv(tmp_path / "e", tmp_path / "s", parts=3),
                  lambda: expand(tmp_path / "e", tmp_path / "ee", copies=1, parts=1)):  # fmt: skip
        with pytest.raises(ConfigError, match=r"an expansion \(`digits data expand`\) cannot"):
            write()
    assert not (tmp_path / "s").exists() and not (tmp_path / "ee").exists()
    for files in (f"{tmp_path}/e/*.csv", tmp_path / "e" / "part-00000.csv"):
        with pytest.raises(DataError, match="validates on copies of training images"):
            read_labelled(files, to_split=True)  # compare and tune
        with pytest.raises(DataError, match="validates on copies of training images"):
            training_data(TrainConfig(), files)
    assert resolve_data_source(source[0]).origin == {}  # a plain CSV is no expansion
    # A CSV of the expansion's folder that it does not list, beside another folder's
    # part-00000.csv, is no file of it either.
    (tmp_path / "e" / "mine.csv").write_bytes(source[0].read_bytes())
    shard_csv(source[0], tmp_path / "plain", parts=2)
    mixed = [tmp_path / "e" / "mine.csv", tmp_path / "plain" / "part-00000.csv"]
    assert shards._expansion_of(mixed) == {}


def test_commands_that_read_digits_take_a_shard_directory_as_they_take_its_csv(
    tmp_path: Path, source, shard_dir: Path, tiny_run: Path
) -> None:
    from digit_recognizer.eda import eda
    from digit_recognizer.evaluate import evaluate_run
    from digit_recognizer.explain import explain_run

    csv_path = source[0]
    by_csv = evaluate_run([tiny_run], csv_path, tmp_path / "csv")
    assert evaluate_run([tiny_run], shard_dir, tmp_path / "shards") == by_csv
    assert eda(shard_dir, tmp_path / "eda").rows()[1:] == eda(csv_path, tmp_path / "eda").rows()[1:]
    from_shards = explain_run(tiny_run, shard_dir, 1002, tmp_path / "a.png")  # the last shard's
    from_csv = explain_run(tiny_run, csv_path, 1002, tmp_path / "b.png")
    np.testing.assert_array_equal(from_shards.probas, from_csv.probas)
    assert from_shards.label == from_csv.label


# --- reading in pieces: the validation of read_kaggle_csv, line numbers of the shard -------------


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("final", [True, False])
def test_pieces_read_what_read_kaggle_csv_reads(tmp_path, monkeypatch, source, ending, final):
    lines = source[0].read_bytes().splitlines()[:40]
    path = tmp_path / "variant.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ending.join(lines) + (ending if final else b""))
    expected = read_kaggle_csv(path)
    manifest = resolve_data_source(path)
    assert manifest.n_rows == 39
    # Pieces much smaller than one row, and of a few rows each: a piece after the one that
    # holds row `start` is read from its own first row, wherever `start` falls in its piece.
    for chunk_bytes, start in itertools.product((1000, 10_000), range(5, 9)):
        monkeypatch.setattr(shards, "CHUNK_BYTES", chunk_bytes)
        pieces = list(shards.read_chunks(manifest.shards[0], True, start=start, stop=31))
        assert len(pieces) > 1
        read = np.concatenate([p.images for p in pieces])
        assert np.array_equal(read, expected.images[start:31])


def test_pieces_cut_only_after_line_ends_and_count_lines_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        text = bytes(rng.choice(list(b"a\r\n"), size=int(rng.integers(1, 40))).tolist())
        cuts = sorted(rng.integers(0, len(text) + 1, size=int(rng.integers(0, 6))).tolist())
        blocks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        pieces = list(shards._cut_after_line_ends(iter([b for b in blocks if b])))
        assert b"".join(pieces) == text
        for piece, after in itertools.pairwise(pieces):
            assert piece.endswith((b"\n", b"\r")) and not (
                piece.endswith(b"\r") and after[:1] == b"\n"
            )
        assert sum(count_lines(piece) for piece in pieces) == len(text.splitlines())


@pytest.mark.parametrize(
    ("line_number", "cell", "message"),
    [
        (5, "abc", "line 5, column pixel3: 'abc' is not an integer"),
        (150, "256", "line 150, column pixel3: 256 is out of range 0-255"),
        (202, " 7", "line 202, column pixel3: ' 7' has whitespace around the value; remove it"),
    ],
)
def test_malformed_shard_reports_its_own_file_and_line(
    tmp_path, monkeypatch, shard_dir, line_number, cell, message
) -> None:
    monkeypatch.setattr(shards, "CHUNK_BYTES", 50_000)
    copy = tmp_path / "shards"
    copy.mkdir()
    for file in shard_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    bad = copy / "part-00003.csv"
    lines = bad.read_bytes().split(b"\n")
    cells = lines[line_number - 1].split(b",")
    cells[4] = cell.encode()
    lines[line_number - 1] = b",".join(cells)
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as in_memory:
        read_kaggle_csv(bad)
    assert str(in_memory.value) == f"{bad}, {message}"
    for rank in (0, 1):  # the rank whose rows hold the bad line raises the same message
        try:
            list(ShardStream(copy, 32, rank=rank, world_size=2, shuffle=False))
        except DataError as error:
            assert str(error) == str(in_memory.value)
            break
    else:
        pytest.fail("no rank reported the bad line")
    # Training parses in a DataLoader worker, whose errors torch passes on with its traceback.
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0, device="cpu")
    with pytest.raises(DataError) as in_training:
        train(config, read_manifest(copy), None, tmp_path / "run")
    assert str(in_training.value) == str(in_memory.value)


def test_a_shard_that_changed_after_its_manifest(tmp_path: Path, shard_dir: Path) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for file in shard_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    part = copy / "part-00001.csv"
    part.write_bytes(b"\n".join(part.read_bytes().split(b"\n")[:101]) + b"\n")
    with pytest.raises(
        DataError, match=r"part-00001.csv: the manifest says 201 rows, the file has 100"
    ):
        list(ShardStream(copy, 64, shuffle=False, rank=0, world_size=1))
    with pytest.raises(  # read in memory too, not only streamed
        DataError, match=r"part-00001.csv: the manifest says 201 rows, the file has 100"
    ):
        read_data_source(copy)


def test_a_csv_that_changed_while_streamed_is_not_said_to_have_a_manifest(
    tmp_path: Path, source
) -> None:
    """A CSV (now streamed by predict and evaluate past 64 MiB) scanned, then grown or cut
    before it was read, as a download still arriving: the error had spoken of its manifest,
    which it has none of, and told to rebuild shards."""
    csv_path = tmp_path / "test.csv"
    csv_path.write_bytes(source[0].read_bytes())
    manifest = resolve_data_source(csv_path)
    csv_path.write_bytes(b"\n".join(csv_path.read_bytes().split(b"\n")[:101]) + b"\n")
    with pytest.raises(DataError) as error:
        list(ShardStream(manifest, 64, shuffle=False, rank=0, world_size=1))
    expected = (f"{csv_path}: had 1,003 rows when first read, 100 when read again: it changed "
                "meanwhile; give it once it is complete")  # fmt: skip
    assert str(error.value) == expected


def test_rows_added_to_a_shard_in_a_later_piece_are_found_when_it_is_streamed(
    tmp_path: Path, shard_dir: Path, monkeypatch
) -> None:
    """A reader that ends at the shard's end reads on, to catch rows past it."""
    copy = Path(shutil.copytree(shard_dir, tmp_path / "shards"))
    part = copy / "part-00001.csv"
    part.write_bytes(part.read_bytes() + part.read_bytes().split(b"\n")[1] + b"\n")
    monkeypatch.setattr(shards, "CHUNK_BYTES", 1000)  # pieces of about a row
    with pytest.raises(
        DataError, match=r"part-00001.csv: the manifest says 201 rows, the file has more"
    ):
        list(ShardStream(copy, 64, shuffle=False, rank=0, world_size=1))


# --- the streaming reader -----------------------------------------------------------------------


def epoch_ids(source: Path, epoch: int, world_size: int, n_workers: int, **kwargs) -> list:
    """Per rank: the row ids of each batch of one epoch, through a real DataLoader."""
    per_rank = []
    for rank in range(world_size):
        dataset = ShardStream(source, rank=rank, world_size=world_size, **kwargs)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=None, num_workers=n_workers)
        batches = [row_ids(images) for images, labels in loader]
        assert len(batches) == len(dataset)
        per_rank.append(batches)
    return per_rank


def test_each_row_once_per_epoch_across_2_workers_x_2_ranks(shard_dir: Path, source) -> None:
    kwargs = {"batch_size": 32, "buffer_rows": 100, "seed": 3}
    epochs = [epoch_ids(shard_dir, epoch, 2, 2, **kwargs) for epoch in (0, 1)]
    for per_rank in epochs:
        assert len(per_rank[0]) == len(per_rank[1]) == batches_per_rank(1003, 32, 2) == 16
        ids = [row for batches in per_rank for batch in batches for row in batch]
        assert sorted(ids) == list(range(1003))
    flat = [
        [row for batches in per_rank for batch in batches for row in batch] for per_rank in epochs
    ]
    assert flat[0] != flat[1]  # a new shard order and shuffle each epoch
    stream = ShardStream(shard_dir, 32, seed=3)

    def shard_order(epoch: int) -> tuple[int, ...]:
        stream.set_epoch(epoch)
        return tuple(stream.shard_order())

    assert len({shard_order(epoch) for epoch in range(6)}) > 1  # not only the rows' shuffle
    labels = {row: label for row, label in enumerate(source[1].labels)}
    dataset = ShardStream(shard_dir, 32, rank=0, world_size=1)
    for images, batch_labels in dataset:
        assert [labels[row] for row in row_ids(images)] == batch_labels.tolist()
        assert images.dtype.is_floating_point is False and batch_labels.dtype.itemsize == 8


@pytest.mark.parametrize(
    ("n_rows", "batch_size", "world_size", "n_workers"),
    [
        (1003, 32, 2, 3),
        (129, 64, 2, 2),
        (257, 128, 2, 1),
        (9, 4, 3, 4),
        (6, 1, 4, 2),
        (5, 8, 5, 2),
        (130, 64, 1, 1),
        (131, 64, 2, 1),
        (256, 32, 1, 3),  # 8 batches, 3 workers: the third starts at 8 * 2 // 3, not 8 // 3 * 2
    ],
)
def test_every_rank_runs_the_same_steps_and_no_batch_is_empty(
    tmp_path, monkeypatch, n_rows, batch_size, world_size, n_workers
) -> None:
    data = numbered(n_rows)
    write_kaggle_csv(tmp_path / "t.csv", data.images, data.labels)
    shard_csv(tmp_path / "t.csv", tmp_path / "s", parts=min(3, n_rows))
    steps = batches_per_rank(n_rows, batch_size, world_size)
    ids = []
    for rank in range(world_size):
        dataset = ShardStream(tmp_path / "s", batch_size, rank=rank, world_size=world_size)
        sizes = []
        for worker in range(n_workers):  # what get_worker_info says inside each worker
            info = SimpleNamespace(id=worker, num_workers=n_workers)
            monkeypatch.setattr(stream, "get_worker_info", lambda info=info: info)
            for images, _ in dataset:
                sizes.append(len(images))
                ids += row_ids(images)
        assert len(sizes) == steps == len(dataset)
        # Two rows at least (batch norm cannot train on one) where the rank has them.
        assert min(sizes) >= min(2, n_rows // world_size) and max(sizes) <= batch_size + 2
        assert sum(size != batch_size for size in sizes) <= 1  # only the last one may differ
    assert sorted(ids) == list(range(n_rows))
    # torchrun's own processes, without --nproc: refused as the flag's are (predict_stream).
    with pytest.raises(ConfigError, match=r"^3 rows for 4 processes, each of which needs one at "
                       r"least; give --nproc 3 or fewer$"):  # fmt: skip
        batches_per_rank(3, 8, 4)


def test_a_stream_without_shuffle_yields_the_rows_in_order(shard_dir: Path) -> None:
    """What `digits predict` streams: the shards in manifest order, each row where it stands,
    in every epoch."""
    dataset = ShardStream(shard_dir, 64, shuffle=False, rank=0, world_size=1)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert [row for images, _ in dataset for row in row_ids(images)] == list(range(1003))


def test_each_epoch_shuffles_the_rows_of_a_single_file_anew(source) -> None:
    """One shard has one order: the rows' own shuffle must change with the epoch."""
    dataset = ShardStream(source[0], 64, buffer_rows=100, seed=3, rank=0, world_size=1)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        orders.append([row for images, _ in dataset for row in row_ids(images)])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(1003))
    assert orders[0] != orders[1]


@pytest.mark.parametrize(
    ("batch_size", "buffer_rows", "rank", "world_size"),
    [(0, 100, 0, 1), (64, -1, 0, 1), (64, 100, 2, 2), (64, 100, -1, 2)],
)
def test_a_stream_refuses_a_batch_size_buffer_or_rank_out_of_range(
    shard_dir: Path, batch_size, buffer_rows, rank, world_size
) -> None:
    with pytest.raises(ConfigError, match=r"need batch_size >= 1, buffer_rows >= 0 and 0 <= rank"):
        ShardStream(shard_dir, batch_size, buffer_rows=buffer_rows, rank=rank,
                    world_size=world_size)  # fmt: skip


def test_shuffle_buffer_stays_bounded() -> None:
    pulled = 0

    def pieces():
        nonlocal pulled
        for start in range(0, 10_000, 300):
            data = numbered(10_000)
            pulled += min(300, 10_000 - start)
            yield data.take(slice(start, start + 300))

    sizes = [64] * (10_000 // 64) + [10_000 % 64]
    emitted, order = 0, []
    for images, _ in shuffled_batches(pieces(), sizes, 500, np.random.default_rng(0)):
        emitted += len(images)
        order += row_ids(images)
        assert pulled - emitted <= 500 + 300 + 64  # buffer + one piece + one batch, at most
    assert sorted(order) == list(range(10_000)) and order != sorted(order)


def test_choose_loading_says_which_and_why(shard_dir: Path, caplog) -> None:
    manifest = read_manifest(shard_dir)
    needed = shards.estimate_memory_bytes(manifest)
    with caplog.at_level(logging.INFO, logger="digit_recognizer.data.shards"):
        assert choose_loading(manifest, max_memory_bytes=needed) == "memory"
        assert choose_loading(manifest, max_memory_bytes=needed - 1) == "stream"
    assert "1,003 rows in 5 file(s)" in caplog.text and "streaming from the files" in caplog.text


# --- inference and the command line -------------------------------------------------------------


def test_predict_stream_matches_predict_csv(tmp_path: Path, tiny_run: Path, small_csvs) -> None:
    shard_csv(small_csvs["test"], tmp_path / "shards", parts=3)
    expected = predict_csv([tiny_run], small_csvs["test"], tmp_path / "in_memory.csv")
    assert predict_stream([tiny_run], tmp_path / "shards", tmp_path / "streamed.csv") == 1000
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "in_memory.csv").read_bytes()
    assert len(set(expected.tolist())) == 10


def test_all_rows_of_a_csv_read_whole_are_handed_on_uncopied(tmp_path, small_train, monkeypatch):
    """`digits eda` of a file read whole had cut it into pieces of STREAM_ROWS and joined them
    again, every image copied once more (22 MB for Kaggle's test.csv)."""
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, small_train.images[:200], small_train.labels[:200])
    read, read_kaggle_csv = [], shards.read_kaggle_csv

    def recorded(path):
        read.append(read_kaggle_csv(path))
        return read[-1]

    monkeypatch.setattr(shards, "read_kaggle_csv", recorded)
    monkeypatch.setattr(stream, "STREAM_ROWS", 64)  # four pieces, had it been cut
    data = stream.read_all_rows(csv_path)
    assert len(read) == 1 and np.shares_memory(data.images, read[0].images)
    np.testing.assert_array_equal(data.labels, small_train.labels[:200])


def test_rows_read_whole_go_on_in_pieces_as_streamed_rows_come(tmp_path, small_train, monkeypatch):
    """read_in_pieces and conform_rows had each cut rows held in memory into pieces of their own
    making; both take piece_slices'."""
    monkeypatch.setattr(stream, "STREAM_ROWS", 64)
    assert list(stream.piece_slices(200)) == [slice(0, 64), slice(64, 128), slice(128, 192),
                                              slice(192, 256)]  # fmt: skip
    assert not list(stream.piece_slices(0))
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, small_train.images[:200], small_train.labels[:200])
    n_rows, has_labels, pieces = stream.read_in_pieces(csv_path)
    pieces = list(pieces)
    assert (n_rows, has_labels, [len(piece) for piece in pieces]) == (200, True, [64, 64, 64, 8])
    np.testing.assert_array_equal(
        np.concatenate([p.labels for p in pieces]), small_train.labels[:200]
    )


def test_streamed_prediction_says_once_how_many_rows_it_redid(
    tmp_path: Path, tiny_run: Path, small_test: DigitSet, monkeypatch, caplog
) -> None:
    """One warning with the total, not one per piece read (nor per process under torchrun)."""
    from tests.test_images import frame_filling

    images = small_test.images[:300].copy()
    images[:120] = np.stack([frame_filling(image) for image in images[:120]])
    write_kaggle_csv(tmp_path / "test.csv", images)
    monkeypatch.setattr(stream, "STREAM_ROWS", 64)
    with caplog.at_level("WARNING"):
        predict_stream([tiny_run], tmp_path / "test.csv", tmp_path / "submission.csv")
    redone = [record.getMessage() for record in caplog.records if "redone" in record.getMessage()]
    assert len(redone) == 1 and "120 of 300 digits" in redone[0]
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(tmp_path / "test.csv"),
                                      "--nproc", "301"])  # fmt: skip
    assert result.exit_code == 1
    refusal = ("test.csv: 300 rows for 301 processes, each of which needs one at least; give "
               "--nproc 300 or fewer")  # fmt: skip
    assert refusal in " ".join(result.output.split())


def test_cli_shard_and_expand(tmp_path: Path, source) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "shard", str(source[0]), str(tmp_path / "s"), "--parts", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 shards of 1,003 rows in all" in result.output
    result = runner.invoke(
        app, ["data", "shard", str(source[0]), str(tmp_path / "1"), "--parts", "1"]
    )
    assert "wrote 1 shard of 1,003 rows in all" in result.output  # not "1 shards"
    args = [
        "data",
        "expand",
        str(tmp_path / "s"),
        str(tmp_path / "e"),
        "--copies",
        "2",
        "--parts",
        "3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "e").n_rows == 2 * 952 + 51  # 5 % held out, rounded up
    assert "the last of them holds 51 images out to validate" in " ".join(result.output.split())
    result = runner.invoke(
        app, ["data", "shard", str(tmp_path / "nope.csv"), str(tmp_path), "--parts", "2"]
    )
    assert result.exit_code == 1 and "nope.csv: file not found" in result.output


def test_streamed_pieces_keep_row_order_and_as_is_applies_to_them(
    tmp_path: Path, tiny_run: Path, small_test: DigitSet, monkeypatch, caplog
) -> None:
    """Read in several pieces, conformed or --as-is, the submission is predict_csv's row for
    row; a warning counts the redone rows among all rows, and MNIST's own rows get none."""
    from digit_recognizer.predict import PredictConfig
    from tests.test_images import frame_filling

    images = small_test.images[:200].copy()
    images[:80] = np.stack([frame_filling(image) for image in images[:80]])
    write_kaggle_csv(tmp_path / "test.csv", images)
    monkeypatch.setattr(stream, "STREAM_ROWS", 64)  # four pieces, the last one short
    submissions = []
    for config in (PredictConfig(), PredictConfig(conform=False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            predict_csv([tiny_run], tmp_path / "test.csv", tmp_path / "in_memory.csv", config)
        assert ("80 of 200 digits were not laid out" in caplog.text) == config.conform
        predict_stream([tiny_run], tmp_path / "test.csv", tmp_path / "streamed.csv", config)
        submissions.append((tmp_path / "streamed.csv").read_bytes())
        assert submissions[-1] == (tmp_path / "in_memory.csv").read_bytes()
    assert submissions[0] != submissions[1]  # the layout matters to this net: as-is was obeyed
    write_kaggle_csv(tmp_path / "mnist.csv", small_test.images[:200])
    caplog.clear()
    with caplog.at_level("WARNING"):
        predict_csv([tiny_run], tmp_path / "mnist.csv", tmp_path / "mnist_submission.csv")
    assert "not laid out" not in caplog.text


def test_compare_and_tune_read_faint_rows_with_full_ink(tmp_path: Path, small_train) -> None:
    """`digits compare` and `tune` read labelled data as training does: 0/1 rows as full ink,
    not as near-black digits (which Predictor also refuses)."""
    data = small_train
    write_kaggle_csv(tmp_path / "binarised.csv", (data.images > 128).astype(np.uint8), data.labels)
    read = read_labelled(tmp_path / "binarised.csv")
    np.testing.assert_array_equal(read.images, np.where(data.images > 128, 255, 0))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m | {"shards": []},
        lambda m: m | {"has_labels": "false"},
        lambda m: m | {"shards": [m["shards"][0] | {"n_rows": 0}, *m["shards"][1:]]},
        lambda m: m | {"shards": [m["shards"][0], *m["shards"]]},
        lambda m: m | {"shards": [m["shards"][0] | {"file": "../train.csv"}]},
        lambda m: m | {"shards": [m["shards"][0] | {"file": ".."}]},
        lambda m: m | {"shards": [m["shards"][0] | {"file": ""}]},
        lambda m: m | {"shards": [m["shards"][0] | {"file": "part-00000.csv\0"}]},
        lambda m: m | {"origin": "shard"},
        lambda m: m | {"origin": {"command": "expand", "valid_rows": "10"}},
        lambda m: m | {"origin": {"command": "expand", "valid_rows": -1}},
        lambda m: (
            m | {"shards": m["shards"][-1:], "origin": {"command": "expand", "valid_rows": 1}}
        ),
        lambda m: m | {"origin": {"command": "expand", "valid_rows": 1.5}},
        lambda m: m | {"origin": {"command": "expand", "valid_rows": 10**9}},
        lambda m: m | {"shards": [m["shards"][0] | {"class_counts": [200] + [0] * 8}]},
        lambda m: m | {"shards": [m["shards"][0] | {"class_counts": [201] + [0] * 9}]},
        lambda m: m | {"shards": [m["shards"][0] | {"class_counts": [201, -1] + [0] * 8}]},
    ],
    ids=[
        "no shards",
        "labels a string",
        "an empty shard",
        "a shard twice",
        "outside",
        "..",
        "",
        "a NUL byte",
        "origin a string",
        "valid_rows a string",
        "valid_rows negative",
        "valid_rows of the only shard",
        "valid_rows a fraction",
        "valid_rows past its last shard",
        "class_counts of 9 digits",
        "class_counts past its rows",
        "class_counts negative",
    ],
)
def test_a_tampered_manifest_is_refused_naming_it(shard_dir: Path, tmp_path: Path, tamper) -> None:
    """An empty list had raised IndexError, "false" read as true, an empty or repeated shard
    changed the rows silently, '../' led out of the directory, a NUL byte in a name raised
    ValueError from open(), and an origin that is no object, or that held out the only shard,
    raised AttributeError or IndexError from training."""
    copy = Path(shutil.copytree(shard_dir, tmp_path / "copy"))
    document = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(tamper(document)))
    with pytest.raises(DataError, match=r"manifest\.json: not a valid shard manifest"):
        read_manifest(copy)


def test_a_glob_matching_a_fifo_and_an_expansion_holding_out_all_are_refused(
    tmp_path: Path, source
) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copy(source[0], folder / "a.csv")
    os.mkfifo(folder / "b.csv")  # its scan had waited for a writer forever
    with pytest.raises(DataError, match=r"b\.csv: matches .* but is not a regular file"):
        resolve_data_source(f"{folder}/*.csv")
    # A manifest.json that is a pipe, in the source, the output or a glob's folder, hung too.
    (folder / "b.csv").unlink()
    os.mkfifo(folder / "manifest.json")
    feed_if_read(folder / "manifest.json", "{}")  # a regression fails, rather than hangs
    with pytest.raises(DataError, match=r"manifest\.json: not a regular file \(a pipe or a"):
        resolve_data_source(folder)
    feed_if_read(folder / "manifest.json", "{}")
    assert resolve_data_source(f"{folder}/*.csv").n_rows == 1003  # no expansion's shards
    feed_if_read(folder / "manifest.json", "{}")
    with pytest.raises(ConfigError, match=r"manifest\.json is not a shard manifest"):
        shard_csv(source[0], folder, parts=2)
    with pytest.raises(ConfigError, match="holds out all 1,003 rows"):
        expand(source[0], tmp_path / "e", copies=1, parts=1, valid_size=0.9996)
    # Named as `digits data expand` takes them, as the other commands name theirs: the messages
    # had said "valid_size" and "seed".
    with pytest.raises(ConfigError, match=r"^--seed must be from 0 to 2\*\*32 - 1"):
        expand(source[0], tmp_path / "e", copies=1, parts=1, seed=2**32)
    # Not a "parts must be from 1 to the number of rows (0)" of the copies' shards.
    with pytest.raises(ConfigError, match="copies must be >= 1, got 0"):
        expand(source[0], tmp_path / "e", copies=0, parts=1)
    with pytest.raises(ConfigError, match=r"^--valid-size must be in \[0, 1\), got 1"):
        expand(source[0], tmp_path / "e", copies=1, parts=1, valid_size=1.0)
    # The count says how it was reached: "the number of rows (1,904)" of a 1,003-row file.
    with pytest.raises(ConfigError) as refused:
        expand(source[0], tmp_path / "e", copies=2, parts=5000)
    assert str(refused.value) == (
        "--parts must be from 1 to the number of rows to shard (1,904: the 1,003 rows less the "
        "51 that --valid-size 0.05 holds out, times --copies 2), got 5000"
    )


# --- a hand mutation audit's survivors ----------------------------------------------------------


def test_as_many_parts_as_rows_shard_a_row_each(tmp_path: Path) -> None:
    data = numbered(3)
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, data.images, data.labels)
    manifest = shard_csv(path, tmp_path / "shards", parts=3)
    assert [shard.n_rows for shard in manifest.shards] == [1, 1, 1]
    assert row_ids(read_shards(manifest).images) == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"from 1 to the number of rows to shard \(3\), got 4"):
        shard_csv(path, tmp_path / "more", parts=4)
