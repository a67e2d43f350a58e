"""Beyond MNIST: how a model reads digits that MNIST's writers, pens and scanner did not make.

Two kinds of test, each printed as accuracy and error count:

- Real digits from another collection: scikit-learn's copy of the UCI optical digits test set,
  1,797 digits by 13 writers who are not in MNIST, scanned at 32 x 32 and averaged down to 8 x 8
  with 17 grey levels. Read once as `digits predict-image` reads an image (``to_mnist``), and
  once as a 28 x 28 CSV might hold them (upscaled to fill the frame), predicted as they are
  (``--as-is``) and conformed to MNIST's layout (the default); then made as Semeion made its
  digits (stretched to fill 16 x 16 both ways, binarised), conformed alone and read as `digits
  predict` reads such a file (each digit at the width the model reads most surely:
  ``predict.unstretched``).
- The replica's test images (never trained on) as other pens and scanners would have made them:
  thicker strokes (a marker: a 3 x 3 dilation, fully or half-way), thinner ones (half-way to a
  3 x 3 erosion), blurred (3 x 3 box) and faint (ink at 40 %). The stroke changes are the
  transform that ``--stroke`` augments with, so a model trained with it sees them coming; the
  UCI digits are the independent check.
- The replica's test 1s and 7s written as much of Europe writes them: 1s with a foot and a long
  flag (ambiguous without the foot: that is a 7 to American eyes), 7s with a bar across the
  stem. Drawn with Pillow on a 4x enlargement (not the training augmentation's code, which
  ``--styles`` draws on the digit's own grid), then conformed as `digits predict` does.
- The replica's test images with dust on the scan (three 2 x 2 specks each, at random places),
  predicted as they are and conformed as `digits predict` does; conforming drops the specks
  that would otherwise stretch the crop (``data.images._without_specks``).

    .venv/bin/python benchmarks/beyond_mnist.py runs/cnn                # trained by `digits run`
    .venv/bin/python benchmarks/beyond_mnist.py runs/a runs/b --tta --replica-seed 4242
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits

from digit_recognizer.data.augment import change_stroke_width
from digit_recognizer.data.images import conform_to_mnist, to_mnist
from digit_recognizer.data.kaggle_csv import read_kaggle_csv, read_submission
from digit_recognizer.data.replica import cached_replica
from digit_recognizer.data.tensors import to_model_input, to_uint8_images
from digit_recognizer.predict import PredictConfig, Predictor, predict_rows
from script import replica_seed, run_script  # run from benchmarks/: its folder is on the path


def uci_digits() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The 1,797 UCI digits as uint8 (N, 8, 8), ink bright, and their labels."""
    digits = load_digits()
    return (digits.images * 255 / 16).round().astype(np.uint8), digits.target


