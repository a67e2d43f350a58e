"""Coverage-guided fuzzing (atheris) of image preprocessing, as `digits predict-image` and the
API's uploads run it: ``load_image`` on arbitrary bytes either returns a uint8 (28, 28) digit
or raises ``DataError``; any other exception is a crash.

    make fuzz                                                   # every target, FUZZ_SECONDS each
    .venv/bin/python fuzz/image_preprocessing.py build/fuzz/image_preprocessing \
        fuzz/corpus/image_preprocessing -max_total_time=60 -max_len=4096

Pillow's own Python decoders (PNG chunks, TIFF tags, EXIF, GIF frames) are instrumented too:
they are where malformed files go wrong. A crash becomes a test in tests/test_properties.py.
"""

from __future__ import annotations

import sys
import warnings

import atheris

with atheris.instrument_imports(include=["PIL", "digit_recognizer"]):
    import numpy as np

    from digit_recognizer.data.images import load_image
    from digit_recognizer.errors import DataError

# The server's default is 25 M pixels; 1 M keeps each run fast and still trips the bomb check.
MAX_PIXELS = 1_000_000


def test_one_input(data: bytes) -> None:
    try:
        digit = load_image(data, "upload.png", max_pixels=MAX_PIXELS)
    except DataError:
        return
    assert digit.dtype == np.uint8 and digit.shape == (28, 28), (digit.dtype, digit.shape)


if __name__ == "__main__":
    warnings.simplefilter(
        "ignore", UserWarning
    )  # Pillow's "Corrupt EXIF data" on every other input
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
