"""Atomic file output: a crash or a kill never leaves a half-written result behind."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digit_recognizer.errors import DigitsError, OutputError

LOCK_FILE = ".lock"


def make_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory, made with its parents if need be; ``OutputError`` when a file
    stands where it, or a folder above it, would be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # FileExistsError, NotADirectoryError, PermissionError
        raise OutputError(f"{path}: cannot be made a directory ({error.strerror or error}); "
                          "give another") from None  # fmt: skip
    return path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk and renamed over it.

    Any writer can use it (pyarrow, matplotlib, safetensors, torch.save): the rename is atomic on
    POSIX, so readers see either the old file or the complete new one, never a torn write.
    """
    path = refuse_special_file(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates 0600, and some writers make the file anew (safetensors does, 0600
        # again): give the result the permissions a plain open() would have.
        tmp.chmod(0o666 & ~umask)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        try:
            os.replace(tmp, path)
        except OSError as error:  # a directory of that name, most often
            raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from None
    finally:
        tmp.unlink(missing_ok=True)


def refuse_special_file(path: Path) -> Path:
    """``path``, unless it is a device, a pipe or a socket (/dev/stdout, /dev/null): the rename
    of a new file over it would replace the device node itself (as root, for every process)."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OutputError(f"{path}: not a regular file (a device or a pipe), which is written "
                          "by replacing it; give a file's path")  # fmt: skip
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's SHA-256 (hex), read in blocks: memory stays flat for files of any size."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def locked_dir(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a run directory) or fail at once with the holder.

    An OS file lock (flock), not a marker file: the kernel releases it when the holder exits,
    even by SIGKILL, so an interrupted run can be resumed without clearing anything by hand.
    """
    folder = make_dir(folder)
    with open(folder / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DigitsError(
                f"{folder} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        try:
            yield folder
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
