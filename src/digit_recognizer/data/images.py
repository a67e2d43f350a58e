"""Arbitrary images (drawings, scans, photos) -> MNIST-format uint8 (28, 28) digits.

MNIST itself was made this way (LeCun et al.): each NIST digit was fitted into a 20 x 20 box,
keeping its aspect ratio, with anti-aliasing, then placed in a 28 x 28 field so that its centre of
mass sits at the centre. Doing the same to a user's image is what makes a net trained on MNIST
work on it. `digits predict-image`, the server's uploads and the draw-a-digit page all come here.

    images = np.stack([load_image(path) for path in paths])   # uint8 (N, 28, 28)
    images, n_redone = conform_to_mnist(csv_images)          # 28 x 28 digits from elsewhere
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from sklearn.utils.validation import column_or_1d

from digit_recognizer.data.form_lines import without_lines
from digit_recognizer.data.kaggle_csv import N_PIXELS, DigitSet
from digit_recognizer.data.lighting import (
    BORDER,
    MIN_CONTRAST,
    MIN_PHOTO_SIDE,
    flatten_lighting,
    opened_along_sides,
    paper_along_border,
    unevenly_lit,
)
from digit_recognizer.data.surroundings import sheet_on_a_desk, without_border_regions
from digit_recognizer.errors import DataError

# Decompression-bomb limit: a 10 kB PNG can declare 50,000 x 50,000 pixels (2.5 GB decoded).
# 25 M pixels still admits a 24-megapixel phone photo (6000 x 4000).
MAX_IMAGE_PIXELS = 25_000_000
BOX = 20  # MNIST fits each digit into 20 x 20 ...
SIZE = 28  # ... and centres it in 28 x 28
CENTRE = 14
# Ink is what stands out from the background by more than this fraction of the contrast range;
# 0.25 keeps faint pen strokes and drops paper texture and JPEG ringing in photos.
INK_THRESHOLD = 0.25
FAINT_INK_THRESHOLD = 0.1  # joins a blob's parts in small images: see _without_specks
# Specks (dust, scanner noise) are dropped before the crop (_without_specks): blobs of ink with
# under 5 % of the largest blob's mass anywhere, or under 15 % of it more than 0.2 of that blob's
# long side away from it. On 4,000 replica test digits, all forced through to_mnist, errors:
# clean 9 -> 9, three 2 x 2 specks 40 -> 17, 2 % salt noise 161 -> 18, Gaussian noise (sigma 40)
# 87 -> 15; the UCI digits read as images 44 -> 44 (15 %: a 6 broken in two kept whole).
SPECK_FRACTION = 0.05
STRAY_FRACTION = 0.15
STRAY_MARGIN = 0.2
# In a photo, ink spanning under 4 pixels as prepared (a 12-megapixel photo at 1/8 scale: under
# 32 pixels as taken) is a speck on a blank page, not a digit.
MIN_DIGIT_PIXELS = 4
# Ink on under INK_PERCENTILE of an image is ink only where it stands further from the paper
# than this many times the paper's own noise (its standard deviation).
NOISE_SIGMAS = 6
# Percentile of the pixels taken as the darkest and the brightest when deciding which way the
# ink goes: ink covers well over 0.1 % of any image with a digit, a speck of dust less.
INK_PERCENTILE = 0.1
# A form's box is searched for in images from this size (a 5 mm box scanned at 200 dpi is 40
# pixels): a 28 x 28 CSV row's digit fills its frame.
MIN_LINES_SIDE = 32
# How far MNIST's own layout goes: across all 70,000 images the ink's bounding box is 20 pixels
# on its long side (19 for 16 of them) and the centre of mass within 0.52 px of (14, 14) on
# each axis.
MNIST_BOX_SIDES = (19, 20)
MAX_CENTRE_OFFSET = 1.0
# Rows whose ink's side their edges settle, at least, before a file's are taken to agree on it.
MIN_SETTLED_ROWS = 8
# A collection stretched to fill its frame both ways (Semeion's) has lost its digits' widths: a
# 1 there is as wide as a 0. Once conformed, 98 % of Semeion's digits fill MNIST's box both ways
# (of MNIST's own 20 %, of USPS's 21 %, of ARDIS's 45 %): a file this much of whose digits do
# was stretched (predict.reads_stretched).
STRETCHED_SHARE = 0.9
# Such a digit is tried at these fractions of its width, MNIST's digits' width over height at
# their 10th, 30th, 50th and 70th percentiles (at the 90th it is 1.0, the digit as it is).
NARROWINGS = (0.5, 0.7, 0.8, 0.9)
# How far a digit leans (slants): the ink's covariance(x, y) / variance(y), LeCun's deskew measure,
# x to the right and y down, so a digit leaning forward (its top to the right) has a negative
# slant. MNIST's 70,000 average MNIST_SLANT; its test set's two writer groups -0.01 (Census
# employees) and -0.18 (students). ARDIS's Swedish clerks -0.50, CVL's Austrians -0.05.
MNIST_SLANT = -0.11
# A bar across a 7's stem (crosses_stem): in the middle of the ink's height, from 30 % to 75 % of
# it down, a row's longest run of ink at least this many pixels longer than the stem's (the
# median row's from 30 % down to the foot). Ink there is 40 % of the digit's brightest pixel or
# more, so that a grey scan's thin bar counts. By this measure 82 % of CVL's 7s (Austrian
# writers) have one, 14 % of MNIST's 7s and 1 % of its 1s, and 12 % of the CVL 1s (a long flag,
# no foot) a net reads as 7.
CROSSBAR_PIXELS = 4
CROSSBAR_ROWS = (0.3, 0.75)
CROSSBAR_INK = 0.4
# JPEG decodes at 1/2, 1/4 or 1/8 scale for free; a digit needs far fewer than 256 pixels.
# Other images are shrunk as much before the rest of to_mnist (_reduced).
DRAFT_SIZE = (256, 256)
MAX_REDUCTION = 8
# What a scan, a phone or a browser writes, and PBM/PGM/PPM. Pillow opens some 40 formats; the
# rest (DDS, BLP, ...) raised errors of their own on a few hundred bytes (a 500 from the server),
# and EPS goes to Ghostscript where it is installed.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


class _InkSide(NamedTuple):
    """Where an image's ink lies against its paper."""

    background: float  # the paper's level, 0-255
    contrast: float  # how far the ink reaches from it
    is_dark: bool  # whether the ink is darker than the paper


