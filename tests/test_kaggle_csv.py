"""Kaggle CSV reader and writer: round trips, exact error messages, fast and reference agree."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.data import kaggle_csv
from digit_recognizer.data.kaggle_csv import (
    LABELLED_COLUMNS,
    PIXEL_COLUMNS,
    check_kaggle_csv,
    count_classes,
    is_submission,
    parse_kaggle_csv,
    read_kaggle_csv,
    read_submission,
    write_kaggle_csv,
    write_submission,
)
from digit_recognizer.data.shards import resolve_data_source
from digit_recognizer.errors import DataError

N_ROWS = 10  # lines 2-11 of the file
HEADER = ",".join(LABELLED_COLUMNS)


def random_digits(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n_rows, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_rows)


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, *random_digits(N_ROWS))
    return path


def set_cell(path: Path, line_number: int, column: str, text: str) -> None:
    lines = path.read_text().split("\n")
    cells = lines[line_number - 1].split(",")
    cells[LABELLED_COLUMNS.index(column)] = text
    lines[line_number - 1] = ",".join(cells)
    path.write_text("\n".join(lines))


def read_error(path: Path | str) -> str:
    with pytest.raises(DataError) as error:
        read_kaggle_csv(path)
    return str(error.value)


# --- round trips and accepted variants --------------------------------------------------------


def test_round_trip_labelled(train_csv: Path) -> None:
    images, labels = random_digits(N_ROWS)
    digits = read_kaggle_csv(train_csv)
    assert digits.has_labels and len(digits) == N_ROWS
    assert digits.images.dtype == np.uint8 and digits.images.shape == (N_ROWS, 28, 28)
    assert digits.labels is not None and digits.labels.dtype == np.int64
    np.testing.assert_array_equal(digits.images, images)
    np.testing.assert_array_equal(digits.labels, labels)


def test_round_trip_unlabelled(tmp_path: Path) -> None:
    images, _ = random_digits(N_ROWS)
    write_kaggle_csv(tmp_path / "test.csv", images)
    digits = read_kaggle_csv(tmp_path / "test.csv")
    assert not digits.has_labels and digits.labels is None
    np.testing.assert_array_equal(digits.images, images)


def test_pyarrows_reader_threads_read_a_copy_arrow_owns_not_the_callers_bytes(
    train_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handed the file's Python bytes, a reader thread could drop their last reference after
    Ctrl-C had ended the interpreter, and the process died in std::terminate (exit 134)."""
    read_by_arrow = []
    reader = kaggle_csv.pa.BufferReader
    monkeypatch.setattr(kaggle_csv.pa, "BufferReader",
                        lambda source: read_by_arrow.append(source) or reader(source))  # fmt: skip
    body = train_csv.read_bytes().split(b"\n", 1)[1]  # the rows below the header
    digits = kaggle_csv.parse_body(body, kaggle_csv.LABELLED_COLUMNS, train_csv)
    np.testing.assert_array_equal(digits.images, random_digits(N_ROWS)[0])
    [source] = read_by_arrow
    assert isinstance(source, kaggle_csv.pa.Buffer) and source.to_pybytes() == body
    assert source.address != np.frombuffer(body, np.uint8).ctypes.data


def test_a_path_whose_name_is_not_utf8_is_written_and_read(tmp_path: Path) -> None:
    images, labels = random_digits(N_ROWS)
    path = tmp_path / os.fsdecode(b"train-\xff.csv")  # a Latin-1 name on a Linux disk
    write_kaggle_csv(path, images, labels)
    np.testing.assert_array_equal(read_kaggle_csv(path).images, images)


def test_writer_format_is_exact_and_deterministic(tmp_path: Path) -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1, 0, 1] = 255
    write_kaggle_csv(tmp_path / "a.csv", images, np.array([3, 0]))
    write_kaggle_csv(tmp_path / "b.csv", images, np.array([3, 0]))
    zeros = ",0" * 784
    expected = f"{HEADER}\n3{zeros}\n0,0,255{zeros[4:]}\n".encode()
    assert (tmp_path / "a.csv").read_bytes() == expected
    assert (tmp_path / "b.csv").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]  # no temp files


def zero_pad_pixels(raw: bytes) -> bytes:
    header, body = raw.split(b"\n", 1)
    return header + b"\n" + body.replace(b",", b",00")


