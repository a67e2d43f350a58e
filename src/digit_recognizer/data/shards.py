"""Data bigger than memory: CSV shards with a manifest, augmented expansion, a streaming reader.

    digits data shard train.csv shards/ --parts 8               # 8 CSVs + manifest.json
    digits data expand train.csv big/ --copies 24 --parts 16    # 957,600 augmented rows + 2,100

A shard is a plain Kaggle CSV, header included, so every tool reads it; ``manifest.json`` lists
the shards in order with row counts, sizes and SHA-256. Files are read in pieces of about
``CHUNK_BYTES`` cut after a line end, each validated by the code of ``read_kaggle_csv``, so errors
name the shard, its own line and the column, and memory stays bounded whatever the data size.
Wherever a command takes a CSV it also takes a shard directory or a quoted glob of CSVs (but
``digits data check``, which checks one file):
``resolve_data_source`` turns any of them into a ``Manifest``; ``read_data_source`` loads one in
memory, ``stream.ShardStream`` streams it, and ``choose_loading`` picks between the two.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from digit_recognizer.data.augment import Augmentation, augment_batch
from digit_recognizer.data.images import at_full_ink, faint_to_full_ink
from digit_recognizer.data.kaggle_csv import (
    CHECKED_HEADERS,
    FIRST_LINE_END,
    LABELLED_COLUMNS,
    N_PIXELS,
    PIXEL_COLUMNS,
    SUBMISSION_COLUMNS,
    CsvSummary,
    DigitSet,
    check_kaggle_csv,
    count_classes,
    count_lines,
    is_csv_name,
    open_binary,
    open_sink,
    parse_body,
    read_kaggle_csv,
    refuse_row_count,
    split_header,
    to_table,
    write_table,
)
from digit_recognizer.data.splits import check_seed, stratified_split
from digit_recognizer.data.tensors import to_model_input, to_uint8_images
from digit_recognizer.errors import ConfigError, DataError, OutputError, counted
from digit_recognizer.fileio import (
    atomic_path,
    free_bytes,
    is_glob,
    locked_dir,
    remove_unlocked_dirs,
    sha256_file,
    write_text,
)

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SHARD_PATTERN = "part-*.csv"
# The names this module gives shards; only files so named are replaced or removed from an
# output directory (Spark's part-00000-c000.csv, a user's part-final.csv are left alone).
SHARD_NAME = re.compile(r"part-\d{5,}\.csv")  # 100,000 parts and more: six digits
BUILDING_PREFIX = ".building-"  # the hidden folder a build writes its shards in first
# The key of the manifest.json that stands while a build moves its shards in, one by one: a
# build stopped then leaves some old shards and some new, which no reader may take for a set.
REPLACING_KEY = "replacing_shards"
# 4 MiB pieces hold ~2,000 rows: large enough that pyarrow's per-call overhead vanishes, small
# enough that a DataLoader worker holds a few MB.
CHUNK_BYTES = 4 << 20
_HEADERS = (LABELLED_COLUMNS, PIXEL_COLUMNS)


@dataclass(frozen=True, eq=False)
class Shard:
    """One CSV of a data source: where it is, its data rows, its size and its SHA-256; equal to
    another of the same file, rows, size and SHA-256, whether listed or scanned."""

    path: Path
    n_rows: int
    n_bytes: int
    # None for a CSV counted by reading it (``is_scanned``): hashed when first asked (sha256),
    # as training's resume check asks; predict and evaluate never do, and 562 MB takes 4 s more.
    listed_sha256: str | None
    # Counted by reading it (a CSV or a glob's), not listed by a manifest.
    is_scanned: bool = False
    # Rows of each digit 0-9, as the build that wrote it counted them: None for unlabelled
    # rows, a scanned CSV and a manifest written before builds counted them.
    class_counts: tuple[int, ...] | None = None

    @cached_property
    def sha256(self) -> str:
        return self.listed_sha256 or sha256_file(self.path)

    # What it is, not how it was found: a scanned one is hashed only where the rest agrees.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shard):
            return NotImplemented
        return self._place() == other._place() and self.sha256 == other.sha256

    def __hash__(self) -> int:
        return hash(self._place())

    def _place(self) -> tuple[Path, int, int]:
        return self.path, self.n_rows, self.n_bytes


@dataclass(frozen=True)
class Manifest:
    """The CSVs of a data source in row order, all labelled or all unlabelled."""

    shards: tuple[Shard, ...]
    has_labels: bool
    origin: dict[str, Any] = field(default_factory=dict)  # what wrote it: command and arguments

    @property
    def n_rows(self) -> int:
        return sum(shard.n_rows for shard in self.shards)

    @property
    def class_counts(self) -> list[int] | None:
        """Rows of each digit 0-9 in all its shards, where the manifest lists every shard's:
        training warns of digits streamed rows lack before its first epoch reads them."""
        if any(shard.class_counts is None for shard in self.shards):
            return None
        return np.sum([shard.class_counts for shard in self.shards], axis=0).tolist()

    @property
    def is_expansion(self) -> bool:
        """Written by ``expand``: augmented copies of each image, off MNIST's layout."""
        return self.origin.get("command") == "expand"

    @property
    def repeats_images(self) -> bool:
        """Whether an image is in it more than once: an expansion of two copies or more (or of
        a number not known), which no split of its rows can hold apart."""
        return self.is_expansion and self.origin.get("copies") != 1

    @property
    def held_out_rows(self) -> int:
        """Images an expansion holds out, as they are, in its last shard (0: none, or not known)."""
        return self.origin.get("valid_rows", 0)