def load_image(
    source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> NDArray[np.uint8]:
    """Read an image file (or its bytes) and return the digit as MNIST does, uint8 (28, 28).

    Parameters
    ----------
    source : a path, or the bytes of a PNG, JPEG, GIF, BMP, TIFF, WebP or PBM/PGM/PPM file
    name : how messages refer to the image (default: the path, or "image" for bytes)
    max_pixels : larger images are refused before decoding (decompression bombs)

    Raises ``DataError`` naming the image when it is unreadable, too large or blank.
    """
    if name is None:
        name = str(source) if isinstance(source, str | Path) else "image"
    try:
        with _open(source, name) as image:
            n_pixels = image.width * image.height
            if n_pixels > max_pixels:
                raise DataError(
                    f"{name}: {image.width} x {image.height} = {n_pixels:,} pixels is over the "
                    f"limit of {max_pixels:,}; scale the image down"
                )
            image.draft("L", DRAFT_SIZE)  # a no-op except for JPEG
            grey = _to_grey(ImageOps.exif_transpose(image))
    # Truncated or corrupt data. TypeError too: Pillow 13 raises it while loading a TIFF whose
    # StripOffsets tag holds text (found by fuzz/image_preprocessing.py).
    # NotImplementedError: a mode or compression Pillow's decoders do not handle.
    except (OSError, SyntaxError, ValueError, TypeError, NotImplementedError) as error:
        raise DataError(f"{name}: cannot decode the image ({error})") from None
    return to_mnist(grey, name)


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    """Open lazily (header only); DataError for missing files, non-images and bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            file = io.BytesIO(source) if isinstance(source, bytes) else source
            return Image.open(file, formats=IMAGE_FORMATS)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected an image file") from None
    except UnidentifiedImageError:
        if _is_empty(source):  # an upload of nothing had been "not an image file"
            raise DataError(f"{name}: an empty file (0 bytes); give the image's file") from None
        raise DataError(f"{name}: not an image file of a kind read here (PNG, JPEG, GIF, BMP, "
                        "TIFF, WebP, PBM/PGM/PPM)") from None  # fmt: skip
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{name}: too many pixels (decompression bomb?); scale it down") from None


def is_image_name(name: str | Path) -> bool:
    """Whether ``name`` ends as a file Pillow opens does (.png, .jpg, .tif, ...)."""
    return Image.registered_extensions().get(Path(name).suffix.lower()) in Image.OPEN


def _is_empty(source: str | Path | bytes) -> bool:
    return len(source) == 0 if isinstance(source, bytes) else Path(source).stat().st_size == 0


def _to_grey(image: Image.Image) -> NDArray[np.uint8]:
    """Greyscale uint8 (H, W). Transparent pixels take the colour that contrasts with the ink,
    so dark strokes on a transparent canvas and light ones both survive."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image)
        grey = _deep_to_grey(values, image.mode)
        if "transparency" not in image.info:
            return grey
        # A 16-bit greyscale PNG's tRNS chunk: the pixels at that one level are transparent.
        opaque = np.not_equal(values, image.info["transparency"]).astype(np.float32)
        return _over_background(grey.astype(np.float32), opaque)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.array(rgba.getchannel("A"), dtype=np.float32)
        alpha /= 255
        grey = np.array(rgba.convert("L"), dtype=np.float32)
        del rgba
        return _over_background(grey, alpha)
    if image.mode == "LAB":  # a Lab TIFF: Pillow converts Lab to no other mode, and L is grey
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _over_background(grey: NDArray[np.float32], alpha: NDArray[np.float32]) -> NDArray[np.uint8]:
    """``grey`` (0-255) laid by its ``alpha`` (0-1) over the background its ink calls for, uint8;
    ``grey`` is worked on in place (uploads up to 25 megapixels)."""
    if alpha.mean() > 0.5:
        # Mostly opaque: a page with transparent margins (a photo turned in an editor), which
        # are more of the page.
        background = float(np.median(grey[alpha > 0.5]))
    else:
        ink_grey = np.dot(grey.ravel(), alpha.ravel()) / max(float(alpha.sum()), 1.0)
        background = 255.0 if ink_grey < 128 else 0.0
    # grey * alpha + background * (1 - alpha)
    grey -= background
    grey *= alpha
    grey += background
    return np.rint(grey, out=grey).astype(np.uint8)


def _deep_to_grey(values: NDArray[np.generic], mode: str) -> NDArray[np.uint8]:
    """16-bit, 32-bit integer or float greyscale (scanners', cameras' and microscopes' output)
    -> uint8.

    Pillow's own conversion to "L" clips these to 0-255, which turns a 16-bit scan's paper and
    ink alike into white. Scaled instead by the range of the smallest bit depth that holds the
    brightest pixel, from 8 bits up (floats: 0-1 when they fit it): a 16-bit file often holds a
    sensor's 10, 12 or 14 bits, and dividing 12-bit data by 65,535 would leave 17 grey levels.
    Floats outside 0-1, and integers below 0, are scaled from their lowest value to their highest.
    """
    # One float32 copy, worked on in place: an upload of 25 megapixels is 100 MB so, where
    # float64 and a temporary per step took 600 MB of a server's memory for a 50 kB PNG.
    values = np.array(values, dtype=np.float32)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    lowest, highest = float(values.min()), float(values.max())
    if lowest < 0 or (mode == "F" and highest > 1):
        # Floats have no full scale (USPS's -1..1, 0..2, z-scores), nor do signed integers (a
        # signed 32-bit TIFF, ink at -1,000 on paper at 0, came out blank when clipped at 0):
        # their own range is theirs.
        values -= lowest
        values /= (highest - lowest) or 1.0
    elif mode != "F":
        values /= max(255.0, 2.0 ** math.ceil(math.log2(highest + 1)) - 1)
    values *= 255
    return np.rint(values, out=values).astype(np.uint8)


def to_mnist(
    grey: NDArray[np.uint8], name: str = "image", dark_ink: bool | None = None
) -> NDArray[np.uint8]:
    """MNIST-style digit uint8 (28, 28), white ink on black, from a greyscale image (H, W).

    Inverts when the background (the median of a band along the edges) is light, or when
    ``dark_ink`` says the ink is the darker level (None: decided from the image), levels a
    photo's uneven lighting, a shadow's hard edge too (flatten_lighting), stretches contrast
    so the background is 0 and the darkest ink 255 (_ink); reads a sheet photographed on a desk
    without the desk (sheet_on_a_desk), removes a form's or ruled paper's lines
    (without_lines), what runs along a side beside the digit (without_border_regions) and
    specks of dust (_without_specks), crops to the ink, fits it into 20 x 20 keeping the
    aspect ratio (Lanczos, anti-aliased) and centres it by centre of mass.
    """
    grey = np.asarray(grey)
    if grey.ndim != 2:  # a colour array (H, W, 3): load_image converts files of any mode
        raise ValueError(f"to_mnist takes a greyscale image (height, width), got shape "
                         f"{grey.shape}; load_image reads colour image files")  # fmt: skip
    if not grey.size:
        raise ValueError(f"to_mnist takes an image of one pixel or more, got shape {grey.shape}")
    is_scaled = grey.dtype.kind == "f" and grey.min() >= 0 and grey.max() <= 1
    if grey.dtype == np.bool_ or is_scaled:  # else "no digit found": 0-1 has too little contrast
        raise ValueError(f"to_mnist takes grey levels 0-255, got {grey.dtype} values in 0-1; "
                         "pass (grey * 255).round().astype(np.uint8)")  # fmt: skip
    if grey.dtype != np.uint8:
        # Pillow shrinks (_reduced) uint8 and float32 arrays alone: a photo's int64 or uint16
        # array raised a TypeError of Pillow's, and NaN failed deep in the preprocessing.
        grey = grey.astype(np.float32)
        if not np.isfinite(grey).all():
            raise ValueError("to_mnist takes grey levels 0-255, got NaN or infinite values")
    pixels = _reduced(grey).astype(np.float32)
    side = _ink_side_given(pixels, _ink_side(pixels, name), dark_ink, name)
    return _to_mnist(pixels, side, name)


def _to_mnist(pixels: NDArray[np.float32], side: _InkSide, name: str) -> NDArray[np.uint8]:
    """``to_mnist`` of an image already reduced, its ink's side read: conform_to_mnist reads
    each row's side before it knows its file's."""
    ink = _ink(pixels, side, name)
    is_photo = min(pixels.shape) >= MIN_PHOTO_SIDE
    if is_photo:
        sheet = sheet_on_a_desk(ink > INK_THRESHOLD, pixels)
        if sheet is not None:
            # The desk around the sheet filled the border band, so the desk was taken for the
            # paper and the sheet for the ink: the desk goes, as the sheet's own level.
            sheet_pixels = np.where(sheet, pixels, np.median(pixels[sheet]))
            ink = _ink(sheet_pixels, _ink_side(sheet_pixels, name), name)
    if min(ink.shape) >= MIN_LINES_SIDE:
        ink = without_lines(ink, ink > INK_THRESHOLD)
    if is_photo:
        ink = without_border_regions(ink, ink > INK_THRESHOLD)
    ink = _without_specks(ink, joined_by_faint_ink=not is_photo)
    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    crop = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    if is_photo and max(crop.shape) < MIN_DIGIT_PIXELS:
        raise DataError(f"{name}: no digit found, only a speck (the image is blank but for it)")
    scale = BOX / max(crop.shape)
    height, width = (max(1, round(length * scale)) for length in crop.shape)
    resized = Image.fromarray(crop * 255).resize((width, height), Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(resized), 0, 255)
    # A fine pen on a large page thins to a faint trace at 20 x 20 (brightest pixel ~50), where
    # every MNIST digit reaches 254-255: brought up to full ink.
    return _centre_by_mass(digit * (255 / digit.max()))


def _ink(pixels: NDArray[np.float32], side: _InkSide, name: str) -> NDArray[np.float32]:
    """How far each pixel stands out from the paper toward the ink, 0-1, its ink's ``side``
    read: uneven light levelled, the contrast stretched. DataError when nothing stands out."""
    background, ink_contrast, is_dark_ink = side
    if is_dark_ink:
        pixels, background = 255 - pixels, 255 - background
    # Size first: conform_to_mnist sends every 28 x 28 CSV row it redoes through here.
    ink_level = background + 0.75 * ink_contrast
    if min(pixels.shape) >= MIN_PHOTO_SIDE:
        along_sides = opened_along_sides(pixels)
        if unevenly_lit(pixels, paper_along_border(pixels, along_sides, ink_level)):
            pixels = flatten_lighting(pixels, along_sides, ink_level, is_dark_ink)
            background = 0.0
    contrast = float(pixels.max()) - background
    if contrast < MIN_CONTRAST:
        raise DataError(f"{name}: no digit found (the image is blank or has too little contrast)")
    return np.clip((pixels - background) / contrast, 0, 1)


def _ink_side(pixels: NDArray[np.float32], name: str) -> _InkSide:
    """The paper's level, the ink's contrast to it and whether the ink is the darker of the two,
    read from the image's edges and extremes. DataError when the image is blank."""
    # The paper's level from a band along the edges, not the outermost pixels alone: a form's
    # box cropped at its lines has a border of ink.
    band = max(1, min(pixels.shape) // 10)
    edges = np.ones(pixels.shape, dtype=bool)
    edges[band:-band, band:-band] = False
    background = float(np.median(pixels[edges]))
    # A bold digit cropped tight fills half that band with its strokes, and its median is then
    # the ink's; the image's rim, which its strokes only touch, is still mostly paper. A rim of
    # one level (a form's box cropped at its lines, plain paper) leaves the band to decide.
    rim = np.concatenate([pixels[side] for side in BORDER])
    rim_level = float(np.median(rim))
    rim_is_mixed = np.ptp(np.percentile(rim, [5, 95])) >= MIN_CONTRAST
    if rim_is_mixed and abs(rim_level - background) >= MIN_CONTRAST:
        background = rim_level
    # Ink lies on the far side of the paper's level from the extremes: dark ink reaches further
    # below it than anything reaches above. Not "is the paper above mid-grey": dim grey paper
    # (a photo in poor light) would then make its dark ink the background.
    darkest, brightest = np.percentile(pixels, [INK_PERCENTILE, 100 - INK_PERCENTILE])
    if max(background - darkest, brightest - background) < MIN_CONTRAST:
        # Ink on under INK_PERCENTILE of the image (a fine pen in a large photo): its extremes,
        # unless they are the paper's own grain (a blank page's noise reaches ~4.5 sigma).
        darkest, brightest = pixels.min(), pixels.max()
        # Sigma from neighbours' differences, which a gradient of light across the page does not
        # widen as it does the paper's spread of levels (robustly: 1.4826 MAD, each step adding
        # two pixels' noise).
        steps = np.diff(pixels, axis=1)[edges[:, 1:] & edges[:, :-1]]
        # (An image one pixel wide has no steps, and no grain to tell.)
        grain = 1.4826 * np.median(np.abs(steps)) / np.sqrt(2) if steps.size else 0.0
        if max(background - darkest, brightest - background) < NOISE_SIGMAS * grain:
            raise DataError(f"{name}: no digit found (the image is blank but for its grain)")
    dark_reach, light_reach = background - darkest, brightest - background
    is_dark_ink = dark_reach > light_reach
    is_photo = min(pixels.shape) >= MIN_PHOTO_SIDE
    if is_photo and min(dark_reach, light_reach) >= MIN_CONTRAST:
        # Far from the paper's median both ways: a shadow across the page (or glare) puts the
        # paper at two levels, both along the edges too; the ink goes past them. Unless the
        # edges hold ink as well (a digit cropped tight to its strokes), where neither does.
        low, high = np.percentile(pixels[edges], [1, 99])
        if abs((low - darkest) - (brightest - high)) >= MIN_CONTRAST:
            is_dark_ink = low - darkest > brightest - high
    return _InkSide(background, dark_reach if is_dark_ink else light_reach, is_dark_ink)


def _ink_side_given(
    pixels: NDArray[np.float32], side: _InkSide, dark_ink: bool | None, name: str
) -> _InkSide:
    """``side`` as read, unless ``dark_ink`` (None: as read) puts the ink on the other side:
    then the paper is the level on the given side of mid-way between the extremes."""
    if dark_ink is None or dark_ink == side.is_dark:
        return side
    darkest, brightest = float(pixels.min()), float(pixels.max())
    middle = (darkest + brightest) / 2
    paper = pixels > middle if dark_ink else pixels < middle
    if not paper.any():
        raise DataError(f"{name}: no digit found (the image is one grey level)")
    background = float(np.median(pixels[paper]))
    contrast = background - darkest if dark_ink else brightest - background
    return _InkSide(background, contrast, dark_ink)


def _reduced(grey: NDArray[np.uint8 | np.float32]) -> NDArray[np.uint8 | np.float32]:
    """``grey`` shrunk as JPEG's draft mode shrinks on decoding (load_image): by a whole factor,
    up to MAX_REDUCTION, that keeps both sides at least DRAFT_SIZE; each pixel the average of
    those it replaces. A 12-megapixel photo is then prepared in a tenth of the time."""
    factor = min(MAX_REDUCTION, min(grey.shape) // DRAFT_SIZE[0])
    if factor < 2:
        return grey
    return np.asarray(Image.fromarray(grey).reduce(factor))


def _without_specks(ink: NDArray[np.float32], joined_by_faint_ink: bool) -> NDArray[np.float32]:
    """``ink`` less its specks (dust, a scanner's noise), which would otherwise stretch the crop
    and shrink the digit. A speck is a blob of ink with under SPECK_FRACTION of the largest
    blob's mass, or under STRAY_FRACTION of it and further from that blob than STRAY_MARGIN of
    its long side: a digit's own detached strokes are large or close to its body.

    ``joined_by_faint_ink``: blobs are told apart only where no faint ink (FAINT_INK_THRESHOLD)
    joins them. A fine pen's stroke in a 28 x 28 row falls apart into dashes at INK_THRESHOLD,
    which would go as specks and leave a bar blown up to 20 pixels; the ink between the dashes
    is faint, not none.
    Default model of replica 577215, errors on 3,000 of its test digits conformed, without and
    with: eroded by 2 x 2 52 -> 36, a finer pen (2,000) 131 -> 107, three 2 x 2 specks 22 -> 22,
    Gaussian noise (sigma 40) 18 -> 23 (docs/results.md, "Conforming fine pens")."""
    is_ink = ink > INK_THRESHOLD
    joined = ink > FAINT_INK_THRESHOLD if joined_by_faint_ink else is_ink
    blobs, n_blobs = ndimage.label(joined, structure=np.ones((3, 3)))
    blobs = np.where(is_ink, blobs, 0)
    if n_blobs < 2:
        return ink
    masses = np.bincount(blobs.ravel(), weights=ink.ravel(), minlength=n_blobs + 1)[1:]
    share = masses / masses.max()
    is_speck = share < SPECK_FRACTION
    if ((share < STRAY_FRACTION) & ~is_speck).any():  # blobs whose distance decides (rare)
        body = int(share.argmax()) + 1
        long_side = max(side.stop - side.start for side in ndimage.find_objects(blobs)[body - 1])
        distance_to_body = ndimage.distance_transform_edt(blobs != body)
        nearest = np.full(n_blobs + 1, np.inf)
        np.minimum.at(nearest, blobs[blobs > 0], distance_to_body[blobs > 0])
        is_speck |= (share < STRAY_FRACTION) & (nearest[1:] > STRAY_MARGIN * long_side)
    return np.where(np.concatenate([[False], is_speck])[blobs], 0, ink)


def _centre_by_mass(digit: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Paste ``digit`` (h, w <= 20) into 28 x 28 with its centre of mass at (14, 14)."""
    height, width = digit.shape
    mass_row, mass_column = _centre_of_mass(digit)
    # MNIST's centres of mass sit at pixel (14, 14) (mean 13.99, 14.00 over 5,000 training
    # images), not at the geometric centre 13.5. The box stays inside the field: a lopsided
    # digit (a "7") is shifted less than its mass says.
    top = int(np.clip(round(CENTRE - mass_row), 0, SIZE - height))
    left = int(np.clip(round(CENTRE - mass_column), 0, SIZE - width))
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field.round().astype(np.uint8)


def _centre_of_mass(pixels: NDArray[np.floating]) -> tuple[NDArray[np.floating], ...]:
    """Row and column of the centre of mass of an image (H, W), or of each of (N, H, W); NaN for
    a blank image."""
    height, width = pixels.shape[-2:]
    mass = pixels.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = (pixels.sum(axis=-1) @ np.arange(height)) / mass
        columns = (pixels.sum(axis=-2) @ np.arange(width)) / mass
    return rows, columns


def in_mnist_format(images: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which of the images (N, 28, 28) are laid out as MNIST's are: white ink on black, its
    bounding box 19 or 20 pixels on the long side, its centre of mass within a pixel of (14, 14).
    Every one of MNIST's 70,000 images is (tests/test_images.py checks the embedded copy)."""
    pixels = np.asarray(images, dtype=np.float32)
    long_side = np.maximum(*_ink_extents(pixels))
    centre_row, centre_column = _centre_of_mass(pixels)
    offset = np.maximum(np.abs(centre_row - CENTRE), np.abs(centre_column - CENTRE))
    # A blank image has no centre (NaN), and NaN <= anything is False: not in MNIST's layout.
    return np.isin(long_side, MNIST_BOX_SIDES) & (offset <= MAX_CENTRE_OFFSET)


def fills_box(images: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which conformed images (N, 28, 28) fill MNIST's box both ways: their ink 19 or 20 pixels
    tall and wide."""
    return np.minimum(*_ink_extents(images)) >= min(MNIST_BOX_SIDES)


def narrowed(images: NDArray[np.uint8], fraction: float) -> NDArray[np.uint8]:
    """Conformed images (N, 28, 28), each digit's ink resized to ``fraction`` of its width
    (Lanczos, its height kept) and centred by mass again; blank ones as they are."""
    result = images.copy()
    for index, image in enumerate(images):
        rows, columns = np.nonzero(image)
        if not len(rows):
            continue
        ink = image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        width = max(1, round(ink.shape[1] * fraction))
        resized = Image.fromarray(ink).resize((width, ink.shape[0]), Image.Resampling.LANCZOS)
        result[index] = _centre_by_mass(np.asarray(resized, dtype=np.float32))
    return result


def slants(images: NDArray[np.uint8]) -> NDArray[np.float64]:
    """How far each image (N, 28, 28) leans (MNIST_SLANT's measure); 0 for a blank one."""
    pixels = np.asarray(images, dtype=np.float64)
    rows, columns = _centre_of_mass(pixels)
    down = np.arange(pixels.shape[1])[None, :] - np.nan_to_num(rows)[:, None]  # (N, H)
    across = np.arange(pixels.shape[2])[None, :] - np.nan_to_num(columns)[:, None]  # (N, W)
    covariance = np.einsum("nhw,nh,nw->n", pixels, down, across)
    variance = np.einsum("nhw,nh->n", pixels, down**2)
    return np.divide(covariance, variance, out=np.zeros(len(pixels)), where=variance > 0)


def sheared(images: NDArray[np.uint8], shear: float) -> NDArray[np.uint8]:
    """Conformed images (N, 28, 28), each sheared about its centre of mass so that its slant
    (``slants``) falls by ``shear``: each row's ink moves ``shear`` pixels left per row down from
    the centre (bilinear); blank ones as they are."""
    result = images.copy()
    rows, _ = _centre_of_mass(np.asarray(images, dtype=np.float64))
    for index, (image, row) in enumerate(zip(images, rows, strict=True)):
        if np.isnan(row):
            continue
        # output (r, c) takes input (r, c + shear * (r - row)): the ink at input column c
        # lands at c - shear * (r - row).
        pixels = ndimage.affine_transform(image.astype(np.float32), [[1, 0], [shear, 1]],
                                          offset=[0, -shear * row], order=1)  # fmt: skip
        result[index] = pixels.clip(0, 255).round().astype(np.uint8)
    return result


def crosses_stem(images: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which conformed images (N, 28, 28) have a bar across the middle of their stem, as a
    crossed 7 has: a run of ink CROSSBAR_PIXELS longer than the stem's, within CROSSBAR_ROWS of
    the ink's height. A 1 has none; its flag, however long, meets the stem at the top."""
    brightest = images.max(axis=(1, 2)).astype(np.float32)
    ink = images >= np.maximum(CROSSBAR_INK * brightest, 1)[:, None, None]
    run = np.zeros(ink.shape[:2], np.int64)
    longest_run = np.zeros(ink.shape[:2], np.int64)
    for column in np.moveaxis(ink, 2, 0):
        run = (run + 1) * column
        longest_run = np.maximum(longest_run, run)
    inked_rows = ink.any(axis=2)
    top, height = inked_rows.argmax(axis=1), _extent(inked_rows)
    middle_top, middle_bottom = (
        top + (fraction * height).astype(np.int64) for fraction in CROSSBAR_ROWS
    )
    row = np.arange(ink.shape[1])
    below_top = row >= middle_top[:, None]
    middle = below_top & (row <= middle_bottom[:, None])
    stem_rows = below_top & (row < (top + height)[:, None])
    bar = np.where(middle, longest_run, 0).max(axis=1)
    stem = np.ma.median(np.ma.masked_array(longest_run, ~stem_rows), axis=1).filled(0)
    return bar - stem >= CROSSBAR_PIXELS


def _ink_extents(images: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """How many rows and columns each image (N, H, W) has ink on, from first to last."""
    ink = np.asarray(images) > 0
    return _extent(ink.any(axis=2)), _extent(ink.any(axis=1))


def _extent(occupied: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Per row of ``occupied`` (N, L): last occupied index - first + 1 (0 when none is)."""
    first = occupied.argmax(axis=1)
    last = occupied.shape[1] - 1 - occupied[:, ::-1].argmax(axis=1)
    return np.where(occupied.any(axis=1), last - first + 1, 0)


def check_images(X: ArrayLike) -> NDArray[np.uint8]:
    """Validate digits as uint8 images (N, 28, 28); accepts (N, 28, 28) or (N, 784) in 0..255."""
    images = np.asarray(X)
    if images.ndim == 2 and images.shape[1] == N_PIXELS:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"expected images of shape (n_samples, 28, 28) or (n_samples, 784), got shape "
            f"{images.shape}; reshape with X.reshape(-1, 28, 28)"
        )
    # Floats in 0-1 (the usual notebook's X / 255) or 0/1 (binarised) would pass as near-black
    # digits and be misread without a word.
    scaled_hint = "; pixels in 0-1 look scaled: pass (X * 255).round().astype(np.uint8)"
    if images.dtype == np.bool_:
        images = images.astype(np.uint8)
    elif images.dtype != np.uint8:
        is_number = np.issubdtype(images.dtype, np.number)
        lowest, highest = (images.min(initial=0), images.max(initial=0)) if is_number else (0, 0)
        if not is_number or not (np.all(images == np.round(images)) and lowest >= 0
                                 and highest <= 255):  # fmt: skip
            hint = scaled_hint if is_number and lowest >= 0 and highest <= 1 else ""
            raise ValueError(f"pixels must be integers in 0..255, got dtype {images.dtype}{hint}")
        images = images.astype(np.uint8)
    brightest = images.max(initial=0)
    if 0 < brightest < MIN_CONTRAST:  # a file's rows so faint are scaled (faint_to_full_ink)
        rescale = f"(X * (255 / {brightest})).round().astype(np.uint8)"  # a float product
        hint = scaled_hint if brightest == 1 else f"; ink on a 0-{brightest} scale: pass {rescale}"
        raise ValueError(f"pixels reach at most {brightest}, where digits' ink is 255{hint}")
    return np.ascontiguousarray(images)  # torch.as_tensor refuses negative strides (X[::-1])


def check_digits(X: ArrayLike, y: ArrayLike | None) -> DigitSet:
    """Validate labelled digits for training: images as ``check_images``, one whole-number label
    0-9 per image (``ValueError`` saying which rule ``y`` breaks)."""
    images = check_images(X)
    if y is None:
        raise ValueError("training needs a label per image, got none")
    return DigitSet(images, check_labels(y, len(images)))


def check_labels(y: ArrayLike, n_images: int, name: str = "y") -> NDArray[np.int64]:
    """``y`` as int64 digits of shape (n_images,): one whole-number label 0-9 per image, else a
    ``ValueError`` saying which rule the parameter ``name`` breaks."""
    given = column_or_1d(y)
    if given.dtype.kind == "f" and not np.isfinite(given).all():  # a missing label reads NaN
        raise ValueError(f"{name} must hold a digit 0-9 for every image; it has missing (NaN) "
                         "or infinite labels")  # fmt: skip
    # Whole numbers only: "7" or 2.7 would be cast silently, and the predictions (integers)
    # would then not compare equal to such labels in score().
    is_whole = given.dtype.kind in "iu" or (
        given.dtype.kind == "f" and np.array_equal(given, np.round(given))
    )
    if not is_whole:
        raise ValueError(f"{name} must hold the digits 0-9 as integers, got {given.dtype} labels")
    labels = given.astype(np.int64)
    if len(labels) != n_images:
        raise ValueError(f"{name} must hold one label per image: {len(labels)} labels for "
                         f"{n_images} images")  # fmt: skip
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name} must hold the digits 0-9, got labels from {labels.min()} to "
                         f"{labels.max()}")  # fmt: skip
    return labels


def faint_to_full_ink(images: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], int]:
    """Digits whose pixels all stay under MIN_CONTRAST hold ink on a scale of their own: 0/1
    (binarised, as Semeion's), 0-16 (UCI's optical digits), 0-2. Each is scaled so that its
    brightest pixel is 255, as MNIST's ink is, rather than read as a near-black digit; returns
    the images (N, 28, 28) and how many were. Row by row, so that a file read whole, in pieces
    or by several processes is read alike. A blank cell's faint noise is scaled too: no row
    that reaches the nets is under MIN_CONTRAST but a black one (check_images refuses such
    arrays from users), and a blank cell gets a label in a submission either way."""
    brightest = images.max(axis=(1, 2), initial=0)
    faint = np.flatnonzero((brightest > 0) & (brightest < MIN_CONTRAST))
    if not len(faint):
        return images, 0
    scaled = images.copy()
    peaks = brightest[faint].astype(np.uint16)[:, None, None]
    scaled[faint] = ((images[faint].astype(np.uint16) * 255 + peaks // 2) // peaks).astype(np.uint8)
    return scaled, len(faint)


def at_full_ink(data: DigitSet) -> DigitSet:
    """``data`` with its faint rows scaled to MNIST's ink (``faint_to_full_ink``), as every
    command reads digits."""
    return DigitSet(faint_to_full_ink(data.images)[0], data.labels)


def conform_to_mnist(
    images: ArrayLike,
    votes: ArrayLike | Callable[[NDArray[np.float32]], ArrayLike] | None = None,
    n_voting: int | None = None,
) -> tuple[NDArray[np.uint8], int]:
    """The images (N, 28, 28), each one not in MNIST's layout (``in_mnist_format``) redone as
    MNIST made its digits (``to_mnist``); returns them and how many were redone.

    Digits from other collections arrive filling the frame (USPS, upscaled), framed differently
    (EMNIST), off-centre or dark on light; a net trained on MNIST reads them best once they look
    like MNIST. MNIST's own images, Kaggle's included, pass through untouched, and so do blank
    ones, which have no digit to fit.

    A digit stretched to fill its frame (Semeion's) runs its strokes along the edges, where the
    paper is read: a 0 became a disc of the paper's level. Such a row, whose edges point to a
    paper covering under half of it, takes the ink's side its file's rows agree on: ``votes``
    (``ink_votes`` of the file, or of a part of it standing for the whole, or a function that
    makes them of the images' own: predict_stream adds up its processes' parts of their file's
    first rows), else the images' own; where they do not agree (``files_ink_side``), its
    edges'. ``n_voting``: of the images' own, the first so many vote (all if None).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:  # rows (N, 784), floats: checked
        images = check_images(images)
    # uint8 rows pass unchecked: faint rows (0/1, 0-16) are scaled to full ink by
    # faint_to_full_ink before they get here.
    sides = _ink_sides(images)  # read once, for the votes too
    if votes is None or callable(votes):
        voters = {index: side for index, side in sides.items()
                  if n_voting is None or index < n_voting}  # fmt: skip
        # Called even when no row is redone: under torchrun every process adds up its votes.
        votes = _votes(voters) if votes is None else votes(_votes(voters))
    if not sides:
        return images, 0
    files_dark_ink = files_ink_side(votes)
    conformed = images.copy()
    n_redone = 0
    for index, (side, contested) in sides.items():
        if side is None:  # blank: left as it is
            continue
        pixels = images[index].astype(np.float32)
        with contextlib.suppress(DataError):  # no digit found: left as it is
            if contested:
                side = _ink_side_given(pixels, side, files_dark_ink, "row")
            conformed[index] = _to_mnist(pixels, side, "row")
            n_redone += 1
    return conformed, n_redone


def ink_votes(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """How many of the rows ``conform_to_mnist`` would redo have their ink's side settled by
    their edges: (light, dark). Counts, so that a file's pieces and torchrun's processes can add
    theirs up. MNIST's own rows do not vote: beside a few dark scans, they had turned those."""
    return _votes(_ink_sides(images))


def files_ink_side(votes: ArrayLike) -> bool | None:
    """Whether a file's ink is dark (True) or light (False) by its rows' ``ink_votes``: None
    unless MIN_SETTLED_ROWS or more voted, 90 % of them alike."""
    light, dark = np.asarray(votes, dtype=np.float64)
    if light + dark < MIN_SETTLED_ROWS or max(light, dark) < 0.9 * (light + dark):
        return None
    return bool(dark > light)


def _ink_sides(images: NDArray[np.uint8]) -> dict[int, tuple[_InkSide | None, bool]]:
    """``_row_ink_side`` of each row not in MNIST's layout, by its index."""
    return {int(index): _row_ink_side(images[index])
            for index in np.flatnonzero(~in_mnist_format(images))}  # fmt: skip


def _votes(sides: dict[int, tuple[_InkSide | None, bool]]) -> NDArray[np.float32]:
    settled = [side.is_dark for side, contested in sides.values() if not contested]
    return np.array([len(settled) - sum(settled), sum(settled)], dtype=np.float32)


def _row_ink_side(row: NDArray[np.uint8]) -> tuple[_InkSide | None, bool]:
    """A row's ink's side as its edges tell (``_ink_side``), and whether that is contested:
    the paper they point to covers under half the row. A blank row: (None, True)."""
    pixels = row.astype(np.float32)
    try:
        side = _ink_side(pixels, "row")
    except DataError:
        return None, True
    is_dark_ink = side.is_dark
    # Mid-way between the extremes, not from the paper's level: the edges of a digit stretched
    # to its frame are stroke and anti-aliased grey, and put that level half-way up too.
    middle = (float(pixels.min()) + float(pixels.max())) / 2
    paper_share = np.mean(pixels > middle) if is_dark_ink else np.mean(pixels < middle)
    return side, bool(paper_share < 0.5)