@pytest.mark.parametrize(
    "transform",
    [
        lambda raw: b"\xef\xbb\xbf" + raw,  # UTF-8 byte-order mark, as Excel writes
        lambda raw: raw.replace(b"\n", b"\r\n"),  # Windows line endings
        lambda raw: raw.replace(b"\n", b"\r"),  # classic Mac line endings
        lambda raw: raw.removesuffix(b"\n"),  # no final newline
        zero_pad_pixels,  # leading zeros, as "007"
    ],
    ids=["bom", "crlf", "cr", "no-final-newline", "leading-zeros"],
)
def test_accepted_variants_read_the_same_values(train_csv: Path, transform) -> None:
    expected = read_kaggle_csv(train_csv)
    train_csv.write_bytes(transform(train_csv.read_bytes()))
    digits = read_kaggle_csv(train_csv)
    np.testing.assert_array_equal(digits.images, expected.images)
    np.testing.assert_array_equal(digits.labels, expected.labels)


def test_check_summarises(train_csv: Path, tmp_path: Path) -> None:
    summary = check_kaggle_csv(train_csv)
    labels = random_digits(N_ROWS)[1]
    assert summary.n_rows == N_ROWS and summary.has_labels
    assert summary.class_counts == {d: int(np.sum(labels == d)) for d in range(10)}
    counts = " ".join(f"{d}:{n}" for d, n in summary.class_counts.items())
    assert summary.one_line() == f"{train_csv}: 10 rows, labelled; class counts {counts}"
    write_kaggle_csv(tmp_path / "test.csv", random_digits(1200)[0])
    assert check_kaggle_csv(tmp_path / "test.csv").one_line() == (
        f"{tmp_path / 'test.csv'}: 1,200 rows, unlabelled"
    )
    write_kaggle_csv(tmp_path / "one.csv", random_digits(1)[0])
    assert (
        check_kaggle_csv(tmp_path / "one.csv").one_line()
        == f"{tmp_path / 'one.csv'}: 1 row, unlabelled"
    )


def test_data_check_counts_digits_with_the_one_counter_training_uses(train_csv: Path) -> None:
    """check_kaggle_csv had a bincount of its own: splits.py's count_classes, which training
    and shard builds count with, could not be imported here (splits.py imports this module)."""
    assert count_classes(np.array([3, 3, 9, 0])) == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    class_counts = check_kaggle_csv(train_csv).class_counts
    assert list(class_counts.values()) == count_classes(read_kaggle_csv(train_csv).labels)


# --- errors: one per kind, with exact line and column ------------------------------------------


@pytest.mark.parametrize(
    ("line_number", "column", "text", "message"),
    [
        (3, "pixel782", "abc", "line 3, column pixel782: 'abc' is not an integer"),
        (5, "label", "9.5", "line 5, column label: 9.5 is not an integer"),
        (4, "pixel3", "300", "line 4, column pixel3: 300 is out of range 0-255"),
        (6, "pixel0", "-1", "line 6, column pixel0: -1 is out of range 0-255"),
        (9, "label", "12", "line 9, column label: 12 is not a digit label 0-9"),
        # 10 fits pyarrow's uint8, so only the fast path's own label check sends it to the
        # reference parser, which names the cell.
        (3, "label", "10", "line 3, column label: 10 is not a digit label 0-9"),
        (2, "pixel0", "", "line 2, column pixel0: empty cell"),
        (11, "pixel783", "", "line 11, column pixel783: empty cell"),
        (7, "pixel5", " 5", "line 7, column pixel5: ' 5' has whitespace around the value"),
        (8, "pixel9", "0x1f", "line 8, column pixel9: '0x1f' is not an integer"),
        (2, "pixel1", '"7"', "line 2, column pixel1: '\"7\"' is not an integer"),
        (10, "pixel2", "9" * 5000, "line 10, column pixel2: '999999999999999999999999...'"),
        # Shown to 24 characters: a cell of binary junk can be megabytes long.
        (4, "pixel2", "x" * 25, f"line 4, column pixel2: '{'x' * 24}...' is not an integer"),
    ],
)
def test_bad_cell_names_line_and_column(
    train_csv: Path, line_number: int, column: str, text: str, message: str
) -> None:
    set_cell(train_csv, line_number, column, text)
    assert read_error(train_csv).startswith(f"{train_csv}, {message}")


