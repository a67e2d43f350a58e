"""Does the preprocessing lose a form's box cropped at its lines when the photo is turned?

A drawn 1 (a thick stroke, slanted a little) in a box cropped at its lines, on pages of three
shapes, the box's lines 3, 5 and 8 pixels wide, turned either way as a hand-held photo turns a
page: each side of the box then runs out of the image across the side it ran along, and the 1
is the longest straight stroke in the photo. Prepared as `digits predict-image` prepares a photo
(``load_image``), each is compared with the same page without the box; printed: the correlation
of the two 28 x 28 digits (1.00: the box went, and nothing else did), and how many pages lost
their box. No model is needed.

    .venv/bin/python benchmarks/turned_boxes.py
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image, ImageDraw

from digit_recognizer.data.images import load_image

PAGES = ((300, 400), (200, 200), (400, 300))
WIDTHS = (3, 5, 8)
ANGLES = (-10, -7, -5, -3, 3, 5, 7, 10)
SAME = 0.99  # correlation above which the boxed page reads as the plain one


def photo(size: tuple[int, int], box_width: int, angle: float) -> np.ndarray:
    """The page with its 1 (and its box, unless ``box_width`` is 0), turned by ``angle``."""
    width, height = size
    page = Image.new("L", size, 255)
    pen = ImageDraw.Draw(page)
    stroke = (width * 0.5, height * 0.15, width * 0.57, height * 0.85)
    pen.line(stroke, fill=0, width=int(0.08 * width))
    if box_width:
        pen.rectangle((0, 0, width - 1, height - 1), outline=0, width=box_width)
    buffer = io.BytesIO()
    page.rotate(angle, Image.Resampling.BILINEAR, fillcolor=255).save(buffer, "PNG")
    return load_image(buffer.getvalue())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    print(f"{'page':<10}{'box':>5}" + "".join(f"{angle:>7}" for angle in ANGLES))
    n_lost = 0
    for size in PAGES:
        for box_width in WIDTHS:
            row = []
            for angle in ANGLES:
                boxed, plain = photo(size, box_width, angle), photo(size, 0, angle)
                similarity = np.corrcoef(boxed.ravel(), plain.ravel())[0, 1]
                n_lost += similarity > SAME
                row.append(f"{similarity:>7.2f}")
            print(f"{size[0]}x{size[1]:<6}{box_width:>5}" + "".join(row), flush=True)
    print(f"box lost on {n_lost} of {len(PAGES) * len(WIDTHS) * len(ANGLES)} pages")


if __name__ == "__main__":
    main()
