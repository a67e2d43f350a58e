"""Property tests (hypothesis) for the CSV reader and the shard reader, and fuzz regressions.

A small oracle below states the format of ``data/kaggle_csv.py``'s docstring independently of
its code. Files come from the project's writer, then get one corruption (a cell replaced or
deleted, a column added, a line end changed, a BOM, a truncated last line, a NUL or other byte).
The reader must then agree with the oracle: the right values, or a ``DataError`` naming the
file, the line and (for a bad cell) the column. Any other exception fails the test; hypothesis'
``deadline`` fails one that hangs.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from digit_recognizer.cli import app
from digit_recognizer.data import shards
from digit_recognizer.data.images import load_image
from digit_recognizer.data.kaggle_csv import (
    LABELLED_COLUMNS,
    PIXEL_COLUMNS,
    DigitSet,
    read_kaggle_csv,
    write_kaggle_csv,
)
from digit_recognizer.data.shards import read_chunks, resolve_data_source
from digit_recognizer.errors import DataError

BOM = b"\xef\xbb\xbf"
PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=timedelta(seconds=5),  # a 3-row file reads in milliseconds; more is a hang
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run: a failure is reproducible
)


# --- the oracle: the documented format, written independently of the reader -----------------------


def expected_outcome(raw: bytes) -> tuple[str, object]:
    """``("ok", values uint8 (n_rows, n_columns))`` or ``("error", (line, column))``.

    line is None for a file-level problem (empty, no data rows), column None for a line-level
    one (header, blank line, column count).
    """
    raw = raw.removeprefix(BOM)
    if not raw:
        return "error", (None, None)
    lines = re.split(rb"\r\n|\r|\n", raw)
    if len(lines) > 1 and lines[-1] == b"":
        lines.pop()  # one final line ending is allowed
    headers = {",".join(columns).encode(): columns for columns in (LABELLED_COLUMNS, PIXEL_COLUMNS)}
    if lines[0] not in headers:
        return "error", (1, None)
    columns = headers[lines[0]]
    if len(lines) == 1:
        return "error", (None, None)
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        cells = line.split(b",")
        if not line or len(cells) != len(columns):
            return "error", (line_number, None)
        row = []
        for cell, column in zip(cells, columns, strict=True):
            highest = 9 if column == "label" else 255
            # ASCII digits with an optional minus: "-0" and "007" are 0 and 7; "+1", " 1" are not.
            if not re.fullmatch(rb"-?[0-9]+", cell) or not 0 <= int(cell) <= highest:
                return "error", (line_number, column)
            row.append(int(cell))
        rows.append(row)
    return "ok", np.array(rows, dtype=np.uint8)


def check_against_oracle(path: Path, raw: bytes) -> None:
    """Read ``path`` (holding ``raw``) and compare with ``expected_outcome``."""
    kind, expected = expected_outcome(raw)
    event(kind if kind == "ok" else f"error at line {expected[0]}, column {expected[1]}"[:40])
    if kind == "ok":
        digits = read_kaggle_csv(path)
        assert_values(digits, expected)
        return
    with pytest.raises(DataError) as error:
        read_kaggle_csv(path)
    message = str(error.value)
    line, column = expected
    if line is None:
        prefix = f"{path}: "
    elif column is None:
        prefix = f"{path}, line {line}: "
    else:
        prefix = f"{path}, line {line}, column {column}: "
    assert message.startswith(prefix), (message[:200], prefix)
    assert "\n" not in message  # the CLI prints it as one line


def assert_values(digits: DigitSet, values: np.ndarray) -> None:
    has_labels = values.shape[1] == len(LABELLED_COLUMNS)
    np.testing.assert_array_equal(digits.images, values[:, -784:].reshape(-1, 28, 28))
    if has_labels:
        np.testing.assert_array_equal(digits.labels, values[:, 0])
    else:
        assert digits.labels is None


# --- files and corruptions ------------------------------------------------------------------------


@st.composite
def digit_sets(draw: st.DrawFn) -> DigitSet:
    """1-3 rows of arbitrary pixels, labelled or not."""
    n_rows = draw(st.integers(1, 3))
    pixels = draw(st.binary(min_size=784 * n_rows, max_size=784 * n_rows))
    images = np.frombuffer(pixels, dtype=np.uint8).reshape(n_rows, 28, 28).copy()
    if not draw(st.booleans()):
        return DigitSet(images, None)
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=n_rows, max_size=n_rows)))
    return DigitSet(images, labels)


def write(path: Path, digits: DigitSet) -> bytes:
    write_kaggle_csv(path, digits.images, digits.labels)
    return path.read_bytes()


ODD_CELLS = [
    b"", b"abc", b"1.5", b" 1", b"1 ", b"+1", b"-1", b"-0", b"0x1f", b"1e3", b'"1"', b"\x00",
    b"1\x00", b"\xff", BOM + b"1", b"256", b"10", b"007", b"99999999999999999999", b"\t3",
    "\u0663".encode(), "\u200b".encode(), b"-", b"00000000000000000000000000000000000000000255",
]  # fmt: skip
cell_texts = st.one_of(
    st.sampled_from(ODD_CELLS),
    st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
    st.binary(max_size=6).filter(lambda b: not set(b) & set(b",\r\n")),
)


def cell_span(raw: bytes, line_index: int, cell_index: int) -> tuple[int, int]:
    """Byte offsets [start, end) of one cell of a writer's file ("\\n" line ends)."""
    start = sum(len(line) + 1 for line in raw.split(b"\n")[:line_index])
    line = raw[start:].split(b"\n", 1)[0]
    cells = line.split(b",")
    cell_start = start + sum(len(cell) + 1 for cell in cells[:cell_index])
    return cell_start, cell_start + len(cells[cell_index])