def test_non_utf8_cell(train_csv: Path) -> None:
    raw = train_csv.read_bytes()
    second_line = raw.index(b"\n") + 1
    train_csv.write_bytes(raw[:second_line] + b"\xff" + raw[raw.index(b",", second_line) :])
    assert (
        read_error(train_csv) == f"{train_csv}, line 2, column label: '\\\\xff' is not an integer"
    )


def test_wrong_column_count(train_csv: Path) -> None:
    lines = train_csv.read_text().split("\n")
    lines[6] = lines[6].rsplit(",", 1)[0]
    train_csv.write_text("\n".join(lines))
    assert read_error(train_csv) == f"{train_csv}, line 7: expected 785 columns, found 784"
    # Every data row ending in a comma (some spreadsheets export so): the error says so.
    lines = [line + "," if number else line for number, line in enumerate(lines[:7])]
    train_csv.write_text("\n".join(lines) + "\n")
    assert read_error(train_csv) == (
        f"{train_csv}, line 2: expected 785 columns, found 786: an empty one after pixel783 "
        "(a comma at the end of the line?)"
    )
    # Two more cells are no comma at the end, and the error does not say they are.
    train_csv.write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    assert read_error(train_csv) == f"{train_csv}, line 2: expected 785 columns, found 787"
    # Nor is one more cell with a value in it: an extra column, not a trailing comma.
    train_csv.write_text("\n".join([lines[0], *(line + "0" for line in lines[1:])]) + "\n")
    assert read_error(train_csv) == f"{train_csv}, line 2: expected 785 columns, found 786"


def blank_line_after_line_3(text: str) -> str:
    lines = text.split("\n")
    lines.insert(3, "")
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("transform", "line_number"),
    [
        (blank_line_after_line_3, 4),
        (lambda text: text + "\n", 12),  # a second final newline
        (lambda text: text + "\r\n", 12),
    ],
)
def test_blank_line(train_csv: Path, transform, line_number: int) -> None:
    train_csv.write_text(transform(train_csv.read_text()))
    assert read_error(train_csv) == f"{train_csv}, line {line_number}: empty line"


def test_first_problem_wins(train_csv: Path) -> None:
    set_cell(train_csv, 9, "pixel1", "x")
    set_cell(train_csv, 4, "pixel700", "256")
    assert read_error(train_csv).startswith(f"{train_csv}, line 4, column pixel700: 256 is out")


def test_message_uses_the_path_as_given(train_csv: Path, monkeypatch) -> None:
    set_cell(train_csv, 3, "pixel782", "abc")
    monkeypatch.chdir(train_csv.parent)
    message = "line 3, column pixel782: 'abc' is not an integer"
    assert read_error("train.csv") == f"train.csv, {message}"
    assert read_error(str(train_csv)) == f"{train_csv}, {message}"


# --- errors: header and whole file --------------------------------------------------------------

EXPECTED_HEADERS = "expected 'label,pixel0,...,pixel783' or 'pixel0,...,pixel783'"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (HEADER.replace("pixel1,", "pix1,"), "header column 3 is 'pix1', not 'pixel1'"),
        ("Label" + HEADER[5:], "header column 1 is 'Label', not 'label'"),
        ('"label"' + HEADER[5:], "header column 1 is '\"label\"', not 'label'"),
        (HEADER + ",extra", "the header 'label,pixel0,pixel1,pixe...' has 786 columns"),
        (
            "ImageId,Label",
            "the header 'ImageId,Label' is a submission's (predicted labels, no pixels)",
        ),
        ("label;pixel0;pixel1", "the header 'label;pixel0;pixel1' has 1 column"),
        (",".join(["7"] + ["0"] * 784), "a row of numbers, not a header (add one)"),
        (  # UCI's optdigits: 8 x 8 and a label
            ",".join(["0"] * 64 + ["7"]),
            "a row of 65 numbers, not a header, where rows of 784 or 785 are expected",
        ),
    ],
)
def test_wrong_header(train_csv: Path, header: str, problem: str) -> None:
    body = train_csv.read_text().split("\n", 1)[1]
    train_csv.write_text(f"{header}\n{body}")
    assert read_error(train_csv) == f"{train_csv}, line 1: {problem}; {EXPECTED_HEADERS}"


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"")
    assert read_error(tmp_path / "train.csv") == (
        f"{tmp_path / 'train.csv'}: empty file; "
        "expected the header 'label,pixel0,...,pixel783' or 'pixel0,...,pixel783'"
    )


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_header_only(tmp_path: Path, ending: str) -> None:
    (tmp_path / "test.csv").write_text(",".join(PIXEL_COLUMNS) + ending)
    assert (
        read_error(tmp_path / "test.csv")
        == f"{tmp_path / 'test.csv'}: no data rows after the header"
    )


