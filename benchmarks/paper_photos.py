"""Digits on paper: how a model reads replica test digits photographed on a form or ruled page,
or in uneven light.

Each digit is drawn dark on light paper, 84 pixels high in the middle of a 200 x 200 page, with
the page's lines: none, a box around it (inset, cropped at its lines, 8 pixels thick), an
underline, a line it is written on (its lowest ink touches it), dark lines ruled every
40 pixels across it, or squared paper's grey grid; then the page is turned by each angle, as a
hand-held photo turns it, and read as `digits predict-image` reads a photo (``to_mnist``).
Printed: errors per kind and angle.

Then the plain page photographed in uneven light: light falling off across it, and the shadow of
a phone or a hand, half as bright as the lit paper (the ink too), its edge a straight line at a
random angle beside the digit or across it, hard (a pixel or two of penumbra) or soft. And the
plain page with what lies around it in a photo: a dark desk filling the photo's border (the page
turned too), a desk along one side of the photo, a dark strip along its bottom.

Checks that the line removal leaves digits alone (their errors should match the plain
page's): the same digits cropped tight to their ink and enlarged x6, where a 7's bar spans the
image as a line would, drawn as they are, with a thin pen (a 9 x 9 erosion) and with a marker
(an 11 x 11 dilation, whose strokes fill half the band the paper's level is judged by).

    .venv/bin/python benchmarks/paper_photos.py runs/cnn --replica-seed 577215 --tta
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from beyond_mnist import add_model_arguments  # run from benchmarks/: its folder is on the path
from digit_recognizer.data.images import to_mnist
from digit_recognizer.data.kaggle_csv import read_kaggle_csv, read_submission
from digit_recognizer.data.replica import cached_replica
from digit_recognizer.errors import ConfigError
from digit_recognizer.predict import PredictConfig, Predictor
from script import count, flag_checks, run_script  # run from benchmarks/: its folder is on the path

PAGE = 200
PAPER, LINE = 235, 20
SHADE = 0.5
DIGIT_SIDE, DIGIT_TOP = 84, 58
TEST_DIGITS = 28_000  # in a replica's test.csv, as in Kaggle's


def boxed(inset: int, thickness: int) -> Callable[[NDArray[np.float32], NDArray[np.uint8]], None]:
    def draw(page: NDArray[np.float32], digit: NDArray[np.uint8]) -> None:
        near, far = inset, PAGE - inset - thickness
        page[near : near + thickness, near : far + thickness] = LINE
        page[far : far + thickness, near : far + thickness] = LINE
        page[near : far + thickness, near : near + thickness] = LINE
        page[near : far + thickness, far : far + thickness] = LINE

    return draw


def underlined(page: NDArray[np.float32], digit: NDArray[np.uint8]) -> None:
    page[150:153, 10:190] = LINE


def on_a_line(page: NDArray[np.float32], digit: NDArray[np.uint8]) -> None:
    lowest = DIGIT_TOP + np.flatnonzero((digit > 128).any(axis=1)).max()
    page[lowest - 1 : lowest + 2, 10:190] = LINE


def ruled(page: NDArray[np.float32], digit: NDArray[np.uint8]) -> None:
    for y in range(20, PAGE, 40):
        page[y : y + 2] = 40


def squared(grey: int) -> Callable[[NDArray[np.float32], NDArray[np.uint8]], None]:
    """Squared paper: one-pixel lines of ``grey`` every 28 pixels both ways (the digit spans
    three squares), under the ink."""

    def draw(page: NDArray[np.float32], digit: NDArray[np.uint8]) -> None:
        for position in range(14, PAGE, 28):
            page[position] = np.minimum(page[position], grey)
            page[:, position] = np.minimum(page[:, position], grey)

    return draw


KINDS = {
    "plain page": lambda page, digit: None,
    "box, inset 15 px": boxed(15, 3),
    "box, cropped at its lines": boxed(0, 3),
    "box, 8 px thick": boxed(15, 8),
    "underline": underlined,
    "written on a line": on_a_line,
    "ruled every 40 px": ruled,
    "squared, grey 150 lines": squared(150),
    "squared, grey 120 lines": squared(120),
}


def shadow(rng: np.random.Generator, across_digit: bool, penumbra: float) -> NDArray[np.float32]:
    """The share of light reaching each pixel of a page half in a shadow (SHADE) with a straight
    edge: through the digit's box, or beside it (clear of the box's corners)."""
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(-30, 30) if across_digit else rng.uniform(62, 85)
    rows, columns = np.mgrid[0:PAGE, 0:PAGE] - PAGE / 2
    beyond_edge = np.cos(angle) * columns + np.sin(angle) * rows > distance
    return ndimage.gaussian_filter(np.where(beyond_edge, SHADE, 1.0), penumbra)


LIGHTS = {
    "light falling off to 55 %": lambda rng: np.linspace(1, 0.55, PAGE)[None, :],
    "shadow beside the digit": lambda rng: shadow(rng, across_digit=False, penumbra=1),
    "shadow across the digit": lambda rng: shadow(rng, across_digit=True, penumbra=1),
    "  its edge soft": lambda rng: shadow(rng, across_digit=True, penumbra=6),
}


DESK = 35


def on_a_desk(page: NDArray[np.uint8], angle: float = 0) -> NDArray[np.uint8]:
    """The page photographed on a dark desk that fills the photo's border, turned by ``angle``."""
    desk = np.full((PAGE + 80, PAGE + 80), DESK, dtype=np.uint8)
    desk[40:-40, 40:-40] = page
    return np.asarray(
        Image.fromarray(desk).rotate(angle, Image.Resampling.BILINEAR, fillcolor=DESK)
    )