def corrupt(data: st.DataObject, raw: bytes, n_columns: int) -> bytes:
    """``raw`` (a writer's file) with one corruption drawn from ``data``."""
    n_lines = raw.count(b"\n")
    line_index = data.draw(st.integers(1, n_lines - 1) | st.just(0))  # data lines, or the header
    cell_index = data.draw(st.sampled_from([0, 1, n_columns - 1]) | st.integers(0, n_columns - 1))
    start, end = cell_span(raw, line_index, cell_index)
    kind = data.draw(st.sampled_from([
        "replace", "delete", "extra-column", "crlf", "line-end", "bom", "bom-inside",
        "truncate", "nul", "byte",
    ]))  # fmt: skip
    if kind == "replace":
        return raw[:start] + data.draw(cell_texts) + raw[end:]
    if kind == "delete":  # the cell and the comma before it (after it, for the first cell)
        return raw[: start - 1] + raw[end:] if cell_index else raw[:start] + raw[end + 1 :]
    if kind == "extra-column":
        return raw[:end] + b"," + data.draw(cell_texts) + raw[end:]
    if kind == "crlf":
        return raw.replace(b"\n", data.draw(st.sampled_from([b"\r\n", b"\r"])))
    if kind == "line-end":  # one line end changed, or a stray one put anywhere
        ending = data.draw(st.sampled_from([b"\r\n", b"\r", b"\n\r", b"\r\r\n", b"\n\n", b""]))
        if data.draw(st.booleans()):
            line_end = raw.index(b"\n", start)
            return raw[:line_end] + ending + raw[line_end + 1 :]
        position = data.draw(st.integers(0, len(raw)))
        return raw[:position] + ending + raw[position:]
    if kind == "bom":
        return BOM + raw
    if kind == "bom-inside":
        return raw[:start] + BOM + raw[start:]
    if kind == "truncate":  # cut anywhere in the last line, its line end included
        last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
        return raw[: data.draw(st.integers(last_start, len(raw)))]
    if kind == "nul":
        position = data.draw(st.integers(0, len(raw)))
        return raw[:position] + b"\x00" * data.draw(st.integers(1, 3)) + raw[position:]
    position = data.draw(st.integers(0, len(raw) - 1))
    return raw[:position] + bytes([data.draw(st.integers(0, 255))]) + raw[position + 1 :]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every example: each overwrites the files of the previous one."""
    return tmp_path_factory.mktemp("properties")


def corrupted(scratch: Path, digits: DigitSet, data: st.DataObject) -> Path:
    """``digits`` written to a file, then one corruption; returns the file."""
    path = scratch / "corrupt.csv"
    path.write_bytes(corrupt(data, write(path, digits), 785 if digits.has_labels else 784))
    return path


# --- properties -----------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(digits=digit_sets())
def test_written_files_round_trip(scratch: Path, digits: DigitSet) -> None:
    path = scratch / "train.csv"
    raw = write(path, digits)
    read = read_kaggle_csv(path)
    np.testing.assert_array_equal(read.images, digits.images)
    np.testing.assert_array_equal(read.labels, digits.labels)
    assert write(scratch / "again.csv", read) == raw


@PROPERTY_SETTINGS
@given(
    digits=digit_sets(),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    has_bom=st.booleans(),
    has_final_ending=st.booleans(),
    padding=st.sampled_from([b"", b"0", b"00", b"-"]),
)
def test_every_accepted_variant_round_trips_to_the_writers_bytes(
    scratch: Path, digits: DigitSet, ending: bytes, has_bom: bool, has_final_ending: bool,
    padding: bytes,
) -> None:  # fmt: skip
    """BOM, CRLF / CR, no final line end, leading zeros and "-0" are accepted: reading such a
    file and writing it again gives exactly the writer's bytes."""
    canonical = write(scratch / "canonical.csv", digits)
    header, body = canonical.split(b"\n", 1)
    body = body.replace(b",", b"," + padding) if padding != b"-" else body.replace(b",0", b",-0")
    variant = (BOM if has_bom else b"") + ending.join([header, *body.splitlines()])
    path = scratch / "variant.csv"
    path.write_bytes(variant + (ending if has_final_ending else b""))
    assert write(scratch / "rewritten.csv", read_kaggle_csv(path)) == canonical