def test_random_bytes(tmp_path: Path) -> None:
    for seed in range(20):
        (tmp_path / "junk.csv").write_bytes(np.random.default_rng(seed).bytes(5000))
        assert read_error(tmp_path / "junk.csv").startswith(f"{tmp_path / 'junk.csv'}, line 1: ")


def test_non_utf8_header(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"label,\xffpixel0\n1,2\n")
    assert read_error(tmp_path / "train.csv").startswith(
        f"{tmp_path / 'train.csv'}, line 1: not UTF-8 text; expected the header 'label,"
    )


@pytest.mark.parametrize(
    ("suffix", "compress", "message"),
    [
        (".zip", None, "a zip archive, not CSV text; unzip it first"),
        (".gz", gzip.compress, "gzip-compressed, not CSV text; gunzip it first"),
        (".bz2", bz2.compress, "bzip2-compressed, not CSV text; bunzip2 it first"),
        (".xz", lzma.compress, "xz-compressed, not CSV text; unxz it first"),
    ],
)
def test_compressed_csv_is_named_as_such(tmp_path: Path, suffix, compress, message) -> None:
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, *random_digits(2))
    path = tmp_path / f"train.csv{suffix}"
    if compress is None:  # as Kaggle's download comes
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(csv, "train.csv")
    else:
        path.write_bytes(compress(csv.read_bytes()))
    assert read_error(path) == f"{path}: {message} and pass the CSV"
    with pytest.raises(DataError, match=message):
        resolve_data_source(path)  # the streaming reader's scan, too
    with pytest.raises(DataError, match=f"^upload.csv: {message}"):  # the server's upload, too
        parse_kaggle_csv(path.read_bytes(), "upload.csv")


@pytest.mark.parametrize(
    ("pillow_format", "kind"),
    [("PNG", "a PNG image"), ("JPEG", "a JPEG image"), ("GIF", "a GIF image"),
     ("TIFF", "a TIFF image"), ("BMP", "a BMP image")],
)  # fmt: skip
def test_an_image_given_as_rows_of_digits_is_named_as_such(
    tmp_path: Path, pillow_format: str, kind: str
) -> None:
    """`digits train --train scan.png` and `digits data check scan.png` had said "line 1: not
    UTF-8 text; expected the header ...", leaving the user to work out what went wrong."""
    from PIL import Image

    path = tmp_path / f"scan.{pillow_format.lower()}"
    Image.new("L", (28, 28), 255).save(path, format=pillow_format)
    assert read_error(path) == f"{path}: {kind}, not CSV text"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {kind}, not CSV text$"):
        resolve_data_source(path)
    with pytest.raises(DataError, match=f"^upload.csv: {kind}, not CSV text$"):
        parse_kaggle_csv(path.read_bytes(), "upload.csv")


