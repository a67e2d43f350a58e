"""MNIST-style preprocessing of arbitrary images (data/images.py, lighting.py, form_lines.py)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from digit_recognizer.data import images
from digit_recognizer.data.form_lines import without_lines
from digit_recognizer.data.images import (
    MAX_IMAGE_PIXELS,
    MNIST_SLANT,
    NARROWINGS,
    STRETCHED_SHARE,
    check_images,
    conform_to_mnist,
    crosses_stem,
    faint_to_full_ink,
    files_ink_side,
    fills_box,
    in_mnist_format,
    ink_votes,
    is_image_name,
    load_image,
    narrowed,
    sheared,
    slants,
    to_mnist,
)
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.lighting import (
    flatten_lighting,
    opened_along_sides,
    paper_along_border,
    unevenly_lit,
)
from digit_recognizer.data.mnist import Mnist
from digit_recognizer.data.surroundings import sheet_on_a_desk, without_border_regions
from digit_recognizer.errors import DataError


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def drawing(
    size: tuple[int, int] = (300, 400),
    ink: str | tuple[int, ...] = "black",
    paper: str | tuple[int, ...] = "white",
    line: tuple[int, int, int, int] = (150, 60, 170, 340),
    mode: str = "RGB",
) -> Image.Image:
    """A thick pen stroke, as a person draws a "1"."""
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).line(line, fill=ink, width=24)
    return image


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, columns = np.indices(image.shape)
    total = image.sum()
    return (rows * image).sum() / total, (columns * image).sum() / total


def test_drawing_becomes_an_mnist_digit() -> None:
    digit = load_image(encode(drawing()), "one.png")
    assert digit.dtype == np.uint8 and digit.shape == (28, 28)
    assert digit.max() == 255 and digit[0].max() == digit[-1].max() == 0  # white ink on black
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    assert rows[-1] - rows[0] + 1 <= 21  # the tall side fills the 20-pixel box (+ Lanczos halo)
    assert rows[-1] - rows[0] + 1 >= 19
    row, column = centre_of_mass(digit.astype(float))
    assert abs(row - 14) <= 0.5 and abs(column - 14) <= 0.5  # where MNIST puts it


def test_light_and_dark_backgrounds_give_the_same_digit() -> None:
    dark_on_light = load_image(encode(drawing()))
    light_on_dark = load_image(encode(drawing(ink="white", paper="black")))
    np.testing.assert_array_equal(dark_on_light, light_on_dark)


def test_dark_ink_on_dim_grey_paper_is_still_the_ink() -> None:
    """Paper photographed in poor light is darker than mid-grey; the ink is darker still."""
    reference = load_image(encode(drawing()))
    for paper in (130, 100, 70):
        dim = load_image(encode(drawing(ink=(15, 15, 15), paper=(paper, paper, paper))))
        np.testing.assert_allclose(dim, reference, atol=2, err_msg=f"paper {paper}")


def test_a_fine_pen_on_a_large_page_comes_out_at_full_ink() -> None:
    """Shrunk from a 4,000-pixel page a 12-pixel stroke is a faint trace; MNIST's is 255."""
    page = Image.new("L", (3000, 4000), "white")
    ImageDraw.Draw(page).line((1500, 600, 1700, 3400), fill="black", width=12)
    digit = load_image(encode(page))
    assert digit.max() == 255
    rows = np.flatnonzero(digit.max(axis=1) > 64)
    assert rows[-1] - rows[0] + 1 >= 18  # the whole stroke, not its brightest pixels alone


def test_aspect_ratio_is_kept() -> None:
    bar = load_image(encode(drawing(size=(400, 300), line=(40, 150, 360, 150))))
    rows = np.flatnonzero(bar.max(axis=1) > 64)
    columns = np.flatnonzero(bar.max(axis=0) > 64)
    assert len(columns) >= 19 and len(rows) <= 4  # a wide, thin bar stays wide and thin


def test_transparent_canvas_and_grey_photo() -> None:
    reference = load_image(encode(drawing()))
    transparent = drawing(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
    np.testing.assert_allclose(load_image(encode(transparent)), reference, atol=2)
    # A photo: grey paper, dark-grey pen, JPEG artefacts, then the contrast is stretched.
    photo = load_image(encode(drawing(ink=(70, 70, 80), paper=(190, 185, 180)), "JPEG"))
    assert correlation(photo, reference) > 0.95


@pytest.mark.parametrize("mode", ["1", "P", "CMYK", "YCbCr", "LAB"])
def test_a_tiff_of_any_colour_mode_reads_as_its_rgb_does(mode: str) -> None:
    """Pillow converts a Lab image to no other mode: a Lab TIFF was refused as undecodable."""
    reference = load_image(encode(drawing()))
    np.testing.assert_allclose(load_image(encode(drawing().convert(mode), "TIFF")), reference,
                               atol=2)  # fmt: skip


def test_a_16_bit_png_s_transparent_level_takes_the_contrasting_colour() -> None:
    """A 16-bit greyscale PNG marks a transparent level in its tRNS chunk, as an 8-bit one does:
    light-grey strokes on a canvas transparent at white are read on black, not on the white."""
    strokes = np.asarray(drawing().convert("L")) < 128
    canvas = Image.fromarray(np.where(strokes, 60000, 65535).astype(np.uint16))
    canvas.info["transparency"] = 65535
    assert canvas.mode == "I;16"
    np.testing.assert_allclose(load_image(encode(canvas)), load_image(encode(drawing())), atol=1)


@pytest.mark.parametrize(
    ("scale", "offset", "dtype", "image_format"),
    [(257, 0, np.uint16, "PNG"), (257, 0, np.uint16, "TIFF"), (1 / 255, 0, np.float32, "TIFF"),
     (2 / 255, -1, np.float32, "TIFF"), (2 / 255, 0, np.float32, "TIFF"),
     (4095 / 255, 0, np.uint16, "PNG"), (4, -1020, np.int32, "TIFF")],
    ids=["16-bit PNG", "16-bit TIFF", "float TIFF", "float TIFF -1..1 (USPS)", "float TIFF 0..2",
         "12 bits in a 16-bit PNG", "signed 32-bit TIFF below 0"],
)  # fmt: skip
def test_scans_deeper_than_8_bits(
    scale: float, offset: float, dtype: type, image_format: str
) -> None:
    # Scanners write 16-bit greyscale; Pillow's own conversion to 8 bits clips grey ink to white.
    # A camera's 12 bits in a 16-bit file are scaled by their own range, not 65,535's; floats,
    # which have no full scale, by theirs unless they lie in 0-1, and so are integers below 0.
    scan = drawing(ink=(60, 60, 60), paper=(230, 230, 230)).convert("L")
    values = np.asarray(scan, dtype=np.float64) * scale + offset
    deep = Image.fromarray(values.astype(dtype))
    assert deep.mode in ("I;16", "I", "F")
    reference = load_image(encode(scan))
    np.testing.assert_allclose(load_image(encode(deep, image_format)), reference, atol=1)


def test_a_shadow_across_the_paper_is_not_ink() -> None:
    # A phone photo's light falls off across the page: paper from 240 to 140, ink 40.
    even = load_image(encode(drawing(ink=(40, 40, 40), paper=(240, 240, 240))))
    page = np.asarray(drawing(ink=(0, 0, 0), paper=(255, 255, 255)).convert("L"), np.float32)
    light = np.linspace(240, 140, page.shape[1])[None, :]
    shaded = np.where(page < 128, 40, light).astype(np.uint8)
    digit = load_image(encode(Image.fromarray(shaded)))
    columns = np.flatnonzero(digit.max(axis=0) > 64)
    assert len(columns) <= 8  # a thin stroke, as on even paper, not the shaded half of the page
    assert correlation(digit, even) > 0.9


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_a_page_with_transparent_margins_is_read_on_its_paper() -> None:
    """A photo turned in an editor leaves transparent corners, which belong to the paper, where
    strokes on a transparent canvas take the colour that contrasts with them."""
    page = drawing(size=(300, 300), line=(150, 50, 160, 250)).convert("RGBA")
    turned = page.rotate(7, expand=True, fillcolor=(0, 0, 0, 0))
    on_white = Image.alpha_composite(Image.new("RGBA", turned.size, "white"), turned)
    assert correlation(load_image(encode(turned)), load_image(encode(on_white))) > 0.95


def cropped_to_ink(digit: np.ndarray) -> np.ndarray:
    """An MNIST digit without the empty rows and columns around its ink."""
    rows, columns = np.nonzero(digit)
    return digit[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def bold_crop(digit: np.ndarray) -> np.ndarray:
    """An MNIST digit enlarged to 120 pixels high, written 6 pixels bolder in dark ink on grey
    paper, and cropped to where its strokes were before: the strokes reach the edges."""
    ink = cropped_to_ink(digit)
    size = (round(ink.shape[1] * 120 / ink.shape[0]), 120)
    big = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC), np.float32)
    big = ndimage.grey_dilation(big, size=(7, 7))
    return np.clip(235 - big / 255 * 205, 0, 255).astype(np.uint8)