# --- sources: a CSV, a shard directory or a glob -----------------------------------------------


def class_counts_of(rows: DigitSet | Manifest) -> list[int] | None:
    """Rows of each digit 0-9 in ``rows``: counted where they are in memory, as the manifest
    lists them where they stream (None where it lists none: counted as they are read)."""
    return count_classes(rows.labels) if isinstance(rows, DigitSet) else rows.class_counts


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a shard directory (or the path of its ``manifest.json``)."""
    path = Path(path)
    file = path / MANIFEST_FILE if path.is_dir() else path
    if file.exists() and not file.is_file():  # a pipe: read, it is waited on for good
        raise DataError(f"{file}: not a regular file (a pipe or a folder), where a shard "
                        "directory has the manifest.json its build wrote; rebuild it")  # fmt: skip
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(entries, dict) and REPLACING_KEY in entries:
            raise _HalfReplacedError(_half_replaced(file.parent, entries[REPLACING_KEY]))
        shards = tuple(
            Shard(
                file.parent / e["file"],
                int(e["n_rows"]),
                int(e["n_bytes"]),
                str(e["sha256"]),
                class_counts=_listed_class_counts(e),
            )
            for e in entries["shards"]
        )
        names = [str(e["file"]) for e in entries["shards"]]
        # What data shard writes, and nothing a tampered file could lead elsewhere with.
        if not shards or min(shard.n_rows for shard in shards) < 1:
            raise ValueError("it must list shards of one row or more")
        # A NUL byte too: no file can be named with one, and opening it raises ValueError.
        is_plain = [Path(name).name == name and name not in ("", ".", "..") and "\0" not in name
                    for name in names]  # fmt: skip
        if len(set(names)) < len(names) or not all(is_plain):
            raise ValueError("its shards must be distinct files of its own directory")
        if not isinstance(entries["has_labels"], bool):
            raise ValueError(f"has_labels must be true or false, got {entries['has_labels']!r}")
        # Read as a dict by is_expansion and held_out_rows: a string there would raise
        # AttributeError from `digits train`.
        origin = entries.get("origin", {})
        if not isinstance(origin, dict):
            raise ValueError(f"origin must be an object, got {origin!r}")
        valid_rows = origin.get("valid_rows", 0)
        if type(valid_rows) is not int or not 0 <= valid_rows <= shards[-1].n_rows:
            raise ValueError(f"origin's valid_rows must be a row count of its last shard, got "
                             f"{valid_rows!r}")  # fmt: skip
        if valid_rows and len(shards) < 2:
            # Its last shard validates, and training takes the shards before it: with none,
            # `digits train` would end in an IndexError.
            raise ValueError(f"origin's valid_rows ({valid_rows}) holds out the only shard, "
                             "leaving none to train on")  # fmt: skip
        return Manifest(shards, entries["has_labels"], origin)
    except FileNotFoundError:
        raise DataError(
            f"{file}: not found; expected a shard directory written by `digits data shard` or "
            f"`digits data expand`, or give a quoted glob such as '{file.parent}/*.csv'"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{file}: not a valid shard manifest ({error!r}); rebuild it") from None


def _listed_class_counts(entry: dict[str, Any]) -> tuple[int, ...] | None:
    """A manifest entry's rows of each digit 0-9 (None where it lists none, as manifests
    written before builds counted them do)."""
    counts = entry.get("class_counts")
    if counts is None:
        return None
    if not (isinstance(counts, list) and len(counts) == 10
            and all(type(count) is int and count >= 0 for count in counts)
            and sum(counts) == int(entry["n_rows"])):  # fmt: skip
        raise ValueError(f"a shard's class_counts must be its rows of each digit 0-9, 10 "
                         f"counts summing to its n_rows, got {counts!r}")  # fmt: skip
    return tuple(counts)


class _HalfReplacedError(DataError):
    """``read_manifest`` of a directory a build was stopped in while moving its shards in
    (``REPLACING_KEY``): no set of shards, which the next build replaces."""


def _half_replaced(directory: Path, origin: Any) -> str:
    command = origin.get("command") if isinstance(origin, dict) else None
    build = f"`digits data {command}`" if command in ("shard", "expand") else "a build"
    return (f"{directory}: {build} was stopped while moving its shards in, and left some old, "
            "some new; run it again")  # fmt: skip


def is_data_source(path: str | Path) -> bool:
    """Whether ``path`` names rows of digits (a CSV, a shard directory, its manifest, a glob)
    rather than one image file."""
    path = Path(path)
    # A glob only where no file has that name: `scan [1].png` is a photo, not a pattern of CSVs.
    # By name, not suffix: '.csv' has none, and 'x.csv.gz' is refused as gzip, as predict does.
    return is_csv_name(path) or path.suffix.lower() == ".json" or path.is_dir() or is_glob(path)


def resolve_data_source(source: str | Path) -> Manifest:
    """A ``Manifest`` for a CSV file, a shard directory, or a glob of CSVs (in natural order:
    test_2.csv before test_10.csv, whose rows' ImageIds follow from it).

    A CSV or glob has no manifest, so its files are scanned once (header, line count, SHA-256);
    a shard directory's ``manifest.json`` is trusted, and row counts are checked while reading.
    """
    path = Path(source)
    if path.is_dir() or path.name == MANIFEST_FILE:
        return read_manifest(path)
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: not a regular file (a pipe?), and its rows are read more than "
                        "once here; save them to a file first")  # fmt: skip
    if not is_glob(source):
        files = [path]
    else:
        files = sorted((Path(match) for match in glob.glob(str(source))), key=_natural_order)
        if not files:
            raise DataError(f"{source}: no file matches this pattern")
        for file in files:  # a FIFO among them would hang the scan
            if not file.is_file():
                raise DataError(f"{file}: matches {source} but is not a regular file; give a "
                                "pattern that matches CSV files only")  # fmt: skip
    shards, labelled = zip(*(_describe_csv(file) for file in files), strict=True)
    for shard, has_labels in zip(shards, labelled, strict=True):
        if has_labels != labelled[0]:
            raise DataError(_mixed_labels(shard.path, labelled[0]))
    return Manifest(tuple(shards), labelled[0], _expansion_of(files))


def _expansion_of(files: list[Path]) -> dict[str, Any]:
    """An expansion's origin where ``files`` are some of its shards, read by name or glob
    rather than through its manifest: their rows are copies all the same, and which of them
    holds the images held out is not known (``valid_rows`` 0), so none is split to validate."""
    for directory in {file.parent for file in files}:
        try:
            manifest = read_manifest(directory / MANIFEST_FILE)
        except _HalfReplacedError:
            # A glob of its shards would mix two builds; a CSV of the user's beside them
            # (a large one: predict streams it) is read as it is.
            if any(file.parent == directory and SHARD_NAME.fullmatch(file.name) for file in files):
                raise
            continue
        except DataError:  # none there, or not ours
            continue
        names = {shard.path.name for shard in manifest.shards}
        listed = [file for file in files if file.parent == directory and file.name in names]
        if manifest.is_expansion and listed:
            return {"command": "expand", "source": str(directory), "valid_rows": 0,
                    "copies": manifest.origin.get("copies")}  # fmt: skip
    return {}


def is_one_file(source: str | Path) -> bool:
    """Whether ``source`` is one file to read whole, a CSV or a pipe (read once), rather than a
    shard directory, its manifest or a glob."""
    path = Path(source)
    return path.exists() and not path.is_dir() and path.name != MANIFEST_FILE


def is_read_once(source: str | Path) -> bool:
    """Whether ``source`` is one file that is no regular file (a pipe, ``<(...)``): its rows
    can be read only once, so a command that reads a file twice holds them instead."""
    return is_one_file(source) and not Path(source).is_file()


# A CSV larger than this streams, as shards do. Read whole, a 562 MB file of 308,000 rows
# takes 2.6 GB more memory than a small one (3.0 GB in all), streamed 0.1 GB; reading it in
# pieces costs one more pass over the file (SHA-256, line count): 0.2 s for Kaggle's test.csv.
STREAM_FILE_BYTES = 64 << 20


def is_read_whole(source: str | Path) -> bool:
    """Whether the commands that can stream (`digits predict` in one process, `evaluate`, `run`'s
    prediction, `eda`, `data check`) read ``source`` whole: a CSV of up to STREAM_FILE_BYTES, or
    a pipe, which can be read only once. Shards, globs and larger CSVs stream."""
    path = Path(source)
    return is_one_file(path) and not (path.is_file() and path.stat().st_size > STREAM_FILE_BYTES)


def read_data_source(source: str | Path) -> DigitSet:
    """All rows of a CSV, shard directory or glob in memory; each file via ``read_kaggle_csv``."""
    if is_one_file(source):
        return read_kaggle_csv(Path(source))
    return read_shards(resolve_data_source(source))


def count_rows(source: str | Path) -> int:
    """The rows of a CSV, shard directory or glob, each validated as ``read_data_source`` reads
    it, a piece at a time: a file that predict would refuse is refused, not miscounted."""
    return sum(len(piece) for piece in _iter_rows(resolve_data_source(source)))


def check_kaggle_source(source: str | Path, expected_rows: int | None = None) -> CsvSummary:
    """``check_kaggle_csv`` of a CSV; of a shard directory or a glob, every shard's rows as
    ``read_data_source`` reads them, and each of a directory's shards against the SHA-256 its
    manifest lists (a shard edited, its row count kept, would train unnoticed). A CSV of digits
    larger than STREAM_FILE_BYTES is checked a piece at a time too, as one shard, with
    ``check_kaggle_csv``'s messages; a submission is read whole."""
    if is_read_whole(source):
        return check_kaggle_csv(source, expected_rows)
    if is_one_file(source):
        columns = _first_line(Path(source))
        if columns == SUBMISSION_COLUMNS:  # its ImageIds are checked against each other
            return check_kaggle_csv(source, expected_rows)
        refuse_row_count(columns, Path(source), expected_rows)
    manifest = resolve_data_source(source)
    if expected_rows is not None:
        raise DataError(f"{source}: rows of digits in {counted(len(manifest.shards), 'file')}, "
                        "not a submission; only a submission's rows are counted against a test "
                        "file")  # fmt: skip
    counts = np.zeros(10, np.int64)
    for shard in manifest.shards:
        # Hashed as its rows are read, in one pass: a scanned CSV has no hash to compare.
        digest = None if shard.is_scanned else hashlib.sha256()
        for piece in read_chunks(shard, manifest.has_labels, digest=digest):
            if piece.labels is not None:
                counts += count_classes(piece.labels)
        if digest is not None and digest.hexdigest() != shard.sha256:
            raise DataError(f"{shard.path}: its SHA-256 is not the one the manifest lists; "
                            "it changed after the manifest was written: rebuild the "
                            "shards")  # fmt: skip
    class_counts = dict(enumerate(counts.tolist())) if manifest.has_labels else None
    return CsvSummary(Path(source), manifest.n_rows, manifest.has_labels, class_counts)


def require_labels(has_labels: bool, source: str | Path, elsewhere: str = "") -> None:
    """``DataError`` unless ``source`` has a label column (training, evaluation, reports);
    ``elsewhere`` names where a command can take the labels of unlabelled rows instead."""
    if not has_labels:
        raise DataError(f"{source}: has no label column; this needs labelled rows, as Kaggle's "
                        f"train.csv has them (label,pixel0,...){elsewhere}")  # fmt: skip


def read_labelled(path: Path, to_split: bool = False) -> DigitSet:
    """A labelled CSV, shard directory or glob, in memory, faint rows' ink scaled as every
    command reads it (``faint_to_full_ink``); ``to_split``: refused if it is an expansion
    whose images are in it several times, which no split can hold apart (``refuse_split``)."""
    manifest = resolve_data_source(path)
    require_labels(manifest.has_labels, path)
    if to_split:
        refuse_split(manifest, path, "give the CSV it was expanded from")
    data = read_shards(manifest)
    return at_full_ink(data)


def refuse_split(manifest: Manifest, source: Path, remedy: str) -> None:
    """``DataError`` for an expansion (``digits data expand``) whose images are in it several
    times, so a split of its rows validates on copies of training images."""
    if manifest.repeats_images:
        raise DataError(
            f"{source}: every image is in it several times (`digits data expand`), so a split "
            f"of its rows validates on copies of training images; {remedy}"
        )


def read_shards(manifest: Manifest) -> DigitSet:
    """All rows of ``manifest``'s files in memory, each checked against its entry."""
    parts = []
    for shard in manifest.shards:
        part = read_kaggle_csv(shard.path)
        if part.has_labels != manifest.has_labels:
            raise DataError(_mixed_labels(shard.path, manifest.has_labels))
        if len(part) != shard.n_rows:
            raise DataError(_changed(shard, len(part)))
        parts.append(part)
    return concat_rows(parts)


def estimate_memory_bytes(manifest: Manifest) -> int:
    """Peak bytes of reading ``manifest`` in memory.

    ``read_kaggle_csv`` holds a file's text twice at its peak and pyarrow's int64 columns of it
    (8 bytes a pixel of the largest file); the images are a byte a pixel, and joining shards
    copies them once more. Measured growth of a process's memory reading Kaggle's train.csv:
    350-473 MB (this estimate 483 MB), test.csv 295 MB (322 MB); an estimate of 3 bytes a
    pixel would give 176 and 117 MB. One file to be split for validation is read in memory anyway
    (pipeline.training_data): streaming validates on a last shard.
    """
    largest = max(manifest.shards, key=lambda shard: shard.n_bytes)
    return 2 * largest.n_bytes + 8 * largest.n_rows * N_PIXELS + 2 * manifest.n_rows * N_PIXELS


def choose_loading(manifest: Manifest, max_memory_bytes: float) -> Literal["memory", "stream"]:
    """``memory`` (the default: all images on the device) if it fits the budget, else ``stream``."""
    needed = estimate_memory_bytes(manifest)
    choice: Literal["memory", "stream"] = "memory" if needed <= max_memory_bytes else "stream"
    log.info(
        "data: %s rows in %d file(s) need ~%.2f GB in memory, budget %.2f GB: %s",
        f"{manifest.n_rows:,}", len(manifest.shards), needed / 1e9, max_memory_bytes / 1e9,
        "loading in memory" if choice == "memory" else "streaming from the files",
    )  # fmt: skip
    return choice


def _natural_order(path: Path) -> tuple[list[str | int], str]:
    """Sort key comparing runs of digits in a path as numbers: part-2 before part-10; the path
    itself decides between equal numbers (t_1 and t_01), not the directory's listing order."""
    # re.split with a group alternates text and digits, so equal positions hold equal types.
    runs = re.split(r"(\d+)", str(path))
    return [int(run) if index % 2 else run for index, run in enumerate(runs)], str(path)


def _first_line(path: Path) -> tuple[str, ...]:
    """The header of a CSV ``check_kaggle_csv`` would take, checked as it checks it, read alone."""
    with contextlib.closing(_line_pieces(path, CHECKED_HEADERS)) as pieces:
        return next(pieces)[0]


def _describe_csv(path: Path) -> tuple[Shard, bool]:
    """Scan a CSV: its ``Shard`` entry (its SHA-256 read when asked) and whether it is labelled
    (the header is validated)."""
    n_rows, has_labels = 0, False
    for columns, _, piece in _line_pieces(path):
        n_rows += count_lines(piece)
        has_labels = columns == LABELLED_COLUMNS
    return Shard(path, n_rows, path.stat().st_size, None, is_scanned=True), has_labels


def _mixed_labels(path: Path, has_labels: bool) -> str:
    expected, found = ("labelled", "unlabelled") if has_labels else ("unlabelled", "labelled")
    return f"{path}, line 1: the header is {found} but the other files are {expected}"


def _changed(shard: Shard, n_found: int) -> str:
    found = "more" if n_found > shard.n_rows else f"{n_found:,}"
    if shard.is_scanned:  # no manifest to rebuild: a file still being written or copied
        return (f"{shard.path}: had {shard.n_rows:,} rows when first read, {found} when read "
                "again: it changed meanwhile; give it once it is complete")  # fmt: skip
    return (f"{shard.path}: the manifest says {shard.n_rows:,} rows, the file has {found}; it "
            "changed after the manifest was written: rebuild the shards")  # fmt: skip


# --- reading in pieces --------------------------------------------------------------------------


def read_chunks(
    shard: Shard,
    has_labels: bool,
    start: int = 0,
    stop: int | None = None,
    digest: hashlib._Hash | None = None,
) -> Iterator[DigitSet]:
    """Rows ``start`` to ``stop`` (0-based, default: to the end) of a shard, in validated pieces.

    Pieces before ``start`` are only counted, not parsed. Errors name the shard file, its own
    1-based line (header = line 1) and the column; a row count other than the manifest's too.
    ``digest`` is updated with every byte read: a read to the end hashes the whole file.
    """
    stop = shard.n_rows if stop is None else stop
    row = 0
    for columns, first_line, piece in _line_pieces(shard.path, digest=digest):
        if (columns == LABELLED_COLUMNS) != has_labels:
            raise DataError(_mixed_labels(shard.path, has_labels))
        n_lines = count_lines(piece)
        if row + n_lines > shard.n_rows:
            raise DataError(_changed(shard, row + n_lines))
        if row + n_lines > start and row < stop:
            data = parse_body(piece, columns, shard.path, first_line)
            assert len(data) == n_lines, "pyarrow and count_lines disagree on line ends"
            yield data.take(slice(max(start - row, 0), min(stop - row, n_lines)))
        row += n_lines
        if stop <= row < shard.n_rows:
            return  # a reader that ends at the shard's end reads on, to catch extra rows
    if row != shard.n_rows:
        raise DataError(_changed(shard, row))


def read_rows(
    manifest: Manifest, start: int, stop: int, order: Iterable[int] | None = None
) -> Iterator[DigitSet]:
    """Rows ``start`` to ``stop`` (0-based) of ``manifest``'s shards taken in ``order`` (their
    indices; default the manifest's), in validated pieces (``read_chunks``): shards and pieces
    before ``start`` are only counted, and reading stops at ``stop``, so memory holds a piece."""
    offset = 0
    for index in range(len(manifest.shards)) if order is None else order:
        shard = manifest.shards[index]
        first, last = max(start - offset, 0), min(stop - offset, shard.n_rows)
        if first < last:
            yield from read_chunks(shard, manifest.has_labels, first, last)
        offset += shard.n_rows


def _line_pieces(
    path: Path,
    headers: tuple[tuple[str, ...], ...] = _HEADERS,
    digest: hashlib._Hash | None = None,
) -> Iterator[tuple[tuple[str, ...], int, bytes]]:
    """(header columns, one of ``headers``; number of the piece's first line, piece) for the
    body of a CSV, with ``digest`` (if given) updated with each block read.

    Each piece but the last ends with a line end; a ``\\r`` is never cut from a following ``\\n``.
    """
    with open_binary(path) as file:

        def read_block() -> bytes:
            block = file.read(CHUNK_BYTES)
            if digest is not None:
                digest.update(block)
            return block

        buffer = read_block()
        # The header check needs line 1 whole and a byte after it (a "\r" may precede a "\n").
        # Each pass searches from the last candidate on, not from the start: a line 1 of many
        # blocks costs linear time, not quadratic (found by fuzz/csv_reader.py).
        searched = 0
        while not ((end := FIRST_LINE_END.search(buffer, searched)) and end.end() < len(buffer)):
            block = read_block()
            if not block:
                break
            searched = end.start() if end else max(len(buffer) - 1, 0)
            buffer += block
        columns, body = split_header(buffer, path, headers)
        first_line = 2
        blocks = itertools.chain([body], iter(read_block, b""))
        for piece in _cut_after_line_ends(blocks):
            yield columns, first_line, piece
            first_line += count_lines(piece)


def _cut_after_line_ends(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes of ``blocks`` re-cut after the last line end of each block; a ``\\r`` is never
    cut from a following ``\\n``. Linear time: each block is searched once, and bytes held
    across blocks (a line longer than a block) are joined once.
    """
    held: list[bytes] = []  # no line end in here, except perhaps a final "\r"
    for block in blocks:
        cut = max(block.rfind(b"\n"), block.rfind(b"\r", 0, len(block) - 1)) + 1
        if cut:
            yield b"".join([*held, block[:cut]])
            held = [block[cut:]]
        elif held and held[-1].endswith(b"\r"):  # that "\r" ended a line: no "\n" follows
            yield b"".join(held)
            held = [block]
        else:
            held.append(block)
    if any(held):
        yield b"".join(held)


def concat_rows(parts: list[DigitSet]) -> DigitSet:
    """One ``DigitSet`` of all rows of ``parts``, in order."""
    if len(parts) == 1:
        return parts[0]
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    return DigitSet(np.concatenate([p.images for p in parts]), labels)


def _iter_rows(manifest: Manifest) -> Iterator[DigitSet]:
    for shard in manifest.shards:
        yield from read_chunks(shard, manifest.has_labels)


# --- writing shards -----------------------------------------------------------------------------


def shard_csv(source: str | Path, out_dir: str | Path, parts: int) -> Manifest:
    """Split a CSV (or shard directory, or glob) into ``parts`` CSV shards plus ``manifest.json``.

    Shard i holds rows ``i * n // parts`` up to ``(i + 1) * n // parts`` in the source's order,
    so concatenating the shards' data rows gives back the source's. Streams: memory is a few
    pieces of ``CHUNK_BYTES``, whatever the size of the source.
    """
    manifest = resolve_data_source(source)
    _refuse_expansion(manifest, source, "shard", f"{_lost_in_reshard(manifest)}; expand the "
                      "CSV again with the --parts you want")  # fmt: skip
    _check_parts(parts, manifest.n_rows)
    _check_room(out_dir, manifest, manifest.n_rows, parts, "its shards", "free some space there")
    origin = {"command": "shard", "source": str(source)}
    return _write_shards(_iter_rows(manifest), manifest, manifest.n_rows, out_dir, parts, origin)


def expand(
    train_csv: str | Path,
    out_dir: str | Path,
    copies: int,
    parts: int,
    seed: int = 0,
    valid_size: float = 0.05,
) -> Manifest:
    """Write ``copies`` augmented copies of every image of ``train_csv`` as ``parts`` shards,
    after holding out ``valid_size`` of its images, as they are, in one more shard at the end.

    Training's own ``augment_batch`` with the default ``Augmentation``. Copy-major order (the
    whole set once per copy, the source read again each time) so that any stretch of rows holds
    distinct images, which keeps a bounded shuffle buffer effective. Every image is in the
    training shards ``copies`` times, so no split of them can validate honestly: the held-out
    shard does (``origin["valid_rows"]``, which training reads). Same seed, same bytes.
    """
    if copies < 1:
        raise ConfigError(f"--copies must be >= 1, got {copies}")
    if not 0 <= valid_size < 1:
        raise ConfigError(f"--valid-size must be in [0, 1), got {valid_size}")
    check_seed(seed, "--seed")
    manifest = resolve_data_source(train_csv)
    _refuse_expansion(manifest, train_csv, "expand", "copies of its copies would train and "
                      "copies would be held out; expand the CSV it came from with more "
                      "--copies")  # fmt: skip
    # As many as scikit-learn's split holds out (rounded up).
    n_valid = math.ceil(manifest.n_rows * valid_size) if manifest.has_labels else 0
    if n_valid >= manifest.n_rows:
        raise ConfigError(f"valid_size {valid_size} holds out all {manifest.n_rows:,} rows and "
                          "leaves none to copy; give a smaller one")  # fmt: skip
    n_train = (manifest.n_rows - n_valid) * copies
    # Counted as it is: "the number of rows (950)" of a 1,000-row file leaves 50 unexplained.
    less = f" less the {n_valid:,} that --valid-size {valid_size:g} holds out" if n_valid else ""
    _check_parts(parts, n_train, f"the {manifest.n_rows:,} rows{less}, times --copies {copies}")
    # Before a row is written, else --copies 99999999999 writes until stopped.
    _check_room(out_dir, manifest, n_train + n_valid, parts + bool(n_valid), f"--copies {copies}",
                "give fewer --copies")  # fmt: skip
    held_out = np.zeros(manifest.n_rows, dtype=bool)
    if n_valid:  # by class, as training's own validation split is: each keeps its share
        labels = np.concatenate([data.labels for data in _iter_rows(manifest)])
        held_out[stratified_split(labels, valid_size, seed)[1]] = True
    origin = {"command": "expand", "source": str(train_csv), "copies": copies, "seed": seed,
              "valid_rows": n_valid}  # fmt: skip
    rows = itertools.chain(
        _augmented(manifest, ~held_out, copies, torch.Generator().manual_seed(seed)),
        _selected(manifest, held_out),
    )
    return _write_shards(rows, manifest, n_train, out_dir, parts, origin, n_valid)


def _check_room(
    out_dir: str | Path, source: Manifest, n_rows: int, n_files: int, asked: str, fix: str
) -> None:
    """``OutputError`` where ``n_rows`` rows of ``source`` in ``n_files`` shards would not fit
    the free space of ``out_dir``'s file system, ``asked`` saying what made them so many and
    ``fix`` what else than another disk would do.
    Each row is reckoned at the mean size of the source's: augmented copies of MNIST's digits
    come out 4 % larger (their ink spread): for digits the estimate errs short, and an
    expansion that fits is not refused."""
    header_bytes = len(",".join(LABELLED_COLUMNS if source.has_labels else PIXEL_COLUMNS)) + 1
    source_bytes = sum(shard.n_bytes for shard in source.shards)
    row_bytes = (source_bytes - len(source.shards) * header_bytes) / source.n_rows
    needed = n_rows * row_bytes + n_files * header_bytes
    try:
        free = free_bytes(out_dir)
    except OSError:  # no statvfs there: a full disk is still named as the shards are written
        return
    if needed > free:
        raise OutputError(f"{out_dir}: {asked} would write about {_shown_size(needed)} ({n_rows:,} "
                          f"rows), and its file system has {_shown_size(free)} free; {fix}, "
                          "or give a folder on another disk")  # fmt: skip


def _shown_size(n_bytes: float) -> str:
    """``n_bytes`` in MB or GB, a decimal below 100: 5.6 MB, 79.8 GB, 518,233,930 GB."""
    amount, unit = (n_bytes / 1e6, "MB") if n_bytes < 1e9 else (n_bytes / 1e9, "GB")
    return f"{amount:,.{1 if amount < 100 else 0}f} {unit}"


def _check_parts(parts: int, n_rows: int, counted_from: str = "") -> None:
    """``ConfigError`` unless there are from 1 to ``n_rows`` shards, ``counted_from`` saying how
    ``n_rows`` was reached where it is not the source's own count."""
    if not 1 <= parts <= n_rows:
        how = f": {counted_from}" if counted_from else ""
        raise ConfigError(f"--parts must be from 1 to the number of rows to shard ({n_rows:,}"
                          f"{how}), got {parts}")  # fmt: skip


def _refuse_expansion(manifest: Manifest, source: str | Path, command: str, why: str) -> None:
    if manifest.is_expansion:
        raise ConfigError(f"{source}: an expansion (`digits data expand`) cannot be given to "
                          f"`digits data {command}`: {why}")  # fmt: skip


def _lost_in_reshard(manifest: Manifest) -> str:
    """What new shards of an expansion would no longer say, each only where it is so: of one
    that holds nothing out, or each image once (``--copies 1``), one fixed reason (the held-out
    images mixing with copies) would be untrue."""
    lost = ["that its rows are augmented copies already"]
    if manifest.repeats_images:
        lost.append("that each image is in it several times (a split would validate on copies)")
    if manifest.held_out_rows:
        lost.append(f"which {manifest.held_out_rows:,} images it held out to validate")
    return "new shards would not record " + ", nor ".join(lost)


def _selected(manifest: Manifest, mask: np.ndarray) -> Iterator[DigitSet]:
    """The rows of ``manifest`` where ``mask`` is true, in order."""
    start = 0
    for data in _iter_rows(manifest):
        keep = mask[start : start + len(data)]
        start += len(data)
        if keep.any():
            yield data.take(keep)


def _augmented(
    manifest: Manifest, mask: np.ndarray, copies: int, generator: torch.Generator
) -> Iterator[DigitSet]:
    augmentation = Augmentation()
    for _ in range(copies):
        for data in _selected(manifest, mask):
            # Full ink first, as training has it before it augments (faint_to_full_ink): copies
            # of 0/1 rows turned and rounded back to 0/1 would lose their edges, some all their ink.
            images, _ = faint_to_full_ink(data.images)
            x = to_model_input(torch.as_tensor(images))
            labels = None if data.labels is None else torch.as_tensor(data.labels)
            x = augment_batch(x, augmentation, generator, labels)
            yield DigitSet(to_uint8_images(x), data.labels)


def _write_shards(
    rows: Iterable[DigitSet],
    source: Manifest,
    n_rows: int,
    out_dir: str | Path,
    parts: int,
    origin: dict[str, Any],
    last_rows: int = 0,
) -> Manifest:
    """Write ``rows`` (read from ``source``) as ``parts`` balanced shards of their first
    ``n_rows``, then (if any) one more of the ``last_rows`` after them, then the manifest."""
    out_dir = Path(out_dir)
    _check_shard_dir(out_dir, source)
    bounds = [part * n_rows // parts for part in range(parts + 1)]
    if last_rows:
        bounds.append(n_rows + last_rows)
    # Locked while built, else a second build into it at once moves its shards in among this
    # one's, under this one's manifest. A first build stopped (Ctrl-C too) leaves no empty
    # folder behind: locked_dir removes the folders it made, left holding its lock alone.
    with locked_dir(out_dir, elsewhere="another folder"):
        shards = _build_and_move_in(rows, bounds, out_dir, origin, source.has_labels)
        entries = [
            {"file": s.path.name, "n_rows": s.n_rows, "n_bytes": s.n_bytes, "sha256": s.sha256}
            | ({} if s.class_counts is None else {"class_counts": list(s.class_counts)})
            for s in shards
        ]
        document = {"has_labels": source.has_labels, "n_rows": bounds[-1], "origin": origin,
                    "shards": entries}  # fmt: skip
        write_text(out_dir / MANIFEST_FILE, json.dumps(document, indent=2) + "\n")
    return Manifest(tuple(shards), source.has_labels, origin)


def _build_and_move_in(
    rows: Iterable[DigitSet],
    bounds: list[int],
    out_dir: Path,
    origin: dict[str, Any],
    has_labels: bool,
) -> list[Shard]:
    """Write ``rows`` as shards cut at ``bounds`` in a hidden folder of ``out_dir``, then move
    them into it, in place of an earlier build's, and leave the manifest to the caller (which
    records ``has_labels``, the source's; labelled shards list their class counts)."""
    # Built in a hidden folder of out_dir (on its filesystem, whatever links lead there) and
    # moved into place once whole: a source found malformed half-way (its error names the line)
    # leaves an earlier build in out_dir as it was. Locked meanwhile: what a build killed
    # outright left (gigabytes of shards, perhaps) the next one removes.
    remove_unlocked_dirs(out_dir.glob(f"{BUILDING_PREFIX}*"))
    pieces_by_part = itertools.groupby(_split_at(rows, bounds), key=lambda pair: pair[0])
    try:
        with tempfile.TemporaryDirectory(prefix=BUILDING_PREFIX, dir=out_dir) as scratch, \
                locked_dir(scratch) as building:  # fmt: skip
            shards = []
            for part, pieces in pieces_by_part:
                path = building / f"part-{part:05d}.csv"
                class_counts = np.zeros(10, dtype=np.int64)
                with atomic_path(path) as tmp, open_sink(tmp) as sink:
                    for number, (_, piece) in enumerate(pieces):
                        write_table(sink, to_table(piece.images, piece.labels), number == 0)
                        if has_labels:
                            class_counts += count_classes(piece.labels)
                # Listed in the manifest, for training to warn of digits streamed rows lack.
                listed_counts = tuple(class_counts.tolist()) if has_labels else None
                shards.append(Shard(out_dir / path.name, bounds[part + 1] - bounds[part],
                                    path.stat().st_size, sha256_file(path),
                                    class_counts=listed_counts))  # fmt: skip
            # The manifest goes first and comes back last: a directory caught in between has
            # one that readers of the directory, or of a glob of its files, refuse until a
            # build ends.
            write_text(out_dir / MANIFEST_FILE, json.dumps({REPLACING_KEY: origin}) + "\n")
            # Shards of an earlier build with more parts would join a glob of this one.
            for stale in out_dir.glob(SHARD_PATTERN):
                if SHARD_NAME.fullmatch(stale.name):
                    stale.unlink()
            for shard in shards:
                os.replace(building / shard.path.name, shard.path)
                log.info("wrote %s (%s)", shard.path, counted(shard.n_rows, "row"))
    except OutputError as error:  # a full disk: named as in out_dir, which the user gave
        raise OutputError(str(error).replace(scratch, str(out_dir))) from None
    return shards


def _check_shard_dir(out_dir: Path, source: Manifest) -> None:
    """``ConfigError`` where writing shards to ``out_dir`` would lose a file: one of the source's
    own shards, or a manifest that is not a shard manifest."""
    # The shards are written while the source is still being read: a source shard in out_dir
    # could be replaced before its rows are read, or removed as a stale one.
    clashing = [
        shard.path
        for shard in source.shards
        if SHARD_NAME.fullmatch(shard.path.name)
        and shard.path.parent.resolve() == out_dir.resolve()
    ]
    if clashing:
        raise ConfigError(
            f"{clashing[0]} is read and would be overwritten: write the shards to another "
            "directory than their source"
        )
    # An earlier build's manifest is replaced (a stopped one's too), another's is not.
    if (out_dir / MANIFEST_FILE).exists():
        try:
            read_manifest(out_dir)
        except _HalfReplacedError:
            pass
        except DataError:
            raise ConfigError(
                f"{out_dir / MANIFEST_FILE} is not a shard manifest and would be "
                "replaced: write the shards to another directory"
            ) from None


def _split_at(rows: Iterable[DigitSet], bounds: list[int]) -> Iterator[tuple[int, DigitSet]]:
    """(part, piece) with each piece of ``rows`` cut where a part ends (part i: bounds[i:i+2])."""
    part, row = 0, 0
    for data in rows:
        start = 0
        while start < len(data):
            while row >= bounds[part + 1]:
                part += 1
            stop = min(len(data), start + bounds[part + 1] - row)
            yield part, data.take(slice(start, stop))
            row += stop - start
            start = stop
    assert row == bounds[-1], f"wrote {row} rows, expected {bounds[-1]}"