def test_a_compressed_file_refused_is_closed(tmp_path: Path, monkeypatch) -> None:
    """A server refusing uploads, or a scan of many shards, would run out of file handles."""
    from digit_recognizer.data.kaggle_csv import open_binary

    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(b"label,pixel0\n"))
    opened = []
    real_open = Path.open

    def recording_open(self: Path, *args, **kwargs):
        opened.append(real_open(self, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(Path, "open", recording_open)
    with pytest.raises(DataError, match="gzip-compressed"):
        open_binary(path)
    assert len(opened) == 1 and opened[0].closed


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert read_error(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: file not found"
    assert read_error(tmp_path) == f"{tmp_path}: is a directory, expected a CSV file"
    # `digits data check "dir/*.csv"`: a pattern of files, said to be no file at all.
    assert read_error(tmp_path / "*.csv") == (f"{tmp_path / '*.csv'}: no file of that name; this "
                                              "reads one CSV, not a pattern of them: give each "
                                              "file's path")  # fmt: skip


def test_fast_path_and_reference_parser_agree(tmp_path: Path, monkeypatch) -> None:
    """Random corruptions: both parsers return the same values or raise the same message."""
    rng = np.random.default_rng(0)
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, *random_digits(3))
    clean = path.read_bytes()
    body_start = clean.index(b"\n") - 2  # a few header bytes too, to cover its line ending
    alphabet = b'0123456789,\r\n -+.x\xef\xff"\t\x00'
    for _ in range(300):
        corrupted = bytearray(clean)
        for _ in range(rng.integers(1, 4)):
            position = int(rng.integers(body_start, len(corrupted)))
            byte = alphabet[int(rng.integers(len(alphabet)))]
            if rng.random() < 0.5:
                corrupted.insert(position, byte)
            else:
                corrupted[position] = byte
        path.write_bytes(bytes(corrupted))
        fast = _outcome(path)
        with monkeypatch.context() as patch:
            patch.setattr(kaggle_csv, "_parse_fast", lambda body, columns: None)
            reference = _outcome(path)
        assert type(fast) is type(reference) and np.array_equal(fast, reference), bytes(corrupted)


def _outcome(path: Path) -> str | np.ndarray:
    try:
        digits = read_kaggle_csv(path)
    except DataError as error:
        return str(error)
    return np.concatenate([digits.labels[:, None], digits.images.reshape(len(digits), -1)], axis=1)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 28, 28), np.int64), None, "images must be uint8 (N, 28, 28)"),
        (np.zeros((2, 784), np.uint8), None, "images must be uint8 (N, 28, 28)"),
        (np.zeros((0, 28, 28), np.uint8), None, "no images to write"),
        (np.zeros((2, 28, 28), np.uint8), np.array([1]), "labels must be integers of shape (2,)"),
        (np.zeros((2, 28, 28), np.uint8), np.array([1, 10]), "labels must be digits 0-9"),
    ],
)
def test_writer_rejects_bad_arrays(tmp_path: Path, images, labels, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_kaggle_csv(tmp_path / "x.csv", images, labels)
    assert not list(tmp_path.iterdir())


# --- submissions --------------------------------------------------------------------------------


def submission_error(path: Path, expected_rows: int | None = None) -> str:
    with pytest.raises(DataError) as error:
        read_submission(path, expected_rows=expected_rows)
    return str(error.value)


@pytest.fixture
def submission_csv(tmp_path: Path) -> Path:
    path = tmp_path / "submission.csv"
    write_submission(path, np.array([3, 1, 4, 1, 5]))
    return path


def test_submission_round_trip(submission_csv: Path) -> None:
    assert submission_csv.read_text() == "ImageId,Label\n1,3\n2,1\n3,4\n4,1\n5,5\n"
    labels = read_submission(submission_csv, expected_rows=5)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [3, 1, 4, 1, 5])


def test_submission_chunks_continue_the_image_ids(tmp_path: Path, monkeypatch) -> None:
    # Written a chunk of rows at a time (a million; two here): ImageIds run on across chunks.
    monkeypatch.setattr(kaggle_csv, "SUBMISSION_CHUNK_ROWS", 2)
    path = tmp_path / "submission.csv"
    write_submission(path, np.array([3, 1, 4, 1, 5]))
    assert path.read_text() == "ImageId,Label\n1,3\n2,1\n3,4\n4,1\n5,5\n"


def test_submission_rows_in_any_order(submission_csv: Path) -> None:
    submission_csv.write_text("\ufeffImageId,Label\r\n5,5\r\n2,1\r\n1,3\r\n4,1\r\n3,4")
    np.testing.assert_array_equal(read_submission(submission_csv), [3, 1, 4, 1, 5])


def test_a_submission_is_known_by_its_header_as_a_spreadsheet_saves_it_too(
    submission_csv: Path, train_csv: Path
) -> None:
    # A submission opened and saved in Excel (a BOM, CRLF) is still one that predict replaces.
    assert is_submission(submission_csv)
    submission_csv.write_text("\ufeffImageId,Label\r\n1,3\r\n")
    assert is_submission(submission_csv)
    assert not is_submission(train_csv)


