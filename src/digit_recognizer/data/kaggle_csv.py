"""Kaggle Digit Recognizer CSV files: the one strict reader and writer every command uses.

Formats: ``train.csv`` (``label,pixel0,...,pixel783``), ``test.csv`` (``pixel0,...,pixel783``),
``submission.csv`` / ``solution.csv`` (``ImageId,Label``, ImageId from 1).

Reading is fast and strict at once. pyarrow parses the file on all cores; if it declines (any
anomaly: a bad cell, a wrong column count, a blank line) or a label is out of range, a slow
pure-Python reference parser re-reads the file, finds the first problem and raises ``DataError``
naming file, line (header = line 1) and column. The reference parser defines the format; the fast
path accepts nothing it rejects, so both always agree (a test fuzzes this).

Accepted: a UTF-8 byte-order mark at the start; ``\\n``, ``\\r\\n`` or ``\\r`` line endings; one
final line ending or none; leading zeros (``007``); ``-0``, read as 0 (a negative sign on any
other value is "out of range"). Rejected: whitespace around a value, quotes, ``+`` signs,
decimals, empty cells, blank lines (a blank line at the end too), any other header, and
compressed files (zip, gzip, bzip2, xz, zstd), which the error names as such.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from numpy.typing import NDArray

from digit_recognizer.errors import DataError, counted
from digit_recognizer.fileio import atomic_path, is_glob

N_PIXELS = 784
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(N_PIXELS))
LABELLED_COLUMNS = ("label", *PIXEL_COLUMNS)
SUBMISSION_COLUMNS = ("ImageId", "Label")
CHECKED_HEADERS = (LABELLED_COLUMNS, PIXEL_COLUMNS, SUBMISSION_COLUMNS)  # `digits data check`'s

_UTF8_BOM = b"\xef\xbb\xbf"
FIRST_LINE_END = re.compile(rb"\r\n?|\n")
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n?|\n|\Z)")  # as bytes.splitlines ends them
_INTEGER = re.compile(r"-?[0-9]+")
# Only these bytes can occur in a valid body. pyarrow's integer parser is more lenient than our
# format (it trims spaces and reads "0x1f" as hex), so any other byte sends the file to the
# reference parser. The scan costs ~20 ms on a 77 MB train.csv.
_BODY_BYTES = b"0123456789,\r\n"
# A whole valid row in one regex match: ~40x faster than checking 785 cells in Python, so the
# reference parser only looks at cells on the line that is wrong.
_PIXEL = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_VALID_ROW = {
    LABELLED_COLUMNS: re.compile(rb"[0-9]," + rb"(?:" + _PIXEL + rb",){783}" + _PIXEL),
    PIXEL_COLUMNS: re.compile(rb"(?:" + _PIXEL + rb",){783}" + _PIXEL),
}
# What a file given as a CSV may start with instead: a clear error, not "line 1: not UTF-8".
_COMPRESSED = {
    b"PK\x03\x04": ("a zip archive", "unzip"),
    b"\x1f\x8b": ("gzip-compressed", "gunzip"),
    b"BZh": ("bzip2-compressed", "bunzip2"),
    b"\xfd7zXZ\x00": ("xz-compressed", "unxz"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "unzstd"),
}
_IMAGES = {  # a scan or a drawing given where rows of digits belong
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"BM": "a BMP image",
}
_NOT_CSV = {
    **{magic: f"{kind}, not CSV text; {how} it first and pass the CSV"
       for magic, (kind, how) in _COMPRESSED.items()},
    **{magic: f"{kind}, not CSV text" for magic, kind in _IMAGES.items()},
}  # fmt: skip
_SHOWN_CHARS = 24  # a cell of binary junk can be megabytes long
_SHOWN_RUNS = 3  # of a submission's missing ImageIds; one with every other row gone has 14,000


@dataclass(frozen=True)
class DigitSet:
    """Images uint8 (N, 28, 28) and labels int64 (N,), or ``None`` for an unlabelled file."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64] | None

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: slice | NDArray[np.intp]) -> DigitSet:
        """The ``rows`` (a slice: views; indices: copies), labels with their images."""
        return DigitSet(self.images[rows], None if self.labels is None else self.labels[rows])


