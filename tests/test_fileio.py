"""Atomic file output: a writer that fails part-way leaves the old file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from digit_recognizer.errors import OutputError
from digit_recognizer.fileio import atomic_path


def test_a_writer_that_fails_leaves_the_old_file_whole_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    # A crash mid-write (a full disk, a bug in the writer) must not tear the last good result:
    # the half-written bytes go to a temporary file, which is removed.
    target = tmp_path / "metrics.json"
    target.write_bytes(b'{"accuracy": 0.99}\n')
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b'{"accur')
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b'{"accuracy": 0.99}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_device_is_not_replaced_by_the_file_written_over_it(tmp_path: Path) -> None:
    # Writing atomically renames a new file over the target: /dev/null itself would go.
    with (
        pytest.raises(OutputError, match="/dev/null: not a regular file"),
        atomic_path("/dev/null"),
    ):
        pass
    assert Path("/dev/null").is_char_device()
