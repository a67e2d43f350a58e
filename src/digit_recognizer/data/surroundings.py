"""What lies around the page in a photo of it, which is not the digit: the desk a sheet was
photographed on, a strip along a side (a desk's edge, a scanner lid's shadow, another sheet).

``images.to_mnist`` judges the paper by a band along the image's edges; a desk filling that
band is taken for the paper and the sheet for the ink (``sheet_on_a_desk`` finds the sheet), and
a desk along one side is ink beside the digit (``without_border_regions`` drops it).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull

from digit_recognizer.data.lighting import BORDER

# A sheet photographed on a desk (sheet_on_a_desk): when the desk fills the border band, the
# sheet is read as ink, a blob over a fifth of the image with its holes (the digit) filled,
# whose holes are under a fifth of it, and which fills 90 % of the smallest rectangle around it:
# a sheet turned or cut by the frame 93-100 %, seen at a slant 89-97 %, an ellipse 79 %. White
# marker digits on black stay under 84 % but for blobs with strokes 3-4 MNIST pixels thick, 20
# of 400 of which were read as sheets (errors 28 -> 37; sheets on a desk: 540 of 600 -> 0).
SHEET_SHARE = 0.2
SHEET_HOLES = 0.2
SHEET_FILL = 0.9
SHEET_MIN_HOLES = 0.001  # the digit: ink covers over 0.1 % of any image with one
# What runs along 80 % of a side or more beside a digit standing clear of the sides (a tenth of
# the image's shorter side or more: not dust) is not the digit (without_border_regions).
BORDER_CONTACT = 0.8
INNER_SIDE = 0.1


def sheet_on_a_desk(
    is_ink: NDArray[np.bool_], pixels: NDArray[np.float32]
) -> NDArray[np.bool_] | None:
    """The sheet of paper, holes filled, when ``is_ink`` is one: a sheet photographed on a
    darker desk that fills the border band is read as ink on the desk's level. It is the
    largest blob, brighter than what lies outside it, over SHEET_SHARE of the image with its
    holes filled, nearly a rectangle (SHEET_FILL), and holding the digit in holes that are a
    small part of it (SHEET_HOLES); None otherwise."""
    blobs, n_blobs = ndimage.label(is_ink)
    if not n_blobs:
        return None
    sizes = np.bincount(blobs.ravel())[1:]
    rows, columns = ndimage.find_objects(blobs)[sizes.argmax()]
    if (rows.stop - rows.start) * (columns.stop - columns.start) < SHEET_SHARE * is_ink.size:
        return None  # a digit on its page: not even its box could be a sheet
    blob = blobs == sizes.argmax() + 1
    sheet = ndimage.binary_fill_holes(blob)
    area = np.count_nonzero(sheet)
    holes = area - sizes.max()
    if (
        area < SHEET_SHARE * sheet.size
        or sheet.all()
        or not SHEET_MIN_HOLES * sheet.size <= holes < SHEET_HOLES * area
        or pixels[blob].mean() <= pixels[~sheet].mean()
    ):
        return None
    return sheet if area >= SHEET_FILL * _smallest_rectangle_area(sheet) else None


def _smallest_rectangle_area(shape: NDArray[np.bool_]) -> float:
    """The area of the smallest rectangle, at any angle, around ``shape``'s pixels: one of its
    sides lies along an edge of their convex hull (rotating calipers)."""
    outline = np.argwhere(shape & ~ndimage.binary_erosion(shape)).astype(np.float64)
    corners = outline[ConvexHull(outline).vertices]
    edges = np.diff(np.vstack([corners, corners[:1]]), axis=0)
    directions = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    along = corners @ directions.T  # (corner, edge): each corner's position along each edge
    across = corners @ np.stack([-directions[:, 1], directions[:, 0]], axis=1).T
    # + 1: pixel centres span a pixel less than the pixels do.
    return float(((np.ptp(along, axis=0) + 1) * (np.ptp(across, axis=0) + 1)).min())


def without_border_regions(
    ink: NDArray[np.float32], is_ink: NDArray[np.bool_]
) -> NDArray[np.float32]:
    """``ink`` less the blobs that run along most of a side of the image (BORDER_CONTACT), when
    a digit-sized blob (INNER_SIDE) stands clear of every side: a desk's edge, a scanner lid's
    shadow, a strip of another page. A digit cropped tight touches the sides itself, and is
    left whole."""
    blobs, n_blobs = ndimage.label(is_ink, structure=np.ones((3, 3)))
    if n_blobs < 2:
        return ink
    hugs_a_side = np.zeros(n_blobs + 1, dtype=bool)
    touches = np.zeros(n_blobs + 1, dtype=bool)
    for side in BORDER:
        pixels_on_side = np.bincount(blobs[side], minlength=n_blobs + 1)
        hugs_a_side |= pixels_on_side >= BORDER_CONTACT * blobs[side].size
        touches |= pixels_on_side > 0
    hugs_a_side[0] = False  # the paper
    long_sides = np.array([0] + [max(s.stop - s.start for s in box)
                                 for box in ndimage.find_objects(blobs)])  # fmt: skip
    is_clear_digit = ~touches & (long_sides >= INNER_SIDE * min(ink.shape))  # paper touches
    if not (hugs_a_side.any() and is_clear_digit.any()):
        return ink
    return np.where(hugs_a_side[blobs], 0, ink)