@dataclass(frozen=True)
class CsvSummary:
    """What ``check_kaggle_csv`` found: row count, whether labelled, labels per digit 0-9, and
    whether the file is a submission (``ImageId,Label``, whose labels are the predictions)."""

    path: Path
    n_rows: int
    has_labels: bool
    class_counts: dict[int, int] | None
    is_submission: bool = False

    def one_line(self) -> str:
        """E.g. ``train.csv: 42,000 rows, labelled; class counts 0:4132 1:4684 ...``, or
        ``submission.csv: 28,000 rows, labels of ImageIds 1 to 28000; class counts ...``."""
        rows = f"{self.path}: {counted(self.n_rows, 'row')}"
        if self.class_counts is None:
            return f"{rows}, unlabelled"
        counts = " ".join(f"{digit}:{count}" for digit, count in self.class_counts.items())
        kind = f"labels of ImageIds 1 to {self.n_rows}" if self.is_submission else "labelled"
        return f"{rows}, {kind}; class counts {counts}"


def count_classes(labels: NDArray[np.int64]) -> list[int]:
    """Rows of each digit 0-9 among ``labels``, indexed by digit. Here, not in splits.py, which
    reads ``DigitSet`` from this module: ``check_kaggle_csv`` counts with it too."""
    return np.bincount(labels, minlength=10).tolist()


# --- reading ----------------------------------------------------------------------------------


def read_kaggle_csv(path: str | Path) -> DigitSet:
    """Read a Kaggle ``train.csv`` (labelled) or ``test.csv`` (unlabelled), strictly.

    Returns images uint8 of shape (n_rows, 28, 28) and labels int64 of shape (n_rows,) or None.
    Raises ``DataError`` with file, line and column of the first problem in the file.
    """
    path = Path(path)
    # Not parse_kaggle_csv(raw): the file's bytes, held through the parse beside the body cut
    # from them, would be one more copy of the file. open_binary refuses archives and images.
    columns, body = split_header(_read_bytes(path), path, (LABELLED_COLUMNS, PIXEL_COLUMNS))
    return parse_body(body, columns, path)


def parse_kaggle_csv(raw: bytes, name: str | Path) -> DigitSet:
    """``read_kaggle_csv`` of a file's bytes (an upload's), its errors naming it ``name``."""
    name = Path(name)
    refuse_not_csv(raw, name)
    columns, body = split_header(raw, name, (LABELLED_COLUMNS, PIXEL_COLUMNS))
    return parse_body(body, columns, name)


def check_kaggle_csv(path: str | Path, expected_rows: int | None = None) -> CsvSummary:
    """Validate a Kaggle CSV, as ``read_kaggle_csv`` or ``read_submission`` reads it by its
    header, and summarise it. ``expected_rows``: the rows a submission must have (its test
    file's); a train or test file given one is refused, as nothing would check it."""
    path = Path(path)
    columns, body = split_header(_read_bytes(path), path, CHECKED_HEADERS)
    is_submission_file = columns == SUBMISSION_COLUMNS
    if is_submission_file:
        labels = _submission_labels(body, path, expected_rows)
        n_rows = len(labels)
    else:
        refuse_row_count(columns, path, expected_rows)
        digits = parse_body(body, columns, path)
        labels, n_rows = digits.labels, len(digits)
    class_counts = None if labels is None else dict(enumerate(count_classes(labels)))
    return CsvSummary(path, n_rows, labels is not None, class_counts, is_submission_file)


def refuse_row_count(columns: tuple[str, ...], path: Path, expected_rows: int | None) -> None:
    """``DataError`` where a file of digits (its header ``columns``) is given a submission's
    ``expected_rows``, which nothing would check."""
    if expected_rows is not None and columns != SUBMISSION_COLUMNS:
        raise DataError(f"{path}: its header is '{_abbreviate(columns)}', not a submission's "
                        "(ImageId,Label); only a submission's rows are counted against a test "
                        "file")  # fmt: skip


def is_submission(path: Path) -> bool:
    """Whether the file at ``path`` begins as a submission does (its header ``ImageId,Label``)."""
    with open(path, "rb") as file:
        first = FIRST_LINE_END.split(file.read(256), maxsplit=1)[0]
    return first.removeprefix(_UTF8_BOM).decode("latin-1") == ",".join(SUBMISSION_COLUMNS)


def is_csv_name(name: str | Path) -> bool:
    """Whether a file's name says CSV (``.csv``, gzipped too): one given where an image goes."""
    return str(name).lower().endswith((".csv", ".csv.gz"))