def test_a_bold_digit_cropped_tight_to_its_ink_keeps_its_strokes_whole(mnist: Mnist) -> None:
    """Strokes that reach the image's edges are no uneven lighting: levelling it would take the
    strokes' own level for the paper's there and hollow them out."""
    for digit in mnist.images[:10]:
        crop = bold_crop(digit)
        with_margin = np.pad(crop, 10, constant_values=235)
        read = [load_image(encode(Image.fromarray(image))) for image in (crop, with_margin)]
        assert correlation(*read) > 0.98


def test_a_marker_s_digit_cropped_tight_keeps_its_ink_s_side(small_test: DigitSet) -> None:
    """A marker's strokes fill half the band along the edges that the paper's level is taken
    from, where the image's rim is still mostly paper: the rim decides then. Read inverted, as
    the paper's digit, 14 of these 60 had come out unlike the same crop with a margin."""
    unlike = 0
    for digit in small_test.images[:60]:
        ink = cropped_to_ink(digit)
        size = (ink.shape[1] * 8, ink.shape[0] * 8)
        big = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC), np.float32)
        crop = np.clip(255 - ndimage.grey_dilation(big, size=(15, 15)), 0, 255).astype(np.uint8)
        with_margin = np.pad(crop, 12, constant_values=255)
        read = [load_image(encode(Image.fromarray(image))) for image in (crop, with_margin)]
        unlike += correlation(*read) < 0.5
    assert unlike <= 2


def test_a_small_scan_of_a_forms_box_loses_the_box() -> None:
    """A 5 mm box scanned at 200 dpi is 40 pixels a side: its lines go as a photo's do."""
    plain = Image.new("L", (40, 40), 235)
    ImageDraw.Draw(plain).line((19, 8, 21, 32), fill=30, width=2)
    boxed = plain.copy()
    ImageDraw.Draw(boxed).rectangle((1, 1, 38, 38), outline=30, width=1)
    assert correlation(load_image(encode(boxed)), load_image(encode(plain))) > 0.99


def test_a_fine_pen_on_a_large_page_is_no_blank_page() -> None:
    """Ink on under 0.1 % of the pixels: the percentiles that judge which way the ink goes see
    only paper there, and the extremes decide."""
    page = Image.new("L", (400, 400), 225)
    ImageDraw.Draw(page).line((200, 170, 200, 206), fill=40, width=3)
    digit = load_image(encode(page))
    assert digit.max() == 255 and len(np.flatnonzero(digit.max(axis=0) > 64)) <= 4  # upright
    # A fainter pen under light falling off across the page: the grain is the paper's noise,
    # not the spread of its levels.
    faint = Image.new("L", (400, 400), 225)
    ImageDraw.Draw(faint).line((200, 170, 200, 206), fill=135, width=3)
    lit = np.asarray(faint, np.float32) + np.linspace(-25, 25, 400)[None, :]
    lit_digit = load_image(encode(Image.fromarray(lit.astype(np.uint8))))
    assert correlation(lit_digit, digit) > 0.95
    # And a small digit in a large photo, 6 pixels high once prepared at 1/7 scale, is a digit.
    photo = Image.new("L", (2400, 1800), 225)
    ImageDraw.Draw(photo).line((1200, 880, 1200, 920), fill=40, width=8)
    assert load_image(encode(photo)).max() == 255
    # A speck on a blank page is no digit: it was enlarged to fill the 20 x 20 box.
    for side in (1, 2, 3):
        blank = Image.new("L", (300, 300), 255)
        ImageDraw.Draw(blank).rectangle((150, 150, 149 + side, 149 + side), fill=0)
        with pytest.raises(DataError, match="no digit found, only a speck"):
            load_image(encode(blank))
    # Nor is a blank page's grain, whose extremes stand out from it by ~4.5 sigma.
    grain = np.random.default_rng(1).normal(230, 8, (300, 300)).clip(0, 255).astype(np.uint8)
    with pytest.raises(DataError, match=r"no digit found .* but for its grain"):
        load_image(encode(Image.fromarray(grain)))
    # A one-pixel image has no grain to tell (it had put numpy's warning in the server's log).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in ((1, 1), (40, 1)):
            with pytest.raises(DataError, match="no digit found"):
                load_image(encode(Image.fromarray(np.zeros(shape, np.uint8))))


def test_dust_on_the_scan_is_not_part_of_the_digit() -> None:
    """Specks far from the digit would stretch the crop to them and shrink the digit; a stroke
    of the digit's own, however detached, stays."""
    clean = load_image(encode(drawing()))
    dusty = drawing()
    pen = ImageDraw.Draw(dusty)
    for x, y in ((20, 20), (270, 30), (40, 370), (280, 380)):
        pen.ellipse((x, y, x + 8, y + 8), fill="black")
    np.testing.assert_allclose(load_image(encode(dusty)), clean, atol=2)
    # A "7"'s crossbar drawn apart from its stem is a third of its ink: kept, and the crop
    # widens to it.
    seven = drawing(line=(150, 60, 150, 340))
    ImageDraw.Draw(seven).line((100, 200, 200, 200), fill="black", width=24)
    crossbar = np.flatnonzero(load_image(encode(seven)).max(axis=0) > 64)
    assert len(crossbar) >= 6


def ruled(pen: ImageDraw.ImageDraw) -> None:
    """Dark lines ruled across a 300 x 400 page, every 60 pixels."""
    for y in range(30, 400, 60):
        pen.line((0, y, 299, y), fill="black", width=3)


def boxed(pen: ImageDraw.ImageDraw) -> None:
    """A form's box on a 300 x 400 page, inside it."""
    pen.rectangle((10, 10, 289, 389), outline="black", width=8)


def underlined(pen: ImageDraw.ImageDraw) -> None:
    """The line under a digit on a 300 x 400 page."""
    pen.line((10, 360, 290, 360), fill="black", width=6)


def form_photo(digit: np.ndarray, draw_lines, angle: float, whole: bool = True) -> np.ndarray:
    """An MNIST digit written 280 pixels high on a 300 x 400 page with ``draw_lines``'s lines,
    the page turned by ``angle`` and photographed whole (its corners filled in) or cropped to
    the page's size, read."""
    page = Image.new("L", (300, 400), "white")
    page.paste(Image.fromarray(255 - digit).resize((280, 280)), (10, 60))
    draw_lines(ImageDraw.Draw(page))
    return load_image(encode(page.rotate(angle, expand=whole, fillcolor="white")))


def test_a_forms_box_and_ruled_lines_are_not_part_of_the_digit() -> None:
    """A box around the digit (cropped at its lines, or inside the image), the line it was
    written on and lines ruled across it would be cropped with it and shrink it."""
    clean = load_image(encode(drawing()))

    def with_lines(draw_lines) -> np.ndarray:
        page = drawing()
        draw_lines(ImageDraw.Draw(page))
        return load_image(encode(page))

    boxed = with_lines(lambda pen: pen.rectangle((0, 0, 299, 399), outline="black", width=5))
    inset = with_lines(lambda pen: pen.rectangle((20, 20, 279, 379), outline="black", width=5))
    underlined = with_lines(lambda pen: pen.line((10, 360, 290, 360), fill="black", width=6))
    for digit in (boxed, inset, underlined):
        np.testing.assert_allclose(digit, clean, atol=2)

    assert correlation(with_lines(ruled), clean) > 0.9  # cut where crossed


def test_lines_of_a_page_photographed_askew_are_removed_too() -> None:
    """A hand-held photo turns the page: its lines run a few degrees off the rows, ruled lines
    run out of the image at its corners, and a box cropped at its lines runs out across the
    sides it ran along, short of the digit's far side."""

    def turned(draw_lines, expand: bool, angle: float) -> np.ndarray:
        page = drawing()
        draw_lines(ImageDraw.Draw(page))
        photo = page.rotate(angle, Image.Resampling.BILINEAR, expand=expand, fillcolor="white")
        return load_image(encode(photo))

    def cropped_at_its_lines(pen: ImageDraw.ImageDraw) -> None:
        pen.rectangle((0, 0, 299, 399), outline="black", width=5)

    # Turned by -7 degrees, the 1's stroke lies nearer the columns than the box's side lines.
    cases = [(ruled, False, 7), (boxed, True, 7), (underlined, True, 7)]
    cases += [(cropped_at_its_lines, False, angle) for angle in (7, -7)]
    for draw_lines, expand, angle in cases:
        clean = turned(lambda pen: None, expand, angle)
        digit = turned(draw_lines, expand, angle)
        assert correlation(digit, clean) > 0.95


def test_a_box_and_an_underline_on_a_page_turned_10_degrees_are_removed(
    small_test: DigitSet,
) -> None:
    """The page turned 10 degrees (MAX_TILT) and photographed whole, its corners filled in: the
    photo is a fifth wider than the page, and a box's top or an underline, spanning three
    quarters of it, was kept (correlation 0.02-0.5 with the page without them). Measured
    against the page the photo holds, they span it."""
    for digit in small_test.images[[0, 3, 4]]:  # a 7, a 0 and a 4
        for angle in (10, -10):
            clean = form_photo(digit, lambda pen: None, angle)
            for draw_lines in (boxed, underlined):
                assert correlation(form_photo(digit, draw_lines, angle), clean) > 0.95