def fill_frame(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Small images upscaled (bilinear) to fill 28 x 28, as a CSV of another collection holds
    them."""
    x = to_model_input(torch.as_tensor(images))
    return to_uint8_images(F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False))


def scanner_variants(images: NDArray[np.uint8]) -> dict[str, NDArray[np.uint8]]:
    """MNIST images as other pens and scanners would have made them."""
    x = to_model_input(torch.as_tensor(images))

    def stroke(amount: float) -> torch.Tensor:
        return change_stroke_width(x, torch.tensor(amount))

    variants = {
        "as in MNIST": x,
        "thicker strokes (marker)": stroke(1.0),
        "thicker strokes, half-way": stroke(0.5),
        "thinner strokes, half-way": stroke(-0.5),
        "blurred (3 x 3)": F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),
        "faint ink (40 %)": x * 0.4,
    }
    return {name: to_uint8_images(variant) for name, variant in variants.items()}


def dusty(images: NDArray[np.uint8], specks: int = 3, seed: int = 0) -> NDArray[np.uint8]:
    """``images`` with ``specks`` 2 x 2 specks of full ink each, at random places."""
    rng = np.random.default_rng(seed)
    dirty = images.copy()
    rows, columns = rng.integers(0, 27, size=(2, len(images), specks))
    for offset in np.ndindex(2, 2):
        dirty[np.arange(len(images))[:, None], rows + offset[0], columns + offset[1]] = 255
    return dirty


def as_semeion_made_its_own(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Each image as Semeion made its digits: binarised (here at 32 x 32, the UCI scans' size),
    its ink box stretched to fill 16 x 16 both ways (a 1 as wide as a 0); then upscaled to fill
    28 x 28."""

    def stretched(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        scan = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
        rows, columns = np.nonzero(scan >= 128)
        ink = Image.fromarray(scan[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1])
        small = np.asarray(ink.resize((16, 16), Image.Resampling.NEAREST))
        return np.where(small >= 128, 255, 0).astype(np.uint8)

    return fill_frame(np.stack([stretched(image) for image in images]))


def european_styles(
    images: NDArray[np.uint8], labels: NDArray[np.int64]
) -> dict[str, tuple[NDArray[np.uint8], NDArray[np.int64]]]:
    """The 1s with a foot and a flag (40 % of their height, 35 degrees down), and the 7s with a
    bar (60 % of their width, 55 % of the way down), each drawn 2.2 px wide; with their labels."""
    enlarge = 4

    def with_strokes(image: NDArray[np.uint8], strokes: list[tuple[float, ...]]) -> NDArray:
        big = Image.fromarray(image).resize((28 * enlarge, 28 * enlarge), Image.BILINEAR)
        draw = ImageDraw.Draw(big)
        for stroke in strokes:  # pixel centres of the 28 x 28 grid, enlarged
            draw.line([c * enlarge + enlarge / 2 for c in stroke], fill=255, width=9)
        return np.asarray(big.resize((28, 28), Image.BOX))

    def extent(image: NDArray[np.uint8]) -> tuple[int, int, NDArray[np.int64]]:
        rows, columns = np.nonzero(image > 128)
        return rows.min(), rows.max(), columns

    def centre(image: NDArray[np.uint8], row: int) -> float:
        return float(np.nonzero(image[row] > 128)[0].mean())

    def european_one(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        top, bottom, _ = extent(image)
        flag, foot, angle = 0.4 * (bottom - top), 0.35 * (bottom - top), np.radians(35)
        stem_top, stem_bottom = centre(image, top), centre(image, bottom)
        return with_strokes(image, [
            (stem_top, top, stem_top - flag * np.cos(angle), top + flag * np.sin(angle)),
            (stem_bottom - foot / 2, bottom, stem_bottom + foot / 2, bottom),
        ])  # fmt: skip

    def crossed_seven(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        top, bottom, columns = extent(image)
        row = round(top + 0.55 * (bottom - top))
        half = 0.3 * (columns.max() - columns.min() + 1)
        stem = centre(image, row) if (image[row] > 128).any() else columns.mean()
        return with_strokes(image, [(stem - half, row, stem + half, row)])

    ones, sevens = labels == 1, labels == 7
    return {
        "1s with a foot and a flag": (np.stack([european_one(i) for i in images[ones]]),
                                      labels[ones]),
        "7s with a bar": (np.stack([crossed_seven(i) for i in images[sevens]]), labels[sevens]),
    }  # fmt: skip


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The models to measure, and the replica they trained on (its test images are unseen)."""
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (an ensemble)")
    parser.add_argument("--tta", action="store_true", help="predict with test-time augmentation")
    parser.add_argument("--replica-seed", type=replica_seed, default=0,
                        help="the replica the runs trained on (digits run's: 0)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    args = parser.parse_args()

    predictor = Predictor.load(args.runs, PredictConfig(tta=args.tta))
    rows = []

    def score(name: str, images: NDArray[np.uint8], labels: NDArray[np.int64]) -> None:
        score_read(name, predictor.predict(images), labels)

    def score_read(name: str, read: NDArray[np.int64], labels: NDArray[np.int64]) -> None:
        errors = int((read != labels).sum())
        rows.append((name, len(labels), 1 - errors / len(labels), errors))

    uci, uci_labels = uci_digits()
    score("UCI digits, read as images", np.stack([to_mnist(image) for image in uci]), uci_labels)
    framed = fill_frame(uci)
    score("UCI digits, 28 x 28 CSV, as-is", framed, uci_labels)
    score("UCI digits, 28 x 28 CSV, conformed", conform_to_mnist(framed)[0], uci_labels)
    stretched = as_semeion_made_its_own(uci)
    score("UCI digits made as Semeion's, conformed", conform_to_mnist(stretched)[0], uci_labels)
    read = predict_rows(predictor, stretched, PredictConfig(), "stretched").argmax(axis=1)
    score_read("UCI digits made as Semeion's, as predict reads them", read, uci_labels)

    files = cached_replica(args.replica_seed)
    test = read_kaggle_csv(files.test).images
    solution = read_submission(files.solution)
    for name, images in scanner_variants(test).items():
        score(f"replica test: {name}", images, solution)
    for name, (images, labels) in european_styles(test, solution).items():
        score(f"replica test: {name}, conformed", conform_to_mnist(images)[0], labels)
    dirty = dusty(test)
    score("replica test: dust specks, as-is", dirty, solution)
    score("replica test: dust specks, conformed", conform_to_mnist(dirty)[0], solution)

    print(f"\n{'test set':<54} {'images':>7} {'accuracy':>9} {'errors':>7}")
    for name, n_images, accuracy, errors in rows:
        print(f"{name:<54} {n_images:>7,} {accuracy:>9.4f} {errors:>7,}")


if __name__ == "__main__":
    run_script(main)