def read_submission(path: str | Path, expected_rows: int | None = None) -> NDArray[np.int64]:
    """Read an ``ImageId,Label`` file; returns labels int64 of shape (n_rows,) in ImageId order.

    Rows may come in any order, but the ImageIds must be exactly 1..n (n = ``expected_rows`` if
    given, else the number of rows), each once. Raises ``DataError`` naming file, line and column.
    """
    path = Path(path)
    _, body = split_header(_read_bytes(path), path, (SUBMISSION_COLUMNS,))
    return _submission_labels(body, path, expected_rows)


def _submission_labels(body: bytes, path: Path, expected_rows: int | None) -> NDArray[np.int64]:
    """``read_submission`` of the bytes after a submission's header."""
    lines = body.splitlines()
    n_rows = len(lines) if expected_rows is None else expected_rows
    labels = np.full(n_rows, -1, dtype=np.int64)
    line_of_id: dict[int, int] = {}
    for line_number, line in enumerate(lines, start=2):
        image_id, label = _parse_row(line, SUBMISSION_COLUMNS, path, line_number)
        if image_id in line_of_id:
            where = _where(path, line_number, "ImageId")
            raise DataError(f"{where}: ImageId {image_id} repeats line {line_of_id[image_id]}")
        if image_id > n_rows:
            where = _where(path, line_number, "ImageId")
            # image_id is clamped past 10**18; the cell, of any length, is shown cut short.
            as_written = show_value(line.partition(b",")[0].decode())
            raise DataError(f"{where}: {_id_problem(as_written, n_rows, expected_rows)}")
        line_of_id[image_id] = line_number
        labels[image_id - 1] = label
    if len(lines) < n_rows:
        raise DataError(
            f"{path}: {_missing_ids(labels < 0)}; expected {counted(n_rows, 'row')} "
            f"(ImageId 1 to {n_rows}), found {len(lines):,}"
        )
    return labels


def _missing_ids(is_missing: NDArray[np.bool_]) -> str:
    """E.g. ``ImageIds 27001 to 28000 are missing (1,000 rows)``: the runs of ImageIds that
    ``is_missing`` (indexed from ImageId 1) marks, the first ``_SHOWN_RUNS`` named and the rest
    counted: a submission cut short is told all it lacks, not its first missing ImageId alone."""
    ids = np.flatnonzero(is_missing) + 1
    if len(ids) == 1:
        return f"ImageId {ids[0]} is missing"
    breaks = np.diff(ids) > 1
    starts, ends = ids[np.r_[True, breaks]], ids[np.r_[breaks, True]]
    shown = zip(starts[:_SHOWN_RUNS], ends[:_SHOWN_RUNS], strict=True)
    runs = [str(start) if start == end else f"{start} to {end}" for start, end in shown]
    if len(starts) > _SHOWN_RUNS:
        runs.append(counted(len(starts) - _SHOWN_RUNS, "more range"))
    listed = runs[0] if len(runs) == 1 else f"{', '.join(runs[:-1])} and {runs[-1]}"
    return f"ImageIds {listed} are missing ({counted(len(ids), 'row')})"


def _id_problem(image_id: str, n_rows: int, expected_rows: int | None) -> str:
    if expected_rows is None:
        rows = counted(n_rows, "row")
        return f"ImageId {image_id} is out of range; for {rows}, ImageIds run 1 to {n_rows}"
    return f"ImageId {image_id} is extra; expected {counted(n_rows, 'row')} (ImageId 1 to {n_rows})"