def test_a_box_on_a_page_turned_on_its_side_and_10_degrees_more_is_removed(
    small_test: DigitSet,
) -> None:
    """The page photographed whole on its side, 10 degrees off (a landscape form): the box's
    sides run down the columns and span the page's height, a fifth less than the photo's. The
    columns are measured against the page the photo holds, as the rows are: against the photo's
    height, the sides fell short and were kept (correlation 0.03-0.25)."""
    for digit in small_test.images[[0, 3, 4]]:
        for angle in (80, 100):
            clean = form_photo(digit, lambda pen: None, angle)
            assert correlation(form_photo(digit, boxed, angle), clean) > 0.95


def test_a_line_reaches_past_the_digit_along_itself_not_along_the_columns(
    small_test: DigitSet,
) -> None:
    """Turned with the page, a digit above its underline or inside its box moves along the line
    by its height above it times the tilt (26 pixels for 150 at 10 degrees): measured by the
    image's columns, a line reaching past the digit on the page fell short of it at one end,
    and stayed (correlation 0.05-0.35 with the page without it). Ruled lines that run out of
    the image at its sides go on past it: those ends are still compared by column."""
    cases = [(10, underlined, -10, True), (11, underlined, -10, True), (7, boxed, 7, True)]
    cases += [(1, ruled, 10, False), (8, ruled, 10, False)]  # a 0, a 6, a 9; a 2, a 5
    # A line's start is compared as its end is (by column on the image's side, else along the
    # line): the two swapped at the start, this 5's underline and box stayed (0.35-0.40).
    cases += [(8, underlined, 10, True), (8, boxed, -10, True)]
    for index, draw_lines, angle, whole in cases:
        digit = small_test.images[index]
        clean = form_photo(digit, lambda pen: None, angle, whole)
        assert correlation(form_photo(digit, draw_lines, angle, whole), clean) > 0.95


def test_a_box_and_an_underline_around_a_digit_as_wide_as_its_page_are_removed(
    small_test: DigitSet,
) -> None:
    """A 2 whose base runs to the page's right side, a 6 as wide: the box's top and bottom and
    the underline reach past the digit by less than LINE_OVERHANG, and were kept at every
    angle (correlation 0.07-0.37 with the page without them). Their own ink lies along all of
    them, a fifth as thick as the digit's strokes: a form's lines, not a stroke of the digit."""
    for index, lines in ((1, (boxed, underlined)), (54, (boxed,))):  # MNIST test 60001, 60054
        digit = small_test.images[index]
        for angle in (0, -10):
            clean = form_photo(digit, lambda pen: None, angle)
            for draw_lines in lines:
                assert correlation(form_photo(digit, draw_lines, angle), clean) > 0.95


def test_squared_paper_photographed_askew_loses_its_grid() -> None:
    """Squared paper's lines lie closer together than a single line's band, and thin grey ones,
    turned, fall apart into dashes under the ink threshold: still found, and removed."""

    def photo(grid: bool) -> np.ndarray:
        page = drawing()
        pen = ImageDraw.Draw(page)
        for position in range(20, 400, 40) if grid else ():
            pen.line((0, position, 299, position), fill=(150, 150, 150), width=1)
            pen.line((position, 0, position, 399), fill=(150, 150, 150), width=1)
        return load_image(encode(page.rotate(4, Image.Resampling.BILINEAR, fillcolor="white")))

    assert correlation(photo(grid=True), photo(grid=False)) > 0.95


def test_a_stroke_along_a_line_keeps_its_ink() -> None:
    """A digit written on the line: its foot runs along it, thicker than the line, and stays."""
    two = drawing(line=(80, 80, 220, 80))
    pen = ImageDraw.Draw(two)
    pen.line((220, 80, 80, 320), fill="black", width=24)
    pen.line((80, 320, 230, 320), fill="black", width=24)  # the foot, from y = 308 to 332
    clean = load_image(encode(two))
    pen.line((0, 330, 299, 330), fill="black", width=4)  # the line, under the foot's lower edge
    pen.line((0, 150, 299, 150), fill="black", width=4)  # and one crossing the diagonal
    np.testing.assert_allclose(load_image(encode(two)), clean, atol=40)


def test_a_thin_one_cropped_tight_is_not_a_line() -> None:
    """A 1 drawn with a thin pen spans a tight crop as a line would; where the pen pressed, it
    is thicker. That part lies on the stroke's own line, not beside it: no digit beside a line."""
    one = Image.new("L", (100, 130), "white")
    pen = ImageDraw.Draw(one)
    pen.line((50, 0, 52, 129), fill="black", width=5)
    pen.line((50, 40, 51, 70), fill="black", width=11)
    ink = (255 - np.asarray(one, np.float32)) / 255
    np.testing.assert_array_equal(without_lines(ink, ink > images.INK_THRESHOLD), ink)


