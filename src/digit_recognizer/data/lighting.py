"""A photographed page's uneven light, levelled: light falling off toward its corners, a
shadow across it, however hard its edge.

Ink is what stands out from the paper; where the paper's own level varies by more than the ink's
contrast, a single threshold keeps shadow or loses strokes. ``images.to_mnist`` asks whether the
paper along a photo's border is unevenly lit (``paper_along_border``, ``unevenly_lit``) and if so
measures the ink against the paper's level where it is (``flatten_lighting``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

MIN_CONTRAST = 32  # grey levels between background and darkest ink; below it the image is blank
# Paper whose border spans more grey levels than that (10th to 90th percentile) is unevenly lit,
# and its level is taken as what a window this fraction of the image a side, wider than a pen
# stroke, leaves (flatten_lighting); in photos and scans only: in a small image (a 28 x 28
# digit that fills its frame) a border that varies is ink.
STROKE_WINDOW = 0.25
FLOOD_STEP = 16  # grey levels: the paper's level floods on where it rises by more (_flooded)
MIN_PHOTO_SIDE = 64
BORDER = (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1])  # the image's four sides
RIM_FRACTION = 0.05  # an enlarged stroke's anti-aliased rim, as a fraction of the image


def opened_along_sides(pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    """Each of the image's four sides opened along itself (a minimum, then a maximum filter a
    stroke window long): a strip of shadow along a side is long and stays, a stroke crossing
    the side is short and goes. A corner keeps the higher of its two sides; -inf off the
    border."""
    window = _stroke_window(pixels.shape)
    along = np.full(pixels.shape, -np.inf, dtype=np.float32)
    for side in BORDER:
        along[side] = np.maximum(along[side], ndimage.grey_opening(pixels[side], size=window))
    return along


def paper_along_border(
    pixels: NDArray[np.float32], along_sides: NDArray[np.float32], ink_level: float
) -> NDArray[np.bool_]:
    """The pixels along the image's border that are paper, by which to judge the light: not
    strokes that reach the border (a digit cropped tight to its ink) nor their anti-aliased
    rims. Ink is what reaches ``ink_level`` (ink-bright), most of the way from the paper to
    the darkest ink, which a shadow's edge on the paper stays short of; and paper is what
    ``along_sides`` (opened_along_sides) keeps, where a fine pen's grey stroke crossing a
    side is narrow."""
    rim = max(1, round(RIM_FRACTION * min(pixels.shape)))
    paper = pixels - along_sides <= MIN_CONTRAST / 2
    return paper & (ndimage.maximum_filter(pixels, size=2 * rim + 1) < ink_level)


def unevenly_lit(pixels: NDArray[np.float32], paper: NDArray[np.bool_]) -> bool:
    """Whether the ``paper`` pixels span more than MIN_CONTRAST grey levels (10th to 90th
    percentile)."""
    return paper.any() and np.ptp(np.percentile(pixels[paper], [10, 90])) > MIN_CONTRAST


def flatten_lighting(
    pixels: NDArray[np.float32],
    along_sides: NDArray[np.float32],
    ink_level: float,
    paper_was_light: bool,
) -> NDArray[np.float32]:
    """Ink-bright pixels less the paper's own level where it varies (a shadow across a photo,
    light falling off), 0-255.

    The paper's level is the image's grey opening (a minimum, then a maximum filter) over a
    window wider than a pen stroke, which drops the strokes and keeps what is wider: a ramp of
    light, and a shadow's edge where it is, however hard. Where a shadow narrows below the
    window (its corner, a strip of it along the border) the opening cuts it off, so the paper's
    level then floods back (_flooded) from what the opening kept and from what the openings
    along the sides kept (``along_sides``), but not from ink they kept (below ``ink_level``
    only: a bold stroke wider than the window), and no higher than the image without its strokes
    (an opening a quarter the window wide), so that a pencil's lit strokes, as grey as the paper
    in shadow beside them, stay ink. On light paper the ink is measured against the paper's
    brightness, not by a difference: light lets a shadowed stroke's darkness through in
    proportion to the paper around it.
    """
    window = _stroke_window(pixels.shape)
    opened = np.maximum(ndimage.grey_opening(pixels, size=window), along_sides)
    strokeless = ndimage.grey_opening(pixels, size=window // 4 | 1)
    paper = _flooded(np.where(opened < ink_level, opened, 0), np.maximum(strokeless, opened))
    ink = pixels - paper
    if paper_was_light:
        ink *= 255 / np.maximum(255 - paper, MIN_CONTRAST)
    return np.clip(ink, 0, None)


def _flooded(level: NDArray[np.float32], ceiling: NDArray[np.float32]) -> NDArray[np.float32]:
    """``level`` (at most ``ceiling`` everywhere) raised toward ``ceiling`` pixel by pixel from
    where it is higher, as a grey reconstruction by dilation does, but only onto pixels whose
    ceiling is at most MIN_CONTRAST above the level arriving: along a shadow's corner, which is
    at its shadow's level, not up a bold stroke. It moves on only where it rises by more than
    FLOOD_STEP: a photo's noise or the curve of a vignette would keep it going for nothing.
    Each step works on the box around the pixels the previous one raised (a pixel left alone
    has raised its neighbours already).
    """
    level = level.copy()
    height, width = level.shape
    top, bottom, left, right = 0, height, 0, width
    while True:
        box = np.s_[top:bottom, left:right]
        arriving = ndimage.grey_dilation(level[box], size=3)
        reached = ceiling[box] - arriving <= MIN_CONTRAST
        raised = np.where(reached, np.minimum(arriving, ceiling[box]), level[box])
        rises = raised > level[box] + FLOOD_STEP
        rows, columns = np.nonzero(rises)
        if not len(rows):
            return level
        level[box] = np.where(rises, raised, level[box])
        top, bottom = max(0, top + rows.min() - 1), min(height, top + rows.max() + 2)
        left, right = max(0, left + columns.min() - 1), min(width, left + columns.max() + 2)


def _stroke_window(shape: tuple[int, ...]) -> int:
    """An odd window side, STROKE_WINDOW of the image's shorter side."""
    return 2 * round(STROKE_WINDOW * min(shape) / 2) + 1