def _read_bytes(path: Path) -> bytes:
    with open_binary(path) as file:
        try:
            return file.read()
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror})") from None


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading bytes; a missing or unreadable file, an archive (Kaggle's
    downloads come zipped) or an image is a ``DataError``."""
    try:
        file = path.open("rb")
        try:
            start = file.peek(max(map(len, _NOT_CSV)))
        except OSError:
            file.close()
            raise
    except FileNotFoundError:
        if is_glob(path):
            raise DataError(f"{path}: no file of that name; this reads one CSV, not a pattern "
                            "of them: give each file's path") from None  # fmt: skip
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    try:
        refuse_not_csv(start, path)
    except DataError:
        file.close()
        raise
    return file


def refuse_not_csv(start: bytes, path: Path) -> None:
    """``DataError`` if a file starting with ``start`` is an archive or an image, not CSV text."""
    for magic, problem in _NOT_CSV.items():
        if start.startswith(magic):
            raise DataError(f"{path}: {problem}")


def split_header(
    raw: bytes, path: Path, headers: tuple[tuple[str, ...], ...]
) -> tuple[tuple[str, ...], bytes]:
    """Check line 1 is one of ``headers``; return that header and the bytes after it."""
    raw = raw.removeprefix(_UTF8_BOM)
    expected = " or ".join(f"'{_abbreviate(columns)}'" for columns in headers)
    if not raw:
        raise DataError(f"{path}: empty file; expected the header {expected}")
    line_end = FIRST_LINE_END.search(raw)
    header_end, body_start = line_end.span() if line_end else (len(raw), len(raw))
    try:
        cells = tuple(raw[:header_end].decode("utf-8").split(","))
    except UnicodeDecodeError:
        raise DataError(f"{path}, line 1: not UTF-8 text; expected the header {expected}") from None
    if cells not in headers:
        raise DataError(f"{path}, line 1: {_header_problem(cells, headers)}; expected {expected}")
    body = raw[body_start:]
    if not body:
        raise DataError(f"{path}: no data rows after the header")
    return cells, body


def _header_problem(cells: tuple[str, ...], headers: tuple[tuple[str, ...], ...]) -> str:
    """Say how ``cells``, which matches none of ``headers``, differs from the nearest one."""
    if all(cell.isascii() and cell.isdigit() for cell in cells):
        # EMNIST's CSVs and other copies of MNIST come without a header; UCI's optdigits
        # (8 x 8 and a label: 65 columns) without one and in another size too.
        widths = sorted({len(columns) for columns in headers})
        if len(cells) in widths:
            return "a row of numbers, not a header (add one)"
        return (f"a row of {len(cells)} numbers, not a header, where rows of "
                f"{' or '.join(map(str, widths))} are expected")  # fmt: skip
    if cells == SUBMISSION_COLUMNS:  # a submission given where its test.csv was meant
        return "the header 'ImageId,Label' is a submission's (predicted labels, no pixels)"
    same_width = [columns for columns in headers if len(columns) == len(cells)]
    if not same_width:
        return f"the header {show_value(','.join(cells))} has {counted(len(cells), 'column')}"
    expected = same_width[0]
    index = next(
        i for i, (cell, name) in enumerate(zip(cells, expected, strict=True)) if cell != name
    )
    return f"header column {index + 1} is {show_value(cells[index])}, not '{expected[index]}'"


def _abbreviate(columns: tuple[str, ...]) -> str:
    """``label,pixel0,...,pixel783`` rather than 785 names."""
    if len(columns) < N_PIXELS:
        return ",".join(columns)
    return ",".join([*columns[: len(columns) - N_PIXELS + 1], "...", columns[-1]])


def parse_body(body: bytes, columns: tuple[str, ...], path: Path, first_line: int = 2) -> DigitSet:
    """The rows of ``body``, whose first line is line ``first_line`` of ``path``, validated.

    The whole body of a file, or one piece of it cut after a line end (the streaming reader in
    ``shards.py``): either way the same checks and the same messages.
    """
    values = _parse_fast(body, columns)
    if values is None:
        values = _parse_strictly(body, columns, path, first_line)
    pixels = values[:, -N_PIXELS:]
    images = np.ascontiguousarray(pixels).reshape(-1, 28, 28)
    labels = values[:, 0].astype(np.int64) if columns == LABELLED_COLUMNS else None
    return DigitSet(images=images, labels=labels)


def _parse_fast(body: bytes, columns: tuple[str, ...]) -> NDArray[np.uint8] | None:
    """Values uint8 (n_rows, n_columns) via multithreaded pyarrow, or None if anything is off."""
    if body.translate(None, _BODY_BYTES):
        return None
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(_arrow_owned(body)),
            # 8 MiB blocks: 0.43 s instead of 0.62 s with the default 1 MiB for train.csv on 2
            # busy cores (pyarrow 26); fewer blocks, less cross-thread overhead.
            read_options=pa_csv.ReadOptions(
                column_names=list(columns), use_threads=True, block_size=8 << 20
            ),
            parse_options=pa_csv.ParseOptions(
                quote_char=False, escape_char=False, ignore_empty_lines=False
            ),
            # uint8 makes pyarrow reject 256 and -1 itself; null_values=[] makes "" an error.
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(columns, pa.uint8()), null_values=[]
            ),
        )
    except pa.ArrowException:
        return None
    values = np.stack([column.to_numpy() for column in table.columns], axis=1)
    if columns == LABELLED_COLUMNS and values[:, 0].max() > 9:
        return None
    return values


def _arrow_owned(body: bytes) -> pa.Buffer:
    """``body`` copied into memory Arrow owns, for its reader threads: handed the Python bytes, a
    reader thread can hold the last reference to them past read_csv's return, and Ctrl-C
    mid-read can end the interpreter before that thread lets go; the bytes' release then waits
    for the gone interpreter's GIL inside a C++ destructor, and the process dies in
    std::terminate ("terminate called without an active exception", exit 134, in ~1 of 10
    interrupts; a copy of train.csv costs ~20 ms)."""
    buffer = pa.allocate_buffer(len(body))
    np.frombuffer(buffer, np.uint8)[:] = np.frombuffer(body, np.uint8)
    return buffer


def _parse_strictly(
    body: bytes, columns: tuple[str, ...], path: Path, first_line: int = 2
) -> NDArray[np.uint8]:
    """The reference parser: values uint8 (n_rows, n_columns); raises at the first bad line."""
    valid_row = _VALID_ROW[columns]
    for line_number, line in enumerate(_lines(body), start=first_line):
        if valid_row.fullmatch(line) is None:
            _parse_row(line, columns, path, line_number)
    # Reached only if the fast path declined a valid file (say, a cell "-0", which the byte
    # filter sends here): slow (~10 s for train.csv) but right. Row by row into the array: a
    # list of every row's ints would take 8 bytes a cell, 6 GB for a million rows.
    values = np.empty((count_lines(body), len(columns)), dtype=np.uint8)
    for row, line in enumerate(_lines(body)):
        values[row] = _parse_row(line, columns, path, first_line + row)
    return values


def _lines(body: bytes) -> Iterator[bytes]:
    """``body.splitlines()`` one line at a time: the list of them would be one more copy of the
    file beside it."""
    for line in _LINE.finditer(body):
        if line[0]:  # the empty match at the end
            yield line[1]


def count_lines(body: bytes) -> int:
    """Lines as ``bytes.splitlines`` counts them (ends ``\\n``, ``\\r\\n``, ``\\r``), quickly."""
    line_ends = body.count(b"\n") + body.count(b"\r") - body.count(b"\r\n")
    return line_ends + (not body.endswith((b"\n", b"\r")))


def _parse_row(line: bytes, columns: tuple[str, ...], path: Path, line_number: int) -> list[int]:
    """One line's integers, or ``DataError`` naming the first bad cell."""
    if not line:
        raise DataError(f"{path}, line {line_number}: empty line")
    cells = line.split(b",")
    if len(cells) != len(columns):
        trailing = len(cells) == len(columns) + 1 and not cells[-1].strip()
        hint = f": an empty one after {columns[-1]} (a comma at the end of the line?)"
        raise DataError(
            f"{path}, line {line_number}: expected {len(columns)} columns, found {len(cells)}"
            f"{hint if trailing else ''}"
        )
    values = []
    for cell, column in zip(cells, columns, strict=True):
        text = cell.decode("utf-8", errors="backslashreplace")
        problem = _cell_problem(text, column)
        if problem:
            raise DataError(f"{_where(path, line_number, column)}: {problem}")
        values.append(_to_int(text))
    return values