@PROPERTY_SETTINGS
@given(digits=digit_sets(), data=st.data())
def test_one_corruption_is_read_right_or_named(
    scratch: Path, digits: DigitSet, data: st.DataObject
) -> None:
    path = corrupted(scratch, digits, data)
    check_against_oracle(path, path.read_bytes())


@PROPERTY_SETTINGS
@given(digits=digit_sets(), data=st.data(), chunk_bytes=st.integers(1, 4000))
def test_shard_reader_reads_what_the_csv_reader_reads(
    scratch: Path, digits: DigitSet, data: st.DataObject, chunk_bytes: int
) -> None:
    """Pieces of any size, cut after any line end: the same values, or the same ``DataError``
    with the same line numbers."""
    path = corrupted(scratch, digits, data)
    try:
        expected: object = read_kaggle_csv(path)
    except DataError as error:
        expected = str(error)
    with mock.patch.object(shards, "CHUNK_BYTES", chunk_bytes):
        try:
            manifest = resolve_data_source(path)
            pieces = list(read_chunks(manifest.shards[0], manifest.has_labels))
        except DataError as error:
            assert str(error) == expected
            return
    assert isinstance(expected, DigitSet), expected
    np.testing.assert_array_equal(np.concatenate([p.images for p in pieces]), expected.images)
    if expected.labels is not None:
        np.testing.assert_array_equal(np.concatenate([p.labels for p in pieces]), expected.labels)


# --- regressions found by fuzz/ (make fuzz) ------------------------------------------------------

# fuzz/image_preprocessing.py, 60 s: a TIFF whose StripOffsets tag holds text made Pillow 13 raise
# TypeError inside load_image (a 500 from the API, a traceback from `digits predict-image`).
TIFF_WITH_TEXT_STRIP_OFFSETS = (
    "SUkqAAgAAAAJAAABBAABAAAAHAAAAAEBBAABAAAAHAAAAAIBAwAAA4oACAAAAAMBgwABAAAAAQAAAAYBAwABAAAAAQAA"
    "ABEBAgABAAAAegAAABYBBAABAAAAHAAAABcBBAABAAAAEAMAABwBAwABAAAAAQAAAAAAAAD/////////////////////"
    "//////////////////////////////////////////////////////////////////////8AAAD/////////////////"
    "//////////////////////////////////////9ORP+uQg=="
)


def test_fuzzed_tiff_is_a_data_error(tmp_path: Path, tiny_run: Path) -> None:
    content = base64.b64decode(TIFF_WITH_TEXT_STRIP_OFFSETS)
    with pytest.raises(DataError, match=r"^upload.tif: cannot decode the image \("):
        load_image(content, "upload.tif")
    image = tmp_path / "digit.tif"
    image.write_bytes(content)
    result = CliRunner().invoke(app, ["predict-image", str(tiny_run), str(image)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert f"error: {image}: cannot decode the image" in result.output


def test_a_long_first_line_is_read_in_pieces(tmp_path: Path) -> None:
    """fuzz/csv_reader.py: with pieces much shorter than line 1, the header search was
    quadratic (each new piece rescanned the whole buffer); the result must not change."""
    path = tmp_path / "wide.csv"
    path.write_bytes(b"x" * 50_000 + b"\r\n1,2\n")
    with mock.patch.object(shards, "CHUNK_BYTES", 7), pytest.raises(DataError) as error:
        resolve_data_source(path)
    assert str(error.value).startswith(f"{path}, line 1: the header 'xxxx")