def beside(
    region: tuple[slice, slice], grey: int
) -> Callable[[NDArray[np.uint8]], NDArray[np.uint8]]:
    def photograph(page: NDArray[np.uint8]) -> NDArray[np.uint8]:
        page = page.copy()
        page[region] = grey
        return page

    return photograph


SURROUNDINGS = {
    "on a dark desk": on_a_desk,
    "  turned 10 degrees": lambda page: on_a_desk(page, angle=10),
    "a desk along one side": beside(np.s_[:, :30], DESK),
    "dark strip along the bottom": beside(np.s_[-14:, :], 40),
}


def photo(image: NDArray[np.uint8], draw_lines: Callable, angle: float) -> NDArray[np.uint8]:
    """An MNIST digit (ink bright) drawn on a page with lines, the page turned by ``angle``."""
    side = (DIGIT_SIDE, DIGIT_SIDE)
    digit = np.asarray(Image.fromarray(image).resize(side, Image.Resampling.BILINEAR))
    page = np.full((PAGE, PAGE), PAPER, dtype=np.float32)
    spot = page[DIGIT_TOP : DIGIT_TOP + DIGIT_SIDE, DIGIT_TOP : DIGIT_TOP + DIGIT_SIDE]
    np.minimum(spot, (255 - digit.astype(np.float32)) * PAPER / 255, out=spot)
    draw_lines(page, digit)
    turned = Image.fromarray(page.astype(np.uint8)).rotate(
        angle, Image.Resampling.BILINEAR, fillcolor=PAPER
    )
    return np.asarray(turned)


def tight_crop(image: NDArray[np.uint8], erosion: int = 0, dilation: int = 0) -> NDArray[np.uint8]:
    """An MNIST digit cropped to its ink, enlarged x6, dark on light; thinner with ``erosion``,
    bolder (a marker, its strokes still cropped where the pen's were) with ``dilation``."""
    rows, columns = np.nonzero(image)
    crop = image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    size = (crop.shape[1] * 6, crop.shape[0] * 6)
    big = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    if erosion:
        big = ndimage.grey_erosion(big, size=erosion)
    if dilation:
        big = ndimage.grey_dilation(big, size=dilation)
    return 255 - big


def parse_angles(text: str) -> list[float]:
    """--angles' comma-separated degrees; ``ConfigError`` names the first that is not a finite
    number (an empty one, "0,,3", had ended in float()'s traceback)."""
    angles = []
    for part in text.split(","):
        try:
            angle = float(part)
        except ValueError:
            angle = math.nan
        if not math.isfinite(angle):
            raise ConfigError(f"--angles '{text}': '{part}' is not a number of degrees; give "
                              "numbers separated by commas, e.g. 0,3,5")  # fmt: skip
        angles.append(angle)
    return angles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--images", type=count, default=300, help="test digits drawn per page kind")
    parser.add_argument("--angles", default="0,3,5,8,10", help="angles the page is turned by")
    args = parser.parse_args()
    with flag_checks(parser):  # before the model loads
        angles = parse_angles(args.angles)
        if args.images > TEST_DIGITS:  # had ended in numpy's traceback, drawing them
            raise ConfigError(f"--images must be at most {TEST_DIGITS:,}, the replica's test "
                              f"digits, got {args.images:,}")  # fmt: skip

    predictor = Predictor.load(args.runs, PredictConfig(tta=args.tta))
    files = cached_replica(args.replica_seed)
    chosen = np.random.default_rng(0).choice(TEST_DIGITS, args.images, replace=False)
    test = read_kaggle_csv(files.test).images[chosen]
    labels = read_submission(files.solution)[chosen]

    def errors(photos: list[NDArray[np.uint8]]) -> int:
        digits = np.stack([to_mnist(image) for image in photos])
        return int((predictor.predict(digits) != labels).sum())

    print(f"errors of {args.images} digits, page turned by (degrees):")
    print(f"{'page':<28}" + "".join(f"{angle:>7g}" for angle in angles))
    for name, draw_lines in KINDS.items():
        counts = [errors([photo(image, draw_lines, angle) for image in test]) for angle in angles]
        print(f"{name:<28}" + "".join(f"{count:>7}" for count in counts), flush=True)
    print(f"\n{'plain page, lit unevenly':<28}")
    for name, light in LIGHTS.items():
        rng = np.random.default_rng(1)
        pages = [photo(image, KINDS["plain page"], 0) * light(rng) for image in test]
        print(f"{name:<28}{errors([page.astype(np.uint8) for page in pages]):>7}", flush=True)
    print(f"\n{'plain page, what lies around':<28}")
    for name, surround in SURROUNDINGS.items():
        pages = [surround(photo(image, KINDS["plain page"], 0)) for image in test]
        print(f"{name:<28}{errors(pages):>7}", flush=True)
    print(f"\n{'cropped tight to the ink':<28}{errors([tight_crop(image) for image in test]):>7}")
    thin = errors([tight_crop(image, erosion=9) for image in test])
    print(f"{'  and drawn with a thin pen':<28}{thin:>7}")
    bold = errors([tight_crop(image, dilation=11) for image in test])
    print(f"{'  and drawn with a marker':<28}{bold:>7}")


if __name__ == "__main__":
    run_script(main)