def _cell_problem(text: str, column: str) -> str | None:
    """Why ``text`` is not a valid value for ``column``, or None if it is."""
    if not text:
        return "empty cell"
    if text.strip() != text:
        return f"{show_value(text)} has whitespace around the value; remove it"
    if not _INTEGER.fullmatch(text):
        return f"{show_value(text)} is not an integer"
    value = _to_int(text)
    if column in ("label", "Label") and not 0 <= value <= 9:
        return f"{show_value(text)} is not a digit label 0-9"
    if column == "ImageId" and value < 1:
        return f"{show_value(text)} is not a valid ImageId (ids start at 1)"
    if column.startswith("pixel") and not 0 <= value <= 255:
        return f"{show_value(text)} is out of range 0-255"
    return None


def _to_int(text: str) -> int:
    """``int(text)`` for a cell matching ``_INTEGER``, clamped to +-10**18.

    pyarrow accepts any number of leading zeros, so we must too; plain ``int()`` raises past
    4300 digits. Every range we check lies far inside the clamp.
    """
    digits = text.lstrip("-").lstrip("0") or "0"
    magnitude = int(digits) if len(digits) <= 18 else 10**18
    return -magnitude if text.startswith("-") else magnitude


def _where(path: Path, line_number: int, column: str) -> str:
    return f"{path}, line {line_number}, column {column}"