def test_a_large_image_reads_as_a_small_one() -> None:
    """Photos are shrunk before they are prepared (as JPEGs are on decoding): a 2400 x 3200
    drawing comes out as its 300 x 400 original does, in a fraction of the time it would take."""
    small = drawing()
    large = small.resize((2400, 3200), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(load_image(encode(large)), load_image(encode(small)), atol=24)


def test_digits_cropped_tight_keep_every_stroke(small_test: DigitSet, monkeypatch) -> None:
    """A tight crop makes a 7's bar or a 4's stem span the image, as a line would: kept (of
    3,000 such digits 7 lose a few edge pixels of a bar; none of these 60)."""
    tight = []
    for image in small_test.images[:60]:
        crop = cropped_to_ink(image)
        size = (crop.shape[1] * 5, crop.shape[0] * 5)
        tight.append(np.asarray(Image.fromarray(255 - crop).resize(size, Image.Resampling.BICUBIC)))
    with_line_step = [to_mnist(image) for image in tight]
    monkeypatch.setattr(images, "without_lines", lambda ink, is_ink: ink)
    monkeypatch.setattr(images, "without_border_regions", lambda ink, is_ink: ink)
    for image, digit in zip(tight, with_line_step, strict=True):
        np.testing.assert_array_equal(to_mnist(image), digit)


def photo_of_a_page(digit: np.ndarray, surround: str) -> Image.Image:
    """``digit`` enlarged x6 in ink 40 on paper 225, photographed 640 x 480 with what lies
    around the page: nothing, a desk (grey 35) on every side or along one side, or a dark strip
    along the bottom (another sheet's edge, a scanner lid's shadow); ", turned": 10 degrees."""
    ink = np.asarray(Image.fromarray(digit).resize((168, 168), Image.Resampling.BICUBIC)) / 255
    photo = np.full((480, 640), 225.0)
    photo[156:324, 236:404] = 225 - 185 * ink
    if surround.startswith("desk on every side"):
        photo[:60], photo[-60:], photo[:, :80], photo[:, -80:] = 35, 35, 35, 35
    elif surround == "desk along one side":
        photo[:, :96] = 35
    elif surround == "dark strip along the bottom":
        photo[-30:] = 40
    image = Image.fromarray(photo.round().astype(np.uint8))
    turned = image.rotate(10, fillcolor=35 if surround.startswith("desk") else 225)
    return turned if surround.endswith("turned") else image


@pytest.mark.parametrize(
    "surround",
    ["desk on every side", "desk on every side, turned", "desk along one side",
     "dark strip along the bottom"],
)  # fmt: skip
def test_what_lies_around_the_page_is_not_the_digit(small_test: DigitSet, surround: str) -> None:
    """A desk filling the border band was taken for the paper, and the sheet for the ink; a
    desk or a strip along one side was cropped with the digit (90 % of such photos misread)."""
    alone = "nothing, turned" if surround.endswith("turned") else "nothing"
    for digit in small_test.images[:10]:
        on_its_own = load_image(encode(photo_of_a_page(digit, alone)))
        assert correlation(load_image(encode(photo_of_a_page(digit, surround))), on_its_own) > 0.9


def test_a_strip_along_a_side_goes_only_beside_a_digit_clear_of_the_sides() -> None:
    """A strip along the left side beside a digit standing clear of every side is a desk's
    edge; beside a digit that touches a side (written at the page's edge, cropped tight) it may
    be the digit's own stroke, and nothing goes. The strip itself is no such clear digit."""
    strip = np.zeros((100, 100), dtype=np.float32)
    strip[:, :3] = 1
    for digit_rows, strip_removed in ((np.s_[60:100], False), (np.s_[30:70], True)):
        ink = strip.copy()
        ink[digit_rows, 45:52] = 1
        kept = without_border_regions(ink, ink > 0.5)
        assert not kept[:, :3].any() if strip_removed else kept[:, :3].all()
        np.testing.assert_array_equal(kept[:, 3:], ink[:, 3:])  # the digit is never touched


def test_a_dark_card_on_light_paper_is_no_sheet_on_a_desk() -> None:
    """A sheet on a desk is brighter than the desk around it. A dark card with a light digit on
    it, on white paper, is read as ink of the same shape (large, nearly a rectangle, holes where
    the digit is) but is darker than what lies around it: no sheet."""
    pixels = np.full((100, 100), 220, dtype=np.float32)
    pixels[20:80, 20:80] = 40  # the card
    pixels[35:65, 45:52] = 220  # its digit
    assert sheet_on_a_desk(pixels < 128, pixels) is None
    # The same shapes in the brightness of a sheet on a desk: found.
    sheet = sheet_on_a_desk(pixels < 128, 255 - pixels)
    assert sheet is not None and sheet[20:80, 20:80].all() and sheet.sum() == 60 * 60


def test_faint_rows_are_scaled_to_full_ink_rounding_to_nearest() -> None:
    """Truncated, UCI's 0-16 ink came out a shade dark (1 -> 15, not 16) and every level off
    by up to one: each pixel is v * 255 / peak rounded to the nearest, ties up."""
    levels = np.zeros((3, 28, 28), np.uint8)
    for row, peak in enumerate((16, 7, 3)):
        levels[row, 0, : peak + 1] = np.arange(peak + 1)
    levels[2, 5, 5] = 40  # not faint: left as it is
    scaled, n_faint = faint_to_full_ink(levels)
    assert n_faint == 2
    for row, peak in enumerate((16, 7)):
        expected = np.floor(np.arange(peak + 1) * 255 / peak + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(scaled[row, 0, : peak + 1], expected)
    assert scaled[0, 0, 1] == 16 and scaled[0, 0, 8] == 128 and scaled[1, 0, 4] == 146
    np.testing.assert_array_equal(scaled[2], levels[2])


def test_specks_in_a_csv_row_are_dropped_when_it_is_conformed(small_test: DigitSet) -> None:
    originals = small_test.images[:40]
    dusty = originals.copy()
    dusty[:, 1:3, 1:3] = dusty[:, 25:27, 24:26] = 255  # two 2 x 2 specks in the corners
    conformed, n_redone = conform_to_mnist(dusty)
    assert n_redone == len(dusty)  # the specks took them out of MNIST's layout
    pairs = zip(conformed, originals, strict=True)
    correlations = [correlation(a, b) for a, b in pairs]
    assert min(correlations) > 0.9


def test_a_fine_pens_stroke_broken_into_dashes_is_kept_whole_when_conformed() -> None:
    """A 1-pixel stroke in a 28 x 28 row falls apart at the ink threshold, its dashes joined by
    faint ink: they are the digit, not specks, or the 7 would be its bar blown up to 20 px."""
    seven = np.zeros((28, 28), np.uint8)
    seven[3:6, 4:24] = 255
    for step, row in enumerate(range(6, 26)):  # the stem, down to the left
        seven[row, 22 - row * 2 // 3] = 255 if step % 4 < 2 else 60
    conformed, n_redone = conform_to_mnist(seven[None])
    inked_rows = np.flatnonzero(conformed[0].max(axis=1) > 64)
    assert n_redone == 1 and inked_rows.max() - inked_rows.min() + 1 == 20  # the bar alone: 5


def test_mnist_digits_survive_the_round_trip(small_test: DigitSet) -> None:
    """An MNIST digit, enlarged and printed black on white, comes back as itself (give or take
    a pixel of shift where MNIST rounded its centre of mass the other way)."""
    correlations = []
    for original in small_test.images[:20]:
        printed = Image.fromarray(255 - original).resize((112, 112), Image.Resampling.BICUBIC)
        again = load_image(encode(printed))
        correlations.append(correlation(again, original))
    assert np.median(correlations) > 0.95 and min(correlations) > 0.6


def test_every_mnist_image_is_in_mnist_format(mnist: Mnist) -> None:
    """The layout test holds for all 70,000 images, so conforming leaves MNIST (and Kaggle's
    files, which are MNIST) untouched, bit for bit."""
    assert in_mnist_format(mnist.images).all()
    conformed, n_redone = conform_to_mnist(mnist.images[:2000])
    assert n_redone == 0 and np.array_equal(conformed, mnist.images[:2000])


def ink_height_and_width(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many rows and columns each image (N, 28, 28) has ink on, from its first to its last."""
    rows, columns = (np.asarray(images) > 0).any(axis=2), (np.asarray(images) > 0).any(axis=1)
    return tuple(np.where(lines.any(axis=1),
                          lines.shape[1] - lines[:, ::-1].argmax(axis=1) - lines.argmax(axis=1), 0)
                 for lines in (rows, columns))  # fmt: skip


def test_narrowings_are_mnists_widths_and_few_of_its_digits_fill_the_box(mnist: Mnist) -> None:
    """A stretched collection's digits are tried at NARROWINGS of their width, MNIST's digits'
    width over height at their 10th-70th percentiles; a file is stretched when STRETCHED_SHARE of
    its digits fill MNIST's box both ways, as a fifth of MNIST's own do."""
    heights, widths = ink_height_and_width(mnist.images)
    np.testing.assert_allclose(np.quantile(widths / heights, [0.1, 0.3, 0.5, 0.7]), NARROWINGS)
    filling = fills_box(mnist.images)
    np.testing.assert_array_equal(filling, np.minimum(heights, widths) >= 19)
    assert round(filling.mean(), 2) == 0.20 < STRETCHED_SHARE


def test_a_narrowed_digit_keeps_its_height_and_is_centred_by_mass_again(small_test) -> None:
    images = np.concatenate([small_test.images[:50], np.zeros((1, 28, 28), np.uint8)])
    heights, widths = ink_height_and_width(images)
    for fraction in (0.5, 0.8):
        narrow = narrowed(images, fraction)
        narrow_heights, narrow_widths = ink_height_and_width(narrow)
        np.testing.assert_array_equal(narrow_heights, heights)
        assert np.abs(narrow_widths - np.maximum(1, np.round(widths * fraction))).max() <= 1
        columns = (narrow[:50].sum(axis=1) * np.arange(28)).sum(axis=1) / narrow[:50].sum((1, 2))
        assert np.abs(columns - 14).max() <= 0.5  # MNIST's centre of mass
    assert not narrow[50].any()  # a blank image stays blank


def test_mnists_writers_lean_forward_by_mnist_slant(mnist: Mnist) -> None:
    """MNIST_SLANT is the mean slant of MNIST's 70,000; its test set's two writer groups (Census
    employees, then students) lean -0.01 and -0.18."""
    leans = slants(mnist.images)
    assert round(leans.mean(), 2) == MNIST_SLANT
    census, students = leans[60000:65000].mean(), leans[65000:].mean()
    assert (round(census, 2), round(students, 2)) == (-0.01, -0.18)


def test_a_sheared_digit_leans_less_by_the_shear_and_keeps_its_centre(small_test) -> None:
    images = np.concatenate([small_test.images[:50], np.zeros((1, 28, 28), np.uint8)])
    centre_columns = (images[:50].sum(axis=1) * np.arange(28)).sum(axis=1) / images[:50].sum((1, 2))
    for shear in (-0.4, 0.3):
        leaning = sheared(images, shear)
        change = slants(leaning[:50]) - slants(images[:50])
        assert np.abs(change + shear).max() < 0.05
        columns = (leaning[:50].sum(axis=1) * np.arange(28)).sum(axis=1) / leaning[:50].sum((1, 2))
        assert np.abs(columns - centre_columns).max() < 0.5
        assert not leaning[50].any()  # a blank image stays blank
    # A digit whose ink leans forward (its top to the right) has a negative slant.
    forward = np.zeros((1, 28, 28), np.uint8)
    for row in range(4, 24):
        forward[0, row, 20 - row // 2 : 22 - row // 2] = 255
    assert slants(forward)[0] == pytest.approx(-0.5, abs=0.05)


def frame_filling(image: np.ndarray) -> np.ndarray:
    """An MNIST digit as another collection lays it out: cropped to its ink and enlarged to fill
    the 28 x 28 frame on its long side (as USPS's 16 x 16 digits are when upscaled)."""
    crop = cropped_to_ink(image)
    scale = 28 / max(crop.shape)
    height, width = (round(side * scale) for side in crop.shape)
    enlarged = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR))
    frame = np.zeros((28, 28), dtype=np.uint8)
    frame[:height, (28 - width) // 2 : (28 - width) // 2 + width] = enlarged
    return frame


def test_digits_from_other_layouts_are_redone_as_mnist(small_test: DigitSet) -> None:
    originals = small_test.images[:50]
    # Moved down 3 rows without wrapping (np.roll wraps ink to the far edge, which only the
    # size rule catches): the box keeps MNIST's size, so only the centre-of-mass rule rejects it.
    lowered = np.zeros_like(originals[3])
    lowered[3:] = originals[3][:-3]
    foreign = np.stack(
        [frame_filling(originals[0]), 255 - originals[1], np.roll(originals[2], (5, -4), (0, 1))]
        + [lowered]
        + [frame_filling(image) for image in originals[4:]]
    )
    assert lowered.sum() == originals[3].sum()  # no ink lost off the bottom edge
    assert in_mnist_format(originals[3:4]).all()
    assert not in_mnist_format(foreign).any()
    blank = np.zeros((1, 28, 28), dtype=np.uint8)
    conformed, n_redone = conform_to_mnist(np.concatenate([foreign, blank]))
    assert n_redone == len(foreign)  # the blank image has no digit to fit: left as it is
    assert np.array_equal(conformed[-1], blank[0])
    assert in_mnist_format(conformed[:-1]).all()
    pairs = zip(conformed[:-1], originals, strict=True)
    correlations = [correlation(a, b) for a, b in pairs]
    assert np.median(correlations) > 0.9 and min(correlations) > 0.6


def semeion_like(image: np.ndarray) -> np.ndarray:
    """An MNIST digit as Semeion lays its digits out: bold, binarised, stretched on both axes to
    fill 16 x 16 pixels (here upscaled to 28 x 28), so that its strokes run along the edges."""
    ink = ndimage.grey_dilation(image, size=(2, 2)) > 127
    rows, columns = np.nonzero(ink)
    crop = Image.fromarray(ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1])
    small = crop.convert("L").resize((16, 16), Image.Resampling.NEAREST)
    return np.asarray(small.resize((28, 28), Image.Resampling.BILINEAR))


def frame_hugging_zero() -> np.ndarray:
    """A 0 as Semeion's: stretched to its frame, its strokes along the edges."""
    canvas = Image.new("L", (28, 28))
    ImageDraw.Draw(canvas).rounded_rectangle((0, 0, 27, 27), radius=8, outline=255, width=3)
    return np.asarray(canvas)


@pytest.mark.parametrize("ink", ["light", "dark"])
def test_a_digit_whose_strokes_fill_the_edges_keeps_its_files_ink_side(small_test, ink) -> None:
    """The paper is read along the edges, which a bold 0 stretched to its frame covers with its
    strokes: the 0 had become a disc of paper, read as 9 (Semeion's 0s and 8s). Its file's
    other rows tell the ink's side; alone it still goes by its edges."""
    ring = frame_hugging_zero()
    rows = np.stack([ring] + [semeion_like(image) for image in small_test.images[:40]])
    if ink == "dark":
        rows = 255 - rows
    conformed = conform_to_mnist(rows)[0]
    # The ring's hole is paper, as in the same 0 given a margin of paper to be read from.
    framed = np.zeros((40, 40), dtype=np.uint8)
    framed[6:34, 6:34] = ring
    assert conformed[0][14, 14] == 0
    assert correlation(conformed[0], to_mnist(framed)) > 0.9
    alone = conform_to_mnist(rows[:1])[0][0]
    assert correlation(alone, conformed[0]) < 0.5


def test_mnist_rows_do_not_vote_a_files_ink_side(small_test) -> None:
    """A few dark scans among MNIST's rows: MNIST's had voted for white ink, and turned those of
    the scans whose edges were in doubt, which alone were read right. The votes need rows whose
    edges settle it: 8, 90 % of them alike."""
    scans = (255 - semeion_like(image) for image in small_test.images)
    doubted = next(scan for scan in scans if row_ink_side(scan) == (True, True))
    rows = np.concatenate([small_test.images[:20], doubted[None]])
    assert np.array_equal(conform_to_mnist(rows)[0][-1], to_mnist(doubted))
    assert files_ink_side(ink_votes(rows)) is None
    assert files_ink_side([1, 7]) is None and files_ink_side([0, 8]) is True
    assert files_ink_side([1, 9]) is True and files_ink_side([2, 9]) is None
    assert files_ink_side([10, 0]) is False


def row_ink_side(row: np.ndarray) -> tuple[bool, bool]:
    """Whether a row's edges read its ink as dark, and whether that is in doubt (blank: dark
    False, in doubt)."""
    side, in_doubt = images._row_ink_side(row)
    return side is not None and side.is_dark, in_doubt


def frame_of_ink(width: int, extra: int = 0) -> np.ndarray:
    """White ink on black along all four edges, ``width`` pixels deep, and ``extra`` pixels of it
    inside: its edges read it as dark ink on white paper, paper that covers under half of it
    (width 4: 384 of 784 pixels) or, 8 pixels more, exactly half."""
    frame = np.full((28, 28), 255, dtype=np.uint8)
    frame[width:-width, width:-width] = 0
    frame[width, width : width + extra] = 255
    return frame


def test_a_row_is_in_doubt_while_the_paper_its_edges_point_to_covers_under_half_of_it() -> None:
    """The share of the row its edges' paper covers decides which rows are in doubt (and take
    their file's ink side) and which vote: under half, not at half, nor only under 0.4; a blank
    row, but for its grain, is in doubt and votes for no side."""
    assert row_ink_side(frame_of_ink(4)) == (True, True)  # 49 %
    assert row_ink_side(frame_of_ink(4, extra=8)) == (True, False)  # 50 %
    grain = np.random.default_rng(0).integers(100, 110, (3, 28, 28), dtype=np.uint8)
    assert row_ink_side(grain[0]) == (False, True)
    np.testing.assert_array_equal(ink_votes(grain), [0, 0])
    assert files_ink_side([0, 7]) is None  # 7 rows agree: too few to speak for a file


def settled_light_rows(small_test: DigitSet, count: int) -> list[np.ndarray]:
    """``count`` Semeion-like rows whose edges settle their ink as light."""
    rows = (semeion_like(image) for image in small_test.images)
    return [row for row in rows if row_ink_side(row) == (False, False)][:count]


def test_rows_in_doubt_do_not_vote_a_files_ink_side(small_test) -> None:
    """Stretched 0s read by their edges as dark ink are in doubt; had they voted, two of them
    beside nine rows read as light would have left the file's side undecided (9 of 11 is under
    90 %) and turned the 0s into discs of paper, which the nine rows' side keeps as rings."""
    ring = frame_hugging_zero()
    rows = np.stack([*settled_light_rows(small_test, 9), ring, ring])
    np.testing.assert_array_equal(ink_votes(rows), [9, 0])
    conformed = conform_to_mnist(rows)[0]
    assert conformed[-1][14, 14] == 0 and conformed[-2][14, 14] == 0


def test_only_the_rows_told_to_vote_a_files_ink_side(small_test) -> None:
    """``n_voting``: the rows of a torchrun process's first piece that are of its file's first
    rows vote, the rest do not (predict.judged_rows). Nine light rows vote here, and the ring in
    doubt keeps their side; had the nine dark rows after them voted too, the file's side would
    be undecided and the ring read by its edges, as a disc of paper."""
    light = settled_light_rows(small_test, 9)
    rows = np.stack([*light, *(255 - row for row in light), frame_hugging_zero()])
    np.testing.assert_array_equal(ink_votes(rows), [9, 9])
    assert conform_to_mnist(rows, n_voting=9)[0][-1][14, 14] == 0
    assert conform_to_mnist(rows)[0][-1][14, 14] > 0


def test_a_row_in_doubt_on_its_files_side_is_redone_as_it_would_be_alone(small_test) -> None:
    """The paper's level is read anew, mid-way between the extremes, only for a row whose edges
    point to the other side than its file's: one that agrees keeps its edges' level, as alone."""
    rows = np.stack([semeion_like(image) for image in small_test.images[:60]])
    sides = images._ink_sides(rows)
    assert files_ink_side(ink_votes(rows)) is False
    agreeing = [index for index, (side, in_doubt) in sides.items() if in_doubt and not side.is_dark]
    assert len(agreeing) >= 10
    conformed = conform_to_mnist(rows)[0]
    for index in agreeing:
        np.testing.assert_array_equal(conformed[index], to_mnist(rows[index]))


def test_a_row_of_one_grey_level_in_a_file_of_dark_ink_is_left_as_it_is(small_test) -> None:
    """A row of one grey level has no paper on the file's side of mid-way: a DataError, which
    leaves the row as it is, rather than a median of no pixels, NaN, and a ValueError that
    stopped the whole file."""
    grey = np.full((28, 28), 128, dtype=np.uint8)
    with pytest.raises(DataError, match="one grey level"):
        to_mnist(grey, dark_ink=True)
    rows = np.stack([255 - row for row in settled_light_rows(small_test, 9)] + [grey])
    assert files_ink_side(ink_votes(rows)) is True
    conformed, n_redone = conform_to_mnist(rows)
    assert n_redone == 9 and np.array_equal(conformed[-1], grey)


def test_to_mnist_output_is_in_mnist_format(small_test: DigitSet) -> None:
    printed = [
        load_image(encode(Image.fromarray(255 - image).resize((90, 90))))
        for image in small_test.images[:30]
    ]
    assert in_mnist_format(np.stack(printed)).all()


def test_path_and_bytes_agree(tmp_path: Path) -> None:
    path = tmp_path / "one.jpg"
    drawing().save(path)
    np.testing.assert_array_equal(load_image(path), load_image(path.read_bytes()))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Phones store photos sideways and set the EXIF Orientation tag (6: turn 90 degrees
    # clockwise to view) instead of rotating the pixels; the digit must be read as seen.
    upright = drawing()
    ImageDraw.Draw(upright).line((150, 60, 40, 60), fill="black", width=24)  # a "7": not symmetric
    upright_path, sideways_path = tmp_path / "upright.jpg", tmp_path / "sideways.jpg"
    upright.save(upright_path)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways_path, exif=exif)
    expected = load_image(upright_path).astype(float)
    seen = load_image(sideways_path).astype(float)
    # JPEG blocks fall differently on the turned pixels: close, not equal.
    np.testing.assert_allclose(seen, expected, atol=10)
    assert np.abs(seen - expected).mean() < 1
    # Read without the tag, the "7" lies on its side: far from the upright one.
    ignored = to_mnist(np.asarray(Image.open(sideways_path).convert("L")))
    assert np.abs(ignored.astype(float) - expected).mean() > 20


def test_to_mnist_on_a_grey_array() -> None:
    grey = np.full((50, 30), 255, dtype=np.uint8)
    grey[10:40, 12:18] = 0
    assert to_mnist(grey).shape == (28, 28)
    # A colour array is named as such, not failed on deep in the preprocessing.
    with pytest.raises(
        ValueError, match=r"greyscale image \(height, width\), got shape \(50, 30, 3\)"
    ):
        to_mnist(np.stack([grey] * 3, axis=-1))
    for scaled in (grey / 255, grey > 128):  # a notebook's X / 255, a mask
        with pytest.raises(ValueError, match=r"in 0-1; pass \(grey \* 255\)"):
            to_mnist(scaled)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        to_mnist(np.where(grey == 0, np.nan, 255.0))
    with pytest.raises(ValueError, match=r"one pixel or more, got shape \(0, 30\)"):
        to_mnist(grey[:0])


def test_to_mnist_takes_a_large_array_of_any_number_type() -> None:
    """Images of 512 pixels a side and more are shrunk by Pillow first (_reduced), which takes
    uint8 and float32 arrays alone: a photo's int64 or uint16 array had raised Pillow's
    TypeError or ValueError."""
    page = np.asarray(drawing(size=(600, 800), line=(300, 120, 340, 680)).convert("L"))
    expected = cropped_to_ink(to_mnist(page))
    for dtype in (np.int64, np.uint16, np.float64):
        # Shrunk as floats, not rounded to bytes: the same ink, placed a pixel apart at most.
        digit = cropped_to_ink(to_mnist(page.astype(dtype)))
        np.testing.assert_allclose(digit, expected, atol=16)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"hello, not an image", "notes.txt: not an image file of a kind read here (PNG, JPEG"),
        (b"", "notes.txt: an empty file (0 bytes); give the image's file"),
        # Formats Pillow opens and a scan never is: their decoders raised errors of their own
        # (a 500 from the server), and EPS would go to Ghostscript.
        (encode(Image.new("RGB", (28, 28)), "DDS"), "notes.txt: not an image file of a kind"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n", "notes.txt: not an image file"),
        (
            encode(Image.new("L", (50, 50), 255)),
            "notes.txt: no digit found (the image is blank or has too little contrast)",
        ),
        (encode(drawing())[:300], "notes.txt: cannot decode the image"),
        (
            png_header(6000, 5000),
            f"notes.txt: 6000 x 5000 = 30,000,000 pixels is over the limit "
            f"of {MAX_IMAGE_PIXELS:,}; scale the image down",
        ),
        (
            png_header(100_000, 100_000),
            "notes.txt: too many pixels (decompression bomb?); scale it down",
        ),
    ],
    ids=["not-an-image", "empty", "dds", "eps", "blank", "truncated", "over-limit", "bomb"],
)
def test_bad_images_raise_data_error(source: bytes, message: str) -> None:
    with pytest.raises(DataError) as error:
        load_image(source, "notes.txt")
    assert str(error.value).startswith(message)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="is a directory, expected an image file"):
        load_image(tmp_path)


