"""Reader for LeCun's IDX format (the MNIST distribution files), gzip or plain."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from digit_recognizer.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
_UNSIGNED_BYTE = 0x08  # the only element type MNIST uses


def read_idx(path: str | Path) -> NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes into an array of the shape its header declares.

    Raises ``DataError`` naming the file when the magic number, element type or size is wrong.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:  # a folder, no permission: not the gzip's fault
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != _UNSIGNED_BYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    n_dims = raw[3]
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size:  # else the sizes cut off read as 0, or as a part of a size
        raise DataError(
            f"{path}: the header's {n_dims} dimension sizes end at byte {header_size} but the "
            f"file has {len(raw)} bytes; the file is truncated or corrupt"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    # math.prod, not np.prod: a forged shape (65536,) * 4 wraps int64 to 0 bytes, which an empty
    # body then matches, and reshape raises a ValueError instead of this DataError.
    expected = header_size + math.prod(shape)
    if len(raw) != expected:
        raise DataError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file has "
            f"{len(raw)} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