def show_value(text: str) -> str:
    """A value as a message shows it: numbers bare (``9.5``), anything else quoted (``'abc'``),
    cut short past ``_SHOWN_CHARS``. For CSV cells, and for the server's JSON values."""
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS] + "...")
    try:
        float(text)
    except ValueError:
        return repr(text)
    return text if text.strip() == text else repr(text)


# --- writing ----------------------------------------------------------------------------------


def write_kaggle_csv(
    path: str | Path, images: NDArray[np.uint8], labels: NDArray[np.integer] | None = None
) -> None:
    """Write images uint8 (N, 28, 28) and optional labels (N,) in Kaggle's format, atomically.

    With labels the file is a ``train.csv``, without a ``test.csv``. Output is byte-for-byte
    deterministic: no quotes, ``\\n`` line endings, plain integers.
    """
    table = to_table(images, labels)
    with atomic_path(path) as tmp, open_sink(tmp) as sink:
        write_table(sink, table, include_header=True)


def open_sink(path: Path) -> pa.NativeFile:
    """``path`` opened for pyarrow to write, named by its bytes: pyarrow encodes a str path as
    UTF-8, which a name that is not (Latin-1 bytes on a Linux disk) fails with a traceback."""
    return pa.OSFile(os.fsencode(path), "wb")


def to_table(images: NDArray[np.uint8], labels: NDArray[np.integer] | None) -> pa.Table:
    """Checked images (N, 28, 28) and optional labels (N,) as a table of Kaggle's columns."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to write; a Kaggle CSV needs at least one row")
    pixels = images.reshape(len(images), N_PIXELS)
    arrays = [pa.array(pixels[:, i]) for i in range(N_PIXELS)]
    columns = PIXEL_COLUMNS
    if labels is not None:
        arrays.insert(0, pa.array(_checked_labels(labels, len(images)).astype(np.uint8)))
        columns = LABELLED_COLUMNS
    return pa.Table.from_arrays(arrays, names=list(columns))


def write_table(sink: pa.NativeFile, table: pa.Table, include_header: bool) -> None:
    """Rows of ``to_table`` to ``sink``; shards append several tables after one header."""
    if include_header:
        sink.write((",".join(table.column_names) + "\n").encode())
    # batch_size 8192: 0.64 s instead of 0.81 s for a 42,000-row train.csv (pyarrow 26, 2 cores).
    options = pa_csv.WriteOptions(include_header=False, batch_size=8192, quoting_style="none")
    pa_csv.write_csv(table, sink, options)


SUBMISSION_CHUNK_ROWS = 1_000_000


def write_submission(path: str | Path, labels: NDArray[np.integer]) -> None:
    """Write labels (N,) as ``ImageId,Label`` rows, ImageId 1..N, atomically.

    Rows are formatted ``SUBMISSION_CHUNK_ROWS`` at a time, so the text of a huge submission is
    never in memory at once.
    """
    chunks = submission_chunks(labels)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as file:
        file.writelines(chunks)


def submission_chunks(labels: NDArray[np.integer]) -> Iterator[str]:
    """A submission's text: the header, then ``SUBMISSION_CHUNK_ROWS`` rows at a time."""
    if len(labels) == 0:
        raise ValueError("no labels to write; a submission needs at least one row")
    labels = _checked_labels(labels, len(labels))
    return _submission_text(labels)


def _submission_text(labels: NDArray[np.integer]) -> Iterator[str]:
    yield ",".join(SUBMISSION_COLUMNS) + "\n"
    for start in range(0, len(labels), SUBMISSION_CHUNK_ROWS):
        pairs = enumerate(labels[start : start + SUBMISSION_CHUNK_ROWS].tolist(), start + 1)
        yield "".join(f"{image_id},{label}\n" for image_id, label in pairs)


def _checked_labels(labels: NDArray[np.integer], n_rows: int) -> NDArray[np.integer]:
    labels = np.asarray(labels)
    if labels.shape != (n_rows,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integers of shape ({n_rows},), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"labels must be digits 0-9, got {labels.min()} to {labels.max()}")
    return labels
