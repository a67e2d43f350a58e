"""The straight lines of a form or ruled paper, found in a digit's ink and taken out of it.

A digit written in a form's box or on a ruled line comes with those lines; cropped with it, they
would shrink it. ``images.to_mnist`` removes them before it crops (``without_lines``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

# Lines of a form or ruled paper (without_lines), in photos and scans: see its docstring.
LINE_FRACTION = 0.8
LINE_FRACTION_CUT = 0.4
LINE_OVERHANG = 0.1
LINE_CLEARANCE = 0.2  # of the rest's extent: how far a line cut off by the image keeps from it
LINE_TILT = 0.025  # rows smeared by this fraction of the image: a line's bend, the search's step
# A photographed page's lines are straightened first (_tilts): their slope is searched in steps of
# half a degree up to this many degrees either way, on the ink shrunk to this many pixels a side.
MAX_TILT = 10
TILT_SIDE = 256
LINE_WIDTH = 0.05  # a line is at most this fraction of the image thick
LINE_STRETCH = 0.2  # a line's rows are at least half ink over this fraction of the image
LINE_SLACK = 1.5  # and at most this many times as thick as the lines' lower quartile
# A line that falls short of the overhang is still a form's where its own ink lies along this
# fraction of its length, at most LINE_THIN as thick as the rest's strokes (_Straightened.thin).
LINE_PRESENCE = 0.9
LINE_THIN = 0.4
LINE_REST = 0.03
PAGE_LINES = 3  # lines one way, from which they are a page of lines (ruled, squared paper)
DEBRIS_FRACTION = 0.05  # of the rest's largest blob: a line's debris is smaller (_without_debris)


def without_lines(ink: NDArray[np.float32], is_ink: NDArray[np.bool_]) -> NDArray[np.float32]:
    """``ink`` (0-1) less the straight lines of a form or ruled paper (a box around the digit,
    the line it was written on), which would otherwise be cropped with it and shrink it;
    ``is_ink`` marks the pixels that count as ink.

    The rows are first straightened to the page's tilt (_tilts: up to MAX_TILT degrees, as a
    hand-held photo turns a page), the columns likewise, each by its own slope or the page's
    both ways, whichever finds more line (_straightened). A line is then a run of ink along a
    row (or column), smeared across by LINE_TILT of the image (a line's bend, the tilt
    search's step), at least LINE_FRACTION of the image long (or of its row on the page,
    _page), that reaches past the rest of the ink at both ends by LINE_OVERHANG of the
    rest's extent (or is cut off by the image, or is drawn thin along all its length with both
    ends clear of the rest, as a box's or an underline's around a digit as wide as its page:
    reaching_past), where the ink beside the lines (off the band they were found in) is at
    least LINE_REST of all. A digit's own strokes are shorter or end where its other strokes
    do (a 7's bar at its stem), and a 1 is nearly all on its line. What goes is the lines' own
    ink, on rows as full as a line's and as thin across as these lines are, so a stroke that
    crosses a line or runs along it keeps its ink. Of 3,000 replica test digits cropped tight
    to their ink and enlarged x6, none lost any ink, nor when turned 6 degrees either way
    first; drawn with a thin pen (a 9 x 9 erosion), 12 lost some and 3 were misread for it (a
    7's bar and two 4s' taken for lines: 44 errors against 41 left whole;
    benchmarks/paper_photos.py prints the errors on such crops, and on squared paper).
    """
    mask = is_ink
    smear = max(1, round(LINE_TILT * min(mask.shape)))
    rows_slope, columns_slope, page_slope = _tilts(mask)
    page = _page(mask, page_slope, smear)
    along_rows = _straightened(mask, page, [rows_slope, page_slope], smear)
    along_columns = _straightened(mask.T, page.T, [-columns_slope, -page_slope], smear)
    across_rows, across_columns = along_rows.line_runs, along_columns.line_runs
    if not len(across_rows[0]) and not len(across_columns[0]):
        return ink
    # Where the lines' runs lie (a band `smear` wide either side of each line), and where the
    # ink they were made from may lie (twice as wide).
    on_rows = _painted(along_rows.mask, across_rows, 0)
    on_columns = _painted(along_columns.mask, across_columns, 0)
    near_rows = _painted(along_rows.mask, across_rows, smear)
    near_columns = _painted(along_columns.mask, across_columns, smear)
    band_rows, band_columns = along_rows.back(on_rows), along_columns.back(on_columns).T
    wide_rows, wide_columns = along_rows.back(near_rows), along_columns.back(near_columns).T
    # Ink beside the lines is off the wide bands; but on a page of lines (ruled or squared
    # paper) those can cover the page, and the narrow ones decide.
    if max(_n_lines(across_rows), _n_lines(across_columns)) >= PAGE_LINES:
        beside = ~band_rows & ~band_columns
    else:
        beside = ~wide_rows & ~wide_columns
    if ink[mask & beside].sum() < LINE_REST * ink[mask].sum():
        return ink  # nothing beside the lines: no digit, or a 1 on its own line
    # The rest of the ink is neither the lines' own (with a pixel's rim, where straightening
    # left a line ragged) nor where lines cross (a box's corners), nor the lines' debris.
    own = along_rows.back(along_rows.own(near_rows))
    own |= along_columns.back(along_columns.own(near_columns)).T
    rest = mask & ~ndimage.binary_dilation(own, structure=np.ones((3, 3)))
    rest &= ~(band_rows & band_columns)
    rest = _without_debris(rest, wide_rows, wide_columns)
    if not rest.any():  # what was beside the lines was their rim
        return ink
    lines = along_rows.back(along_rows.line_ink(along_rows.reaching_past(rest)))
    lines |= along_columns.back(along_columns.line_ink(along_columns.reaching_past(rest.T))).T
    # The lines' anti-aliased rims, a pixel either side, go with them, as does the pixel past a
    # line's end on a crossing stroke's faint edge; the diagonal ones do not: where a line
    # crosses a stroke they are the stroke's edge either side of the line.
    near_lines = ndimage.binary_dilation(lines, structure=ndimage.generate_binary_structure(2, 1))
    return np.where(near_lines, 0, ink) if (mask & ~near_lines).any() else ink


class _Straightened:
    """A mask whose columns are shifted up or down so that its lines, tilted with the page,
    run along its rows (_tilts); whole-pixel shifts, undone exactly by ``back``."""

    def __init__(
        self, mask: NDArray[np.bool_], page: NDArray[np.bool_], slope: float, smear: int
    ) -> None:
        height, width = mask.shape
        shifts = np.round(np.arange(width) * slope).astype(np.intp)
        shifts -= shifts.min()
        self.rows = np.arange(height)[:, None] + shifts  # each pixel's row once shifted
        self.mask = np.zeros((height + shifts.max(), width), dtype=bool)
        self.mask[self.rows, np.arange(width)] = mask
        # How long each row is on the page (_page).
        on_page = np.zeros_like(self.mask)
        on_page[self.rows, np.arange(width)] = page
        self.row_lengths = on_page.sum(axis=1)
        self.height = height
        self.shifts = shifts
        self.slope = slope
        self.image = mask
        self.smear = smear  # rows either way that a line's runs are smeared across (LINE_TILT)

    # Needed only once lines are found, and then by both own() and line_ink().
    @cached_property
    def thickness(self) -> NDArray[np.int32]:
        """Per pixel, how thick the ink is across the rows there."""
        return _run_lengths(self.mask.T).T

    @cached_property
    def line_like(self) -> NDArray[np.bool_]:
        """The ink in rows as full as a line's (_full_rows), no thicker across them than a line
        can be."""
        # A dashed line's ink alternates between two rows: each is full with its neighbour's.
        rows_ink = ndimage.maximum_filter1d(self.mask, 3, axis=0) if self.is_dashed else self.mask
        return _full_rows(self.mask, rows_ink) & (self.thickness <= LINE_WIDTH * self.height + 2)

    def back(self, straightened: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """A mask of the straightened shape in the original one."""
        return straightened[self.rows, np.arange(straightened.shape[1])]

    @cached_property
    def _found(self) -> tuple[Runs, bool]:
        """The runs along the rows, smeared across by ``smear`` pixels either way, at least
        LINE_FRACTION of the row as far as it lies in the image and on the page (_page): of the
        image's width, or less where a line turned with the page runs out of the image at a
        corner, or the turned page leaves the image's corners blank (down to LINE_FRACTION_CUT
        of the width). Where bridging gaps a smear long along the rows finds a page of lines
        (PAGE_LINES or more), those are its lines, dashed: squared paper's thin grey lines,
        turned, fall apart into dashes where their ink is shared between two rows, each under
        the ink threshold (a digit's strokes are seldom that many). Returns the runs and whether
        they are dashed."""
        window = 2 * self.smear + 1
        smeared = ndimage.maximum_filter1d(self.mask, window, axis=0)
        bridged = ndimage.minimum_filter1d(
            ndimage.maximum_filter1d(smeared, window, axis=1), window, axis=1
        )
        dashed_runs = self._long(*_runs(bridged))
        if _n_lines(dashed_runs) >= PAGE_LINES:
            return dashed_runs, True
        return self._long(*_runs(smeared)), False

    @property
    def line_runs(self) -> Runs:
        """The lines' runs along the rows (_found)."""
        return self._found[0]

    @property
    def is_dashed(self) -> bool:
        return self._found[1]

    def _long(
        self, rows: NDArray[np.intp], starts: NDArray[np.intp], ends: NDArray[np.intp]
    ) -> Runs:
        lengths = ends - starts
        is_long = lengths >= LINE_FRACTION * self.row_lengths[rows]
        is_long &= lengths >= LINE_FRACTION_CUT * self.mask.shape[1]
        return rows[is_long], starts[is_long], ends[is_long]

    def reaching_past(self, rest: NDArray[np.bool_]) -> Runs:
        """The line_runs that reach past ``rest`` (the other ink, in the image) at both ends by
        LINE_OVERHANG of its extent along them. An end where the line runs out of the image
        across its top or bottom side (a box cropped at its lines, turned with the page)
        cannot. Such a line passes where that end keeps LINE_CLEARANCE of the rest's extent
        clear of the rest (_cut_off), and its other end either does the same or lies on the
        image's side, as clear of the rest (a 7's bar meets its stem there). A digit as wide as
        its page comes within the overhang of its box's or underline's end: a line passes too
        where it is drawn thin, as a form's, and every run of it ends as clear of the rest
        (``thin``)."""
        rows, starts, ends = self.line_runs
        width, smear = self.image.shape[1], self.smear

        def image_rows(columns: NDArray[np.intp]) -> NDArray[np.intp]:
            """Per run end (its last column): its row in the image."""
            return np.clip(rows - self.shifts[columns], 0, self.height - 1)

        # Along the lines, not the columns: turned 10 degrees, a digit 150 pixels above its
        # underline moves 26 columns along it, and its far side passed for the line's end. (An
        # end on the image's side is compared by column: the line goes on past the image.)
        rest_rows, rest_columns = np.nonzero(rest)
        rest_along = rest_columns - self.slope * rest_rows
        extent = np.ptp(rest_along) + 1
        overhang, clearance = LINE_OVERHANG * extent, LINE_CLEARANCE * extent
        to_rest = ndimage.distance_transform_cdt(~rest, metric="chessboard")

        def along(columns: NDArray[np.intp]) -> NDArray[np.float64]:
            """Per run end (its last column): how far along the lines it lies, as rest_along."""
            return columns - self.slope * image_rows(columns)

        def clear(columns: NDArray[np.intp]) -> NDArray[np.bool_]:
            """Per run end (its last column): the rest further than ``clearance`` from it."""
            return to_rest[image_rows(columns), columns] > clearance

        cut_start = self._cut_off(rows, starts, -1) & clear(starts)
        cut_end = self._cut_off(rows, ends - 1, 1) & clear(ends - 1)
        # The other end: on the image's side, clear of the rest as well (a 7's stem meets its
        # bar's other end where a box's side line meets its top).
        start_on_side, end_on_side = starts <= smear, ends - 1 >= width - 1 - smear
        side_start, side_end = start_on_side & clear(starts), end_on_side & clear(ends - 1)
        before_rest = np.where(
            start_on_side, rest_columns.min() - starts, rest_along.min() - along(starts)
        )
        after_rest = np.where(
            end_on_side, ends - 1 - rest_columns.max(), along(ends - 1) - rest_along.max()
        )
        past_start, past_end = before_rest >= overhang, after_rest >= overhang
        keep = past_start & past_end
        keep |= (cut_start | side_start) & (cut_end | side_end) & (cut_start | cut_end)
        keep |= self.thin(rest, clear(starts) & clear(ends - 1))
        return rows[keep], starts[keep], ends[keep]

    def thin(self, rest: NDArray[np.bool_], free: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Per run of line_runs: whether its line (_line_numbers) has every run ``free`` (a 7's
        bar, thin, turned with its corner out of a tight crop, ends clear of the stem in some
        rows only) and is drawn as a form's is, not as a digit's stroke: its own ink lies along
        LINE_PRESENCE of its length or more (where a pen's stroke swells, it is thicker than a
        line's), at most LINE_THIN as thick as the strokes of ``rest`` (the other ink, in the
        image) are (_stroke_width). Of 300 MNIST test digits cropped tight, as drawn, with a
        thin pen and with a marker, no stroke spanning the crop lies along more than 0.88 of its
        length, and those along 0.8 are half as thick as the strokes or thicker; a box's lines
        and an underline a fifth to a third as thick as the digit's strokes lie along 0.94-1."""
        numbers = _line_numbers(self.line_runs)
        strokes = _stroke_width(rest)
        is_thin = np.bincount(numbers, weights=~free) == 0
        for number in np.flatnonzero(is_thin):
            runs = tuple(part[numbers == number] for part in self.line_runs)
            line = self.own(_painted(self.mask, runs, self.smear))
            length = _painted(np.ones_like(self.mask), runs, 0).any(axis=0)
            presence = line.any(axis=0)[length].mean()
            is_thin[number] = presence >= LINE_PRESENCE and (
                self._thickness(line) <= LINE_THIN * strokes
            )
        return is_thin[numbers]

    def _cut_off(
        self, rows: NDArray[np.intp], columns: NDArray[np.intp], outward: int
    ) -> NDArray[np.bool_]:
        """Per run end (its straightened row, its last column, ``outward`` the way past it):
        whether the line's ink ends there on the image's top or bottom row, away from the
        corners, where that side crosses the line's rows beyond the end (the page turned so:
        a level stroke along a tight crop's top is not cut off)."""
        height, width = self.image.shape
        smear = self.smear
        image_rows = rows - self.shifts[columns]
        # Beyond the end the top side, straightened, comes down into the line's rows (or the
        # bottom side up): its row there moves the way of the slope times the way out.
        crossing = np.sign(self.slope) * outward
        at_top = (image_rows <= smear) & self.image[0, columns] & (crossing > 0)
        at_bottom = (image_rows >= height - 1 - smear) & self.image[-1, columns] & (crossing < 0)
        return (at_top | at_bottom) & (columns >= smear) & (columns < width - smear)

    @property
    def run_length(self) -> int:
        """The total length of line_runs."""
        _, starts, ends = self.line_runs
        return int((ends - starts).sum())

    def own(self, near: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """The pixels of ``near`` (ink near lines, straightened) that are the lines' own."""
        return near & self.line_like

    def line_ink(self, runs: Runs) -> NDArray[np.bool_]:
        """The own ink of ``runs`` (line_runs), no thicker across than these lines are (their
        lower quartile, and slack for a ragged edge; a stroke lying along a dashed line can
        outweigh its dashes): where a stroke crosses a line or runs along it, the ink is
        thicker and stays."""
        line = self.own(_painted(self.mask, runs, self.smear))
        if not line.any():
            return line
        return line & (self.thickness <= LINE_SLACK * self._thickness(line) + 1)

    def _thickness(self, line: NDArray[np.bool_]) -> float:
        """How thick ``line`` (own ink, some) is across the rows: the lower quartile, as a
        stroke crossing it or running along it is thicker."""
        return float(np.percentile(self.thickness[line], 25))


def _tilts(mask: NDArray[np.bool_]) -> tuple[float, float, float]:
    """Slopes (rows per column) within MAX_TILT degrees along which ``mask`` lines up best: its
    rows (the most ink in one row once its columns are shifted by the slope), its columns (the
    most in one column once its rows are shifted the other way), and both at once (the sum), as
    a turned page turns its lines both ways alike. 0 unless another slope lines up strictly
    more (level lines, or no line at all)."""
    factor = -(-max(mask.shape) // TILT_SIDE)
    height, width = (side // factor for side in mask.shape)
    shrunk = mask[: height * factor, : width * factor].reshape(height, factor, width, factor)
    rows, columns = np.nonzero(shrunk.any(axis=(1, 3)))
    if not len(rows):
        return 0.0, 0.0, 0.0
    # Level first, then by how far from it: the first of equally good slopes is the least tilted.
    angles = sorted(np.arange(-MAX_TILT, MAX_TILT + 0.25, 0.5), key=abs)
    slopes = np.tan(np.radians(angles))

    def fullest(positions: NDArray[np.intp], shifts: NDArray[np.intp]) -> int:
        shifted = positions + shifts
        return int(np.bincount(shifted - shifted.min()).max())

    along_rows = np.array([fullest(rows, np.round(columns * s).astype(np.intp)) for s in slopes])
    along_columns = np.array(
        [fullest(columns, -np.round(rows * s).astype(np.intp)) for s in slopes]
    )
    best = (along_rows.argmax(), along_columns.argmax(), (along_rows + along_columns).argmax())
    return tuple(float(slopes[index]) for index in best)


def _page(mask: NDArray[np.bool_], slope: float, margin: int) -> NDArray[np.bool_]:
    """Where the page lies in the image, which a line's length is measured against (_found):
    all of the image, unless all its ink lies on the page turned by ``slope`` that the image
    just holds, its corners on the image's sides (give or take ``margin`` pixels, the slope's
    error). A page photographed whole so, turned 10 degrees, has rows a quarter longer in the
    image than on the page: a box's side or an underline spanning the page fell short."""
    height, width = mask.shape
    cos, sin = np.cos(np.arctan(slope)), np.sin(np.arctan(slope))
    # The image is the turned page's bounding box: width = page_width cos + page_height |sin|.
    page_width = (width * cos - height * abs(sin)) / (cos**2 - sin**2)
    page_height = (height * cos - width * abs(sin)) / (cos**2 - sin**2)
    whole = np.ones_like(mask)
    if not slope or min(page_width, page_height) <= 0:
        return whole
    # From the image's centre, along the page's lines (a line's row falls by ``slope`` a
    # column: _tilts) and across them.
    rows, columns = np.mgrid[:height, :width]
    right, down = columns - (width - 1) / 2, rows - (height - 1) / 2
    within_width = np.abs(right * cos - down * sin) <= page_width / 2 + margin
    within_height = np.abs(right * sin + down * cos) <= page_height / 2 + margin
    page = within_width & within_height
    return whole if (mask & ~page).any() else page


def _straightened(
    mask: NDArray[np.bool_], page: NDArray[np.bool_], slopes: list[float], smear: int
) -> _Straightened:
    """``mask`` straightened by whichever of ``slopes`` finds the most line (line_runs' total
    length; the first of equals): a turned page's own slope, or the page's both ways, where a
    long stroke (a 1) outweighs the lines one way but not both, or the other way round."""
    candidates = [_Straightened(mask, page, slope, smear) for slope in dict.fromkeys(slopes)]
    return max(candidates, key=lambda straightened: straightened.run_length)


Runs = tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]  # row, start, end (exclusive)


def _runs(mask: NDArray[np.bool_]) -> Runs:
    """Every run of ``mask`` along its rows."""
    steps = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(steps == 1)
    ends = np.nonzero(steps == -1)[1]  # one per start, in the same order
    return rows, starts, ends


def _without_debris(
    rest: NDArray[np.bool_], band_rows: NDArray[np.bool_], band_columns: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """``rest`` less the lines' debris, which straightening leaves off their rows: a line's
    ragged edge, its corner with another, its tip where it runs out of the image across the
    side it runs along (a box cropped at its lines, turned with the page). Debris is a blob
    under DEBRIS_FRACTION of the rest's largest, wholly inside a band of lines along the rows
    (``band_rows``) or the columns, unless it reaches a side those lines run into: there it is
    where a stroke ends (a 7's bar in a tight crop), which a line must reach past."""
    blobs, n_blobs = ndimage.label(rest, structure=np.ones((3, 3)))
    if n_blobs < 2:
        return rest
    sizes = np.bincount(blobs.ravel(), minlength=n_blobs + 1)
    is_debris = np.zeros(n_blobs + 1, dtype=bool)
    for band, ends in ((band_rows, np.s_[:, [0, -1]]), (band_columns, np.s_[[0, -1], :])):
        outside = np.bincount(blobs[~band], minlength=n_blobs + 1)
        at_ends = np.bincount(blobs[ends].ravel(), minlength=n_blobs + 1)
        is_debris |= (outside == 0) & (at_ends == 0)
    is_debris &= sizes < DEBRIS_FRACTION * sizes[1:].max()
    is_debris[0] = False
    return rest & ~is_debris[blobs]


def _line_numbers(runs: Runs) -> NDArray[np.intp]:
    """Per run of ``runs`` (line_runs), which of their lines it is in, from 0: the lines are
    groups of consecutive rows."""
    rows = np.unique(runs[0])
    numbers = np.cumsum(np.diff(rows, prepend=rows[:1]) > 1)
    return numbers[np.searchsorted(rows, runs[0])]


def _n_lines(runs: Runs) -> int:
    """How many lines ``runs`` (line_runs) make (_line_numbers)."""
    return int(_line_numbers(runs).max(initial=-1) + 1)


def _stroke_width(ink: NDArray[np.bool_]) -> float:
    """How thick the strokes of ``ink`` (some) are: twice the median distance from their
    middles (where it is greatest around them) to their edges."""
    to_edge = ndimage.distance_transform_edt(ink)
    middles = ink & (to_edge >= ndimage.maximum_filter(to_edge, size=3))
    return 2 * float(np.median(to_edge[middles]))


def _painted(mask: NDArray[np.bool_], runs: Runs, smear: int) -> NDArray[np.bool_]:
    """The pixels of ``mask`` that the ``runs`` of its smeared rows (line_runs) came from."""
    rows, starts, ends = runs
    height, width = mask.shape
    edges = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(edges, (rows, starts), 1)
    np.add.at(edges, (rows, ends), -1)
    painted = (np.cumsum(edges, axis=1)[:, :width] > 0).astype(np.uint8)
    return mask & (ndimage.maximum_filter1d(painted, 2 * smear + 1, axis=0) > 0)


def _full_rows(mask: NDArray[np.bool_], rows_ink: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The pixels of ``mask`` in a stretch of its row, LINE_STRETCH of the image long, that is
    at least half ink (``rows_ink``): a line's own rows, ends included, not a stroke's beside
    it that runs along it for a while."""
    stretch = max(1, round(LINE_STRETCH * mask.shape[1]))
    full = ndimage.uniform_filter1d(rows_ink.astype(np.float32), stretch, axis=1) >= 0.5
    return mask & ndimage.maximum_filter1d(full, stretch, axis=1)


def _run_lengths(mask: NDArray[np.bool_]) -> NDArray[np.int32]:
    """Per pixel of ``mask``, the length of its run along its row (0 off the mask)."""
    rows, starts, ends = _runs(mask)
    height, width = mask.shape
    steps = np.zeros((height, width + 1), dtype=np.int32)
    steps[rows, starts] = ends - starts  # runs are apart: no two write to one place
    steps[rows, ends] = starts - ends
    return np.cumsum(steps, axis=1)[:, :width]
