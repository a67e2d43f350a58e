"""Coverage-guided fuzzing (atheris) of the Kaggle CSV reader: any exception but ``DataError``
is a crash, and so is a shard reader that disagrees with ``read_kaggle_csv``.

    make fuzz                                                   # every target, FUZZ_SECONDS each
    .venv/bin/python fuzz/csv_reader.py build/fuzz/csv_reader fuzz/corpus/csv_reader \
        -max_total_time=60 -max_len=8192

The first byte picks a header to put before the rest (none, ``label,pixel0,...`` or
``pixel0,...``), so mutations explore the rows instead of rediscovering a 7 kB header; the
second sets the shard reader's piece size. A crash becomes a test in tests/test_properties.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import atheris

with atheris.instrument_imports(include=["digit_recognizer"]):
    from digit_recognizer.data import shards
    from digit_recognizer.data.kaggle_csv import (
        LABELLED_COLUMNS,
        PIXEL_COLUMNS,
        DigitSet,
        read_kaggle_csv,
    )
    from digit_recognizer.errors import DataError

HEADERS = (
    b"",
    ",".join(LABELLED_COLUMNS).encode() + b"\n",
    ",".join(PIXEL_COLUMNS).encode() + b"\n",
)
# In build/ (ignored), not a temporary folder: libFuzzer exits without Python's atexit hooks.
FOLDER = Path(__file__).resolve().parent.parent / "build" / "fuzz" / "csv_reader-scratch"
FOLDER.mkdir(parents=True, exist_ok=True)


def outcome(read) -> DigitSet | str:
    try:
        return read()
    except DataError as error:
        return str(error)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    path = FOLDER / "input.csv"
    path.write_bytes(HEADERS[data[0] % 3] + data[2:])
    expected = outcome(lambda: read_kaggle_csv(path))

    def read_in_pieces() -> DigitSet:
        manifest = shards.resolve_data_source(path)
        return shards.concat_rows(list(shards.read_chunks(manifest.shards[0], manifest.has_labels)))

    with mock.patch.object(shards, "CHUNK_BYTES", 1 + data[1] * 16):
        in_pieces = outcome(read_in_pieces)
    if isinstance(expected, str) or isinstance(in_pieces, str):
        assert in_pieces == expected, (in_pieces, expected)
    else:
        assert (in_pieces.images == expected.images).all()
        assert expected.labels is None or (in_pieces.labels == expected.labels).all()


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