@pytest.mark.parametrize(
    ("text", "expected_rows", "message"),
    [
        (
            "ImageId,Label\n1,3\n2,1\n2,4\n",
            None,
            "line 4, column ImageId: ImageId 2 repeats line 3",
        ),
        (
            "ImageId,Label\n1,3\n2,1\n4,4\n",
            None,
            "line 4, column ImageId: ImageId 4 is out of range; for 3 rows, ImageIds run 1 to 3",
        ),
        (
            "ImageId,Label\n1,3\n2,1\n3,4\n",
            2,
            "line 4, column ImageId: ImageId 3 is extra; expected 2 rows (ImageId 1 to 2)",
        ),
        (
            "ImageId,Label\n1,3\n2,4\n",
            1,
            "line 3, column ImageId: ImageId 2 is extra; expected 1 row (ImageId 1 to 1)",
        ),
        (
            "ImageId,Label\n1,3\n2,1\n99999999999999999999999,4\n",
            2,
            "line 4, column ImageId: ImageId 99999999999999999999999 is extra; expected 2 rows",
        ),
        (
            "ImageId,Label\n1,3\n1" + "0" * 100_000 + ",4\n",
            2,
            "line 3, column ImageId: ImageId '100000000000000000000000...' is extra; expected 2 "
            "rows (ImageId 1 to 2)",
        ),
        (
            "ImageId,Label\n1,3\n3,4\n",
            3,
            ": ImageId 2 is missing; expected 3 rows (ImageId 1 to 3), found 2",
        ),
        ("ImageId,Label\n1,3\n2,10\n", None, "line 3, column Label: 10 is not a digit label 0-9"),
        (
            "ImageId,Label\n0,3\n",
            None,
            "line 2, column ImageId: 0 is not a valid ImageId (ids start at 1)",
        ),
        ("ImageId,Label\n1,3.0\n", None, "line 2, column Label: 3.0 is not an integer"),
        ("ImageId,Label\n1,3,4\n", None, "line 2: expected 2 columns, found 3"),
        ("ImageId,Label\n1,3\n\n", None, "line 3: empty line"),
        ("ImageId,Label\n", None, ": no data rows after the header"),
        ("", None, ": empty file; expected the header 'ImageId,Label'"),
        (
            "id,label\n1,3\n",
            None,
            ", line 1: header column 1 is 'id', not 'ImageId'; expected 'ImageId,Label'",
        ),
    ],
)
def test_submission_errors(
    submission_csv: Path, text: str, expected_rows: int | None, message: str
) -> None:
    submission_csv.write_text(text)
    error = submission_error(submission_csv, expected_rows)
    assert error.startswith(f"{submission_csv}{'' if message[0] in ':,' else ', '}{message}")


def test_check_summarises_a_submission_as_a_spreadsheet_saves_it_too(submission_csv: Path) -> None:
    # `digits data check submission.csv` had said only "the header has 2 columns".
    submission_csv.write_text("\ufeffImageId,Label\r\n5,5\r\n2,1\r\n1,3\r\n4,1\r\n3,4")
    summary = check_kaggle_csv(submission_csv, expected_rows=5)
    assert summary.is_submission and summary.n_rows == 5
    assert summary.one_line() == (
        f"{submission_csv}: 5 rows, labels of ImageIds 1 to 5; "
        "class counts 0:0 1:2 2:0 3:1 4:1 5:1 6:0 7:0 8:0 9:0"
    )


@pytest.mark.parametrize(
    ("text", "expected_rows", "message"),
    [
        ("ImageId,Label\n1,3\n2,1\n2,4\n", None, ", line 4, column ImageId: ImageId 2 repeats"),
        ("ImageId,Label\n1,3\n2,1\n", 3, ": ImageId 3 is missing; expected 3 rows"),
        ("ImageId,Label,\n1,3\n", None, ", line 1: the header 'ImageId,Label,' has 3 columns; "
         "expected 'label,pixel0,...,pixel783' or 'pixel0,...,pixel783' or 'ImageId,Label'"),
    ],
)  # fmt: skip
def test_check_names_a_submissions_first_problem(
    submission_csv: Path, text: str, expected_rows: int | None, message: str
) -> None:
    submission_csv.write_text(text)
    with pytest.raises(DataError) as error:
        check_kaggle_csv(submission_csv, expected_rows)
    assert str(error.value).startswith(f"{submission_csv}{message}")