def test_cli_predict_image(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from digit_recognizer.cli import app
    from digit_recognizer.predict import PredictConfig, Predictor

    one, notes = tmp_path / "one.png", tmp_path / "notes.txt"
    drawing().save(one)
    notes.write_text("not an image")
    expected = Predictor.load([tiny_run]).predict(load_image(one)[None])[0]
    result = CliRunner().invoke(app, ["predict-image", str(tiny_run), str(one)])
    assert result.exit_code == 0 and f"│ {expected}" in result.output
    result = CliRunner().invoke(app, ["predict-image", str(tiny_run), str(notes), str(one)])
    assert result.exit_code == 1 and "notes.txt: not an image file" in result.output
    assert f"│ {expected}" in result.output  # the other files are predicted all the same
    # --tta as predict's: the probability of the shifted views' average, not of the image alone.
    averaged = Predictor.load([tiny_run], PredictConfig(tta=True)).predict_proba(
        load_image(one)[None]
    )
    plain = Predictor.load([tiny_run]).predict_proba(load_image(one)[None])
    assert f"{plain.max():.3f}" != f"{averaged.max():.3f}"  # else the check below tells nothing
    result = CliRunner().invoke(app, ["predict-image", str(tiny_run), str(one), "--tta"])
    assert result.exit_code == 0 and f"│ {averaged.max():.3f}" in result.output


def test_predict_image_points_a_csv_to_digits_predict(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from digit_recognizer.cli import app

    digits = tmp_path / "test.csv"
    digits.write_text("pixel0\n0\n")
    result = CliRunner().invoke(app, ["predict-image", str(tiny_run), str(digits)])
    assert result.exit_code == 1
    assert f"a CSV of digits: digits predict {tiny_run} {digits}" in " ".join(result.output.split())


def test_digits_predict_and_evaluate_point_an_image_to_predict_image(
    tiny_run: Path, tmp_path: Path
) -> None:
    """Read as a CSV, a PNG had been "not UTF-8 text; expected the header ..."."""
    from typer.testing import CliRunner

    from digit_recognizer.cli import app

    photo = tmp_path / "Scan.JPG"
    drawing().convert("RGB").save(photo, format="JPEG")
    for command in ("predict", "evaluate"):
        result = CliRunner().invoke(app, [command, str(tiny_run), str(photo)])
        assert result.exit_code == 1, command
        assert (f"{photo}: an image file, where a CSV of digits (shard directory, glob) belongs; "
                f"images are read by digits predict-image RUN_DIR {photo}"
                in " ".join(result.output.split())), command  # fmt: skip
    names = ("a.png", "b.TIF", "c.csv", "d.csv.gz", "-", "e.pdf")  # Pillow writes PDFs, reads none
    assert [is_image_name(name) for name in names] == [True, True, False, False, False, False]


def test_predict_images_gives_each_file_its_own_probabilities(
    tiny_run: Path, tmp_path: Path, small_test: DigitSet
) -> None:
    from digit_recognizer.predict import Predictor, predict_images

    # Unreadable files before, between and after readable ones of different digits: each
    # readable file's probabilities are its own, whatever the unreadable ones around it.
    notes, blank = tmp_path / "notes.txt", tmp_path / "blank.png"
    notes.write_text("not an image")
    Image.new("L", (50, 50), 255).save(blank)
    digits = []
    for i in range(3):
        digits.append(tmp_path / f"digit{i}.png")
        Image.fromarray(255 - np.kron(small_test.images[i], np.ones((3, 3), np.uint8))).save(
            digits[-1]
        )
    paths = [notes, digits[0], blank, digits[1], digits[2], notes]
    expected = Predictor.load([tiny_run]).predict_proba(np.stack([load_image(p) for p in digits]))
    assert len(set(expected.argmax(axis=1))) == 3  # three different digits predicted
    results = predict_images([tiny_run], paths)
    assert [result.path for result in results] == paths
    for i in (0, 2, 5):
        assert results[i].error and results[i].probabilities is None
    assert "not an image file" in results[0].error and "no digit found" in results[2].error
    for i, proba in zip((1, 3, 4), expected, strict=True):
        assert results[i].error is None
        np.testing.assert_allclose(results[i].probabilities, proba, atol=1e-6)
        assert results[i].probabilities.argmax() == proba.argmax()


def page_photo(
    digit: np.ndarray, light: np.ndarray | float, ink: float = 0, top: int = 58
) -> np.ndarray:
    """An MNIST digit written 84 pixels high in ``ink`` (its darkest grey) on paper of 235, in
    the middle of a 200 x 200 page (its top row at ``top``), photographed under ``light``
    (the share of full light reaching each pixel)."""
    enlarged = np.asarray(Image.fromarray(digit).resize((84, 84), Image.Resampling.BILINEAR))
    page = np.full((200, 200), 235, dtype=np.float32)
    page[top : top + 84, 58:142] = 235 - enlarged.astype(np.float32) / 255 * (235 - ink)
    return np.clip(page * light, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("edge", "shade"),
    [((1.0, 0.3, 150), 0.5), ((0.2, 1.0, 20), 0.5), ((1.0, -0.6, 100), 0.35)],
    ids=["most of the page in shadow", "a corner lit", "the edge across the digit"],
)
def test_a_hard_edged_shadow_is_neither_ink_nor_paper_s_level(
    small_test: DigitSet, edge: tuple[float, float, float], shade: float
) -> None:
    """A phone's or a hand's shadow across the page: paper at two levels with a sharp edge
    between them, and the ink in the shadow darker and less contrasted. Neither the edge nor
    the lit paper is ink (where most of the page is in shadow, the lit paper is the brighter
    side of it, as light ink would be), and the shadowed strokes are as inked as the others."""
    across, down, offset = edge
    rows, columns = np.mgrid[0:200, 0:200]
    light = np.where(across * columns + down * rows > offset, shade, 1.0)
    light = ndimage.gaussian_filter(light, 1.0)  # a pixel or two of penumbra
    correlations = [
        correlation(to_mnist(page_photo(digit, light)), to_mnist(page_photo(digit, 1.0)))
        for digit in small_test.images[:10]
    ]
    assert np.mean(correlations) > 0.9 and min(correlations) > 0.6  # before: 0.18-0.30, 0.5


def test_a_stroke_wider_than_the_levelling_window_is_still_ink() -> None:
    """A marker's stroke in a small photo can outgrow the window that levels the light: what
    the window keeps of it is ink, not paper to flood the rest of the digit's strokes with."""
    page = np.asarray(drawing(size=(160, 160), line=(80, 20, 80, 140)).convert("L"), np.float32)
    bold = page.copy()
    bold[20:140, 55:105] = np.minimum(bold[20:140, 55:105], 0)  # 50 pixels wide: window 41
    light = np.linspace(1.0, 0.55, 160)[None, :]
    for image in (page, bold):
        digit = load_image(encode(Image.fromarray((image * 0.92 + 20) * light).convert("L")))
        even = load_image(encode(Image.fromarray(image * 0.92 + 20).convert("L")))
        assert correlation(digit, even) > 0.9  # the bold one was "no digit found"


def test_a_fine_pen_s_digit_cropped_to_its_ink_keeps_its_strokes(small_test: DigitSet) -> None:
    """Grey strokes of a fine pen run to the edges of a tight crop, where they pass for paper
    in shadow and the crop is levelled: the strokes thin to their cores, but stay whole (the
    paper's level floods no higher than the image without its strokes)."""
    correlations = []
    for digit in small_test.images[:30]:
        ink = cropped_to_ink(digit)
        size = (ink.shape[1] * 6, ink.shape[0] * 6)
        enlarged = Image.fromarray(ink).resize(size, Image.Resampling.BILINEAR)
        fine = 255 - ndimage.grey_erosion(np.asarray(enlarged), size=9)
        framed = np.pad(fine, 30, constant_values=255)  # on its page: evenly lit paper around
        shapes = [ndimage.gaussian_filter(to_mnist(image), 1.5) for image in (fine, framed)]
        correlations.append(correlation(*shapes))
    assert min(correlations) > 0.4  # flooded up the strokes: 0.06


@pytest.mark.parametrize(
    "light",
    [np.linspace(1, 0.55, 200)[None, :], np.where(np.arange(200) > 100, 0.5, 1.0)],
    ids=["light falling off", "a shadow's edge through the digit"],
)
def test_a_pencil_s_lit_strokes_stay_ink_beside_a_shadow(
    small_test: DigitSet, light: np.ndarray
) -> None:
    """A pencil's grey strokes on the lit paper are about as bright as the paper in shadow:
    the shadow's level must not flood into them. (Where the shadowed paper is darker than
    every stroke, nothing tells it from ink: a known limit.)"""
    correlations = [
        correlation(to_mnist(page_photo(digit, light, ink=120)), to_mnist(page_photo(digit, 1.0)))
        for digit in small_test.images[:10]
    ]
    assert np.mean(correlations) > 0.85  # flooded: 0.46


def test_a_moderate_ramp_of_light_is_levelled_too(small_test: DigitSet) -> None:
    """Light falling off by 45 grey levels across the page (the paper's 10th to 90th
    percentile along the border): past MIN_CONTRAST, so uneven, though well short of twice it.
    Left unlevelled, the paper in shade reads as faint ink and pulls the digit off its centre."""
    ramp = np.linspace(1, 1 - 45 / 235, 200)[None, :]
    correlations = [
        correlation(to_mnist(page_photo(digit, ramp)), to_mnist(page_photo(digit, 1.0)))
        for digit in small_test.images[:10]
    ]
    assert min(correlations) > 0.95  # unlevelled: 0.83


def test_uneven_light_is_levelled_around_a_speck_or_a_digit_at_the_edge(
    small_test: DigitSet,
) -> None:
    """Ink that reaches the border (a speck of dirt there, a digit written at the page's edge)
    leaves the rest of the border's paper to judge the light by."""
    falloff = np.linspace(1, 0.55, 200)[None, :]
    for digit in small_test.images[:10]:
        even = to_mnist(page_photo(digit, 1.0))
        speck = page_photo(digit, falloff)
        speck[120:123, 0:3] = 20
        assert correlation(to_mnist(speck), even) > 0.9
        at_edge = to_mnist(page_photo(digit, falloff, top=116))
        assert correlation(at_edge, to_mnist(page_photo(digit, 1.0, top=116))) > 0.9


def test_a_grainy_photo_of_evenly_lit_paper_is_not_unevenly_lit() -> None:
    """A phone's sensor noise spreads the paper's levels along the border (sigma 14 grey levels,
    39 from its darkest to its brightest) with no light falling off: nothing to level. The same
    grain on light falling off by 60 levels is."""
    grainy = (60 + np.random.default_rng(0).normal(0, 14, (200, 200))).astype(np.float32)
    ramp = grainy + np.linspace(0, 60, 200, dtype=np.float32)
    for pixels, uneven in ((grainy, False), (ramp, True)):
        paper = paper_along_border(pixels, opened_along_sides(pixels), ink_level=191)
        assert unevenly_lit(pixels, paper) == uneven


def test_a_fine_pen_s_grey_stroke_running_off_the_image_is_not_paper() -> None:
    """A fine pen's stroke crossing the border is greyer than ink (under ink_level) but no paper
    to judge the light by; the paper either side of it is."""
    pixels = np.zeros((100, 100), np.float32)  # ink-bright: the paper is 0
    pixels[:, 48:51] = 50
    paper = paper_along_border(pixels, opened_along_sides(pixels), ink_level=191)
    assert not paper[[0, -1], 48:51].any()
    assert paper[[0, -1], :40].all() and paper[:, 0].all()


def test_a_shadow_strip_along_a_side_is_kept_to_its_corners() -> None:
    """The strip along the top side is the top side's level at its corners too, where the left
    and right sides, opened along themselves, see only its end."""
    strip = np.zeros((100, 100), np.float32)
    strip[:3] = 100
    along = opened_along_sides(strip)
    assert along[0].min() == 100 and along[3:, [0, -1]].max() == 0


def level(pixels: np.ndarray) -> np.ndarray:
    """``flatten_lighting`` of ink-bright ``pixels`` on dark paper, the ink's level 187."""
    return flatten_lighting(
        pixels, opened_along_sides(pixels), ink_level=187, paper_was_light=False
    )


@pytest.mark.parametrize(
    "finger", [np.s_[140:160, 30:130], np.s_[30:130, 140:160]], ids=["across", "down"]
)
def test_a_shadow_narrower_than_the_levelling_window_is_levelled_along_its_length(
    finger: tuple[slice, slice],
) -> None:
    """A shadow in a corner reaching out a finger 20 pixels wide (the window is 51): the
    opening cuts the finger off, and the paper's level floods along it from the corner, 50
    grey levels up, whichever way it runs."""
    pixels = np.zeros((200, 200), np.float32)  # ink-bright: lit paper 0, the shadow 50
    pixels[130:, 130:] = 50
    pixels[finger] = 50
    assert level(pixels).max() == 0


def test_a_shadow_strip_along_a_side_is_paper_and_a_bold_stroke_beside_a_shadow_is_ink() -> None:
    """A shadow strip along the left side, narrower than the window, is levelled away (the
    openings along the sides keep it); a bold stroke (50 pixels wide, wider than the window)
    beside a shadow stays ink at its full contrast, the shadow's level not flooding up it."""
    strip = np.zeros((200, 200), np.float32)
    strip[:, :8] = 100
    strip[60:140, 95:102] = 250  # a stroke, to be left as it is
    flat = level(strip)
    assert flat[:, :8].max() == 0 and (flat[60:140, 95:102] == 250).all()
    bold = np.zeros((160, 160), np.float32)
    bold[:, :60] = 120
    bold[20:140, 60:110] = 250
    assert (level(bold)[20:140, 60:110] == 250).all()  # flooded to the shadow's level: 130


def test_light_ink_that_is_no_sheet_on_a_desk_is_not_taken_for_one() -> None:
    """A sheet on a desk leaves the desk around it, holds a digit in holes that are a small
    part of it, and is nearly a rectangle. Light ink over the whole frame but for a dark digit,
    a bold white bar with nothing in it, a white square 0 whose hole is a quarter of it, and a
    card with its corners cut (88 % of the square around it, 50 pixels a side) are none."""
    frame = np.full((100, 100), 200, np.float32)
    frame[35:65, 45:52] = 20
    bar = np.full((100, 100), 30, np.float32)
    bar[10:90, 35:65] = 230
    square_zero = np.full((100, 100), 30, np.float32)
    square_zero[20:80, 20:80] = 220
    square_zero[35:65, 35:65] = 30
    cut_card = np.full((100, 100), 30, np.float32)
    rows, columns = np.mgrid[0:50, 0:50]
    corners = np.minimum(rows, 49 - rows) + np.minimum(columns, 49 - columns) < 12
    cut_card[25:75, 25:75] = np.where(corners, 30, 220)
    cut_card[40:60, 48:52] = 30  # its digit
    for pixels in (frame, bar, square_zero, cut_card):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not the mean of no desk
            assert sheet_on_a_desk(pixels > 128, pixels) is None


def test_a_bold_white_0_on_a_blackboard_is_no_sheet_on_a_desk() -> None:
    """A marker's 0 in chalk white is a large bright blob with a hole, but round (79 % of the
    rectangle around it), not a sheet: its hole stays the paper, not the digit."""
    board = Image.new("L", (200, 200), 30)
    ImageDraw.Draw(board).ellipse((40, 40, 160, 160), fill=230)
    ImageDraw.Draw(board).ellipse((80, 80, 120, 120), fill=30)
    assert sheet_on_a_desk(np.asarray(board) > 128, np.asarray(board, np.float32)) is None
    digit = to_mnist(np.asarray(board))
    assert digit[14, 14] == 0 and digit[14, 6] == 255  # the ring, and its hole


def test_without_border_regions_keeps_what_is_no_strip_beside_a_clear_digit() -> None:
    """Nothing goes but a blob along most of a side beside a digit clear of the sides: not two
    digits' faint rims, nor a blob along half a side, nor a digit's stroke along a side beside
    a speck of dust (no digit). A thin slanted stroke, its pixels touching at their corners,
    is one digit, beside which a strip along a side goes."""
    two_digits = np.zeros((100, 100), np.float32)
    two_digits[30:70, [30, 60]] = 1
    two_digits[30:70, [29, 31, 59, 61]] = 0.3
    half_a_side = two_digits.copy()
    half_a_side[:50, :3] = 1
    with_dust = np.zeros((100, 100), np.float32)
    with_dust[:, :3] = 1
    with_dust[:, 3:20] = np.eye(100, 17)  # the digit's stroke along the side, and away from it
    with_dust[50:52, 70:72] = 1
    for ink in (two_digits, half_a_side, with_dust):
        np.testing.assert_array_equal(without_border_regions(ink, ink > 0.5), ink)
    slanted = np.zeros((100, 100), np.float32)
    slanted[:, :3] = 1
    slanted[range(30, 70), range(40, 80)] = 1
    kept = without_border_regions(slanted, slanted > 0.5)
    assert not kept[:, :3].any() and kept[:, 3:].sum() == 40


def test_a_line_s_anti_aliased_rims_go_with_it() -> None:
    """The grey pixel either side of a ruled line, under the ink threshold, would otherwise
    stay behind as a faint line under the digit."""
    ink = np.zeros((100, 100), np.float32)
    ink[20:80, 45:52] = 1  # the digit
    ink[90] = 1
    ink[[89, 91]] = 0.2
    kept = without_lines(ink, ink > images.INK_THRESHOLD)
    assert kept[85:].max() == 0
    np.testing.assert_array_equal(kept[:85], ink[:85])


def test_a_stroke_crossed_by_a_line_keeps_its_edge_either_side_of_it() -> None:
    """The rims go across a line, not diagonally off its ends into the stroke it crosses: that
    cut a notch the line's thickness and a pixel more either side into each edge of the stroke
    (a pixel along the line, on the stroke's edge, still goes: it is the line's ink too)."""
    ink = np.zeros((100, 100), np.float32)
    ink[50] = 1
    ink[[49, 51]] = 0.2
    ink[20:80, 45:52] = 1  # the digit, across the line
    kept = without_lines(ink, ink > images.INK_THRESHOLD)
    np.testing.assert_array_equal(kept[np.r_[20:50, 51:80], 45:52], 1)
    assert kept[49:52, :45].max() == 0 and kept[49:52, 52:].max() == 0
    # So on a ruled page photographed askew: a 1 crossed by 6 lines lost 90 pixels' worth of
    # its ink over these angles, now 59; the lines leave 7 behind (without their rims: 383).
    lost = left = 0.0
    for angle in (-10, -7, 10):
        pages = []
        for ruled in (True, False):
            page = drawing()
            for y in range(30, 400, 60) if ruled else ():
                ImageDraw.Draw(page).line((0, y, 299, y), fill="black", width=3)
            turned = page.convert("L").rotate(angle, Image.Resampling.BILINEAR, fillcolor="white")
            pages.append((255 - np.asarray(turned, np.float32)) / 255)
        kept = without_lines(pages[0], pages[0] > images.INK_THRESHOLD)
        lost += float(np.clip(pages[1] - kept, 0, None).sum())
        left += float(np.clip(kept - pages[1], 0, None).sum())
    assert lost < 70 and left < 15


def test_a_page_turned_15_degrees_has_its_transparent_margins_read_as_paper() -> None:
    """Turned 15 degrees, its transparent corners are a third of the image: the page is still
    most of it, and they take its paper's colour, not the one that contrasts with its ink. (A
    small crop, 62 pixels a side: in a photo, corners read dark would pass for a desk.)"""
    page = Image.new("RGBA", (50, 50), "white")
    ImageDraw.Draw(page).line((25, 8, 27, 42), fill="black", width=4)
    turned = page.rotate(15, expand=True, fillcolor=(0, 0, 0, 0))
    on_white = Image.alpha_composite(Image.new("RGBA", turned.size, "white"), turned)
    assert correlation(load_image(encode(turned)), load_image(encode(on_white))) > 0.95  # 0.21


def test_an_image_of_exactly_max_pixels_is_read() -> None:
    image = Image.new("L", (30, 40), 255)
    ImageDraw.Draw(image).line((15, 5, 15, 35), fill=0, width=3)
    assert load_image(encode(image), max_pixels=1200).max() == 255
    with pytest.raises(DataError, match="1,200 pixels is over the limit of 1,199"):
        load_image(encode(image), max_pixels=1199)


def test_a_small_digit_in_a_very_large_photo_is_shrunk_no_more_than_8_times() -> None:
    """A 16-megapixel photo is prepared at 1/8 scale, as a JPEG's draft mode decodes it, not
    at 1/16: a digit 40 pixels high there is then 5, no speck."""
    photo = np.full((4096, 4096), 225, np.uint8)
    photo[2000:2040, 2000:2008] = 40
    assert to_mnist(photo).max() == 255


def test_a_digit_up_to_a_pixel_off_centre_is_in_mnist_s_layout() -> None:
    """MNIST's centres of mass lie within 0.52 px of (14, 14), and up to a pixel off counts:
    a bar 20 pixels long, its centre of mass 0.8 px right of centre, is left as it is; 1.33 px,
    it is redone."""
    bars = np.zeros((2, 28, 28), np.uint8)
    bars[0, 4:24, 14:16] = 50, 200  # centre of mass (13.5, 14.8)
    bars[1, 4:24, 15:17] = 200, 100  # (13.5, 15.33)
    assert in_mnist_format(bars).tolist() == [True, False]


def test_blank_images_are_valid_digits_to_predict() -> None:
    # A blank cell of a form gets a label like any other; only faint ink is refused.
    np.testing.assert_array_equal(check_images(np.zeros((2, 784))), np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="pixels reach at most 1"):
        check_images(np.ones((2, 28, 28), np.uint8))


def drawn_digit(*strokes: tuple[int, int, int, int], width: int = 2) -> np.ndarray:
    """A digit of ``strokes`` (lines x0, y0, x1, y1 on the 28 x 28 grid), drawn at 4x and
    reduced, as a scan's grey edges are."""
    image = Image.new("L", (112, 112))
    for stroke in strokes:
        ImageDraw.Draw(image).line([4 * at for at in stroke], fill=255, width=4 * width)
    return np.asarray(image.resize((28, 28), Image.Resampling.BOX))


SEVEN = ((7, 5, 21, 5), (21, 5, 12, 24))
SEVENS_BAR = (12, 14, 21, 14)
CONTINENTAL_ONE = ((16, 4, 16, 24), (16, 4, 9, 12))  # a long flag, no foot
ONES_FOOT = (11, 24, 21, 24)


def test_a_bar_across_the_stem_is_a_crossed_sevens_and_a_ones_flag_or_foot_is_not() -> None:
    sevens = [drawn_digit(*SEVEN, SEVENS_BAR), drawn_digit(*SEVEN, SEVENS_BAR, width=1)]
    grey_bar = np.maximum(drawn_digit(*SEVEN) // 2, drawn_digit(SEVENS_BAR) // 4)  # 63 of 127
    others = [drawn_digit(*SEVEN), drawn_digit(*CONTINENTAL_ONE),
              drawn_digit(*CONTINENTAL_ONE, ONES_FOOT), np.zeros((28, 28), np.uint8)]  # fmt: skip
    np.testing.assert_array_equal(crosses_stem(np.stack([*sevens, grey_bar, *others])),
                                  [True, True, True, False, False, False, False])  # fmt: skip


def test_few_of_mnists_sevens_are_crossed(mnist: Mnist) -> None:
    """MNIST's American writers seldom crossed their 7s: a file most of whose 7s are crossed
    (predict.CROSSED_SHARE) was written elsewhere."""
    assert round(crosses_stem(mnist.images[mnist.labels == 7]).mean(), 2) == 0.14
    assert round(crosses_stem(mnist.images[mnist.labels == 1]).mean(), 2) == 0.01