@pytest.mark.parametrize(
    ("kept_ids", "n_rows", "missing"),
    [
        (range(1, 27_001), 28_000, "ImageIds 27001 to 28000 are missing (1,000 rows)"),
        ([*range(1, 101), *range(201, 28_001)], 28_000,
         "ImageIds 101 to 200 are missing (100 rows)"),
        ([i for i in range(1, 28_001) if i not in (5, 9, 10, 11)], 28_000,
         "ImageIds 5 and 9 to 11 are missing (4 rows)"),
        (range(1, 28_001, 2), 28_000,
         "ImageIds 2, 4, 6 and 13,997 more ranges are missing (14,000 rows)"),
        # Three runs are named, none counted ("and 0 more ranges" is no range); a fourth is.
        ([1, 3, 5, 7, 8, 9, 10], 10, "ImageIds 2, 4 and 6 are missing (3 rows)"),
        ([1, 3, 5, 7, 9, 10], 10, "ImageIds 2, 4, 6 and 1 more range are missing (4 rows)"),
    ],
)  # fmt: skip
def test_check_names_every_run_of_a_short_submissions_missing_ids(
    submission_csv: Path, kept_ids: range | list[int], n_rows: int, missing: str
) -> None:
    """`digits data check` of a submission cut short had named its first missing ImageId alone."""
    submission_csv.write_text("ImageId,Label\n" + "".join(f"{i},7\n" for i in kept_ids))
    with pytest.raises(DataError) as error:
        check_kaggle_csv(submission_csv, expected_rows=n_rows)
    assert str(error.value) == (
        f"{submission_csv}: {missing}; expected {n_rows:,} rows (ImageId 1 to {n_rows}), "
        f"found {len(kept_ids):,}"
    )


def test_check_refuses_a_row_count_for_a_file_not_a_submission(train_csv: Path) -> None:
    with pytest.raises(DataError) as error:
        check_kaggle_csv(train_csv, expected_rows=N_ROWS)
    assert str(error.value) == (
        f"{train_csv}: its header is 'label,pixel0,...,pixel783', not a submission's "
        "(ImageId,Label); only a submission's rows are counted against a test file"
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([], dtype=np.int64), "no labels to write"),
        (np.array([1.0, 2.0]), "labels must be integers of shape (2,)"),
        (np.array([1, -1]), "labels must be digits 0-9"),
    ],
)
def test_write_submission_rejects_bad_labels(tmp_path: Path, labels, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_submission(tmp_path / "submission.csv", labels)
    assert not list(tmp_path.iterdir())


# --- atomic writes ------------------------------------------------------------------------------

WRITERS = {
    "submission": lambda path, n: write_submission(path, np.arange(n) % 10),
    "kaggle_csv": lambda path, n: write_kaggle_csv(path, random_digits(n)[0]),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_replace_the_file_rather_than_rewrite_it_in_place(
    tmp_path: Path, writer: str
) -> None:
    """A writer that truncated and rewrote the file in place tore it for a reader holding it
    open (a scorer reading while the next submission lands), and for good on a crash."""
    path = tmp_path / "out.csv"
    WRITERS[writer](path, 3)
    old = path.read_bytes()
    with open(path, "rb") as reader:
        WRITERS[writer](path, 5)
        assert reader.read() == old  # in place, it would read the new (or torn) bytes
    assert path.read_bytes() != old


def test_a_valid_file_the_fast_path_declines_is_read_without_a_list_of_every_cell(
    tmp_path: Path,
) -> None:
    """A "-0" cell sends a valid file to the reference parser, which had built Python lists of
    every row's ints (8 bytes a cell: 6 GB for a million rows) before the uint8 array."""
    import tracemalloc

    images, labels = random_digits(1000)
    images[0, 0, 0] = 0
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, images, labels)
    set_cell(path, 2, "pixel0", "-0")
    tracemalloc.start()
    try:
        data = read_kaggle_csv(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    # The file's bytes, its body, its lines and the values had been 3.3 times the file (the
    # lists 6.3 MB more: 5.8 times); the bytes go once the body is cut from them and the lines
    # come one at a time: twice the file, while the body is cut.
    assert peak < 2.5 * path.stat().st_size
