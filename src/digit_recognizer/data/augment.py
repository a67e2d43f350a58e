"""Batched augmentation on the training device: one random affine map, an optional elastic
distortion, a stroke-width change and a contrast change per image, and the strokes by which other
writers' 1s, 7s and 9s differ from MNIST's.

No per-sample Python: every parameter is drawn as a (B,) tensor and the whole batch is resampled
with one ``affine_grid`` + ``grid_sample`` call (airbench's batch_crop idea, applied to affine
maps). The elastic distortion (Simard et al. 2003) is a smooth random displacement field added to
that same grid, so it costs one small upsampling, not a second resampling. The same function
drives training, ``digits data expand`` and augmentation previews.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import astuple, dataclass, fields

import torch
import torch.nn.functional as F

from digit_recognizer.data.images import SIZE
from digit_recognizer.errors import ConfigError

# A displacement's range in pixels (translate_px, elastic_px): past the frame's side (MNIST's 28)
# a draw near the range's end moves the digit clean off the frame, and elastic_px from 1e38
# overflows float32 into NaN images.
MAX_DISPLACEMENT_PX = SIZE
# A shear moves each row sideways by the factor times its height off the centre: past 2 the
# frame's top and bottom rows move by more than MAX_DISPLACEMENT_PX, and shear 1e38 overflows
# float32 into NaN images.
MAX_SHEAR = MAX_DISPLACEMENT_PX / (SIZE / 2)
# Past a half turn each way a rotation range holds every turn already; from 1e300 degrees its
# angle overflows float32 into NaN images.
MAX_ROTATION_DEG = 180
# A 1 whose top is off its foot by at most this much of its height (~11 degrees) is upright: a
# flag alone on it is a continental 1 (add_writing_styles), on a 1 leaning more a 7.
UPRIGHT_LEAN = 0.2
# The digits add_writing_styles draws on: other writers' 1s and 7s take strokes, their 9s a mirror.
STYLED_DIGITS = (1, 7, 9)


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each parameter is drawn uniformly in [-range, range].

    The defaults stay inside what handwriting itself varies by (slant, size, position, stroke
    darkness), so augmented digits are still unambiguous: a 9 rotated by 30 degrees starts to look
    like a 6 to nobody, but a 7 sheared hard looks like a 1.
    """

    rotation_deg: float = 12.0
    scale: float = 0.12  # relative zoom, 0.12 = 88 % to 112 %
    # Horizontal shear factor, the slant of handwriting (data.images.slants): other writers lean
    # further from MNIST's than 0.15 took in. At 0.3 against 0.15 (two seeds, cnn, 12 epochs,
    # replica 0, TTA): CVL's digits 2,079 -> 1,982 errors, Semeion's 153 -> 138, ARDIS's
    # (sheared to MNIST's slant) 200 -> 197, USPS's 124 -> 132, the replica's own 192 -> 194.
    shear: float = 0.3
    translate_px: float = 2.5  # MNIST digits are centred by mass; residual offsets are small
    contrast: float = 0.3  # ink darkness factor in [1 - contrast, 1 + contrast]
    # Elastic distortion: standard deviation, in pixels, of a random displacement drawn on a coarse
    # grid of control points and smoothly (bicubically) interpolated between them. It bends strokes
    # the way different pens and hands do, which no affine map can. 0 = off.
    elastic_px: float = 0.0
    elastic_cells: int = 4  # grid cells per side: 5 x 5 control points, 7 px apart on 28 x 28
    # Stroke width: each image moves toward its 3 x 3 dilation (thicker strokes) or erosion
    # (thinner) by a fraction drawn in [-stroke, stroke], as markers, fine pens and scanners
    # differ. 0 = off. At 1 against 0 (benchmarks/beyond_mnist.py; cnn, 15 epochs, replica
    # 4242): errors on marker-thick digits 384 -> 170, blurred 144 -> 97, UCI digits in a
    # conformed CSV 51 -> 44, the replica's own 87 -> 81 (docs/beyond-mnist.md).
    stroke: float = 1.0
    # Writing styles MNIST barely holds (its writers were American): the share of 1s given a foot,
    # a long flag or both, of 7s given a bar across the stem, and of 9s mirrored, the loop right
    # of the stem, as much of Europe writes them.
    # Drawn before the affine map, so the added strokes slant and scale with the digit. Needs the
    # labels; 0 = off. At 0.3 against 0 (benchmarks/beyond_mnist.py; cnn, 11 epochs, replica
    # 577215, TTA; a foot on every styled 1 then): such 1s 254 -> 8 errors, such 7s 80 -> 17, UCI
    # digits read as images 42 -> 33, the replica's own 101 -> 96. A flag alone as well (two
    # seeds, replica 0): CVL's digits 2,786 -> 2,508 errors, its 1s read as 7 1,095 -> 766
    # (docs/results.md, "Continental 1s"). The share of 9s mirrored as well (two seeds, cnn, 12
    # epochs, replica 0, TTA): CVL's 1,982 -> 1,850, its 9s 605 -> 412, Semeion's 138 -> 110;
    # the price: ARDIS's 197 -> 232, the replica's own 194 -> 201 ("P-shaped 9s").
    styles: float = 0.3

    def __post_init__(self) -> None:
        # As TrainConfig refuses them, else augment-preview --elastic inf draws only blank tiles.
        for field, value in zip(fields(self), astuple(self), strict=True):
            if not math.isfinite(value):
                raise ConfigError(f"{field.name} must be a finite number, got {value}")
        if not (0 <= self.contrast < 1 and 0 <= self.scale < 1):
            raise ConfigError(
                f"contrast and scale must be in [0, 1) (at 1 a digit can be drawn blank, or of "
                f"size 0), got {self.contrast} and {self.scale}"
            )
        if not 0 <= self.stroke <= 1:
            raise ConfigError(f"stroke must be in [0, 1], got {self.stroke}")
        # 0 cells is a single control point, which moves the whole frame alike: a shift, no bend.
        cells = self.elastic_cells
        if isinstance(cells, bool) or not isinstance(cells, numbers.Integral) or cells < 1:
            raise ConfigError(
                f"elastic_cells (grid cells per side of the elastic distortion's control points) "
                f"must be a whole number >= 1, got {cells!r}"
            )
        # Each range is a magnitude, drawn both ways: a negative elastic_px or styles would turn
        # them off without a word, a negative rotation, shear or shift be drawn as its size.
        for field, value in zip(fields(self), astuple(self), strict=True):
            if value < 0:
                raise ConfigError(f"{field.name} must be >= 0, got {value}")
        limits = {
            "rotation_deg": (MAX_ROTATION_DEG, "degrees: a half turn each way"),
            "shear": (MAX_SHEAR, "a factor: the frame's top and bottom rows moved by its side"),
            "translate_px": (MAX_DISPLACEMENT_PX, "pixels: the frame's side"),
            "elastic_px": (MAX_DISPLACEMENT_PX, "pixels: the frame's side"),
        }
        for name, (limit, unit) in limits.items():
            if getattr(self, name) > limit:
                raise ConfigError(
                    f"{name} must be in [0, {limit:g}] ({unit}), got {getattr(self, name)}"
                )

    def max_strength(self) -> float:
        """The strength ``scaled`` accepts up to (excluded): the contrast or zoom range's 1."""
        return 1 / max(self.contrast, self.scale, 1e-9)

    def scaled(self, strength: float) -> Augmentation:
        """All ranges multiplied by ``strength`` (0 disables augmentation), the stroke change's
        at most 1: past a full erosion the blend extrapolates, and at 1.5 it leaves 8.7 % of
        MNIST's digits with under a tenth of their ink."""
        if not 0 <= strength < self.max_strength():
            raise ConfigError(
                f"augment (the strength) must be in [0, {self.max_strength():.3g}) (there the "
                f"contrast or zoom range reaches 1), got {strength}"
            )
        return Augmentation(
            rotation_deg=self.rotation_deg * strength,
            scale=self.scale * strength,
            shear=self.shear * strength,
            translate_px=self.translate_px * strength,
            contrast=self.contrast * strength,
            elastic_px=self.elastic_px * strength,
            elastic_cells=self.elastic_cells,
            stroke=min(self.stroke * strength, 1.0),
            styles=self.styles * strength,
        )


def augment_batch(
    images: torch.Tensor,
    augmentation: Augmentation,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Randomly transform a batch.

    Parameters
    ----------
    images : float tensor of shape (B, 1, H, W), values in [0, 1], of any float dtype
    augmentation : the ranges to draw from
    generator : a seeded generator on the images' device, so runs are reproducible
    labels : int tensor of shape (B,); without it no writing styles are drawn

    Returns
    -------
    tensor of the images' shape and dtype, values in [0, 1]
    """
    n_images, _, height, width = images.shape
    if n_images == 0:  # affine_grid refuses a grid of no images
        return images.clone()

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1]
        # Drawn in float32 whatever the images' dtype, so a seed draws the same transforms in
        # half precision; cast to it, as float32 factors would promote a half batch to float32.
        random = torch.rand(*shape, generator=generator, device=images.device)
        return (random * 2 - 1).to(images.dtype)

    if labels is not None and augmentation.styles > 0:
        images = add_writing_styles(images, labels, augmentation.styles, generator)
    angle = uniform(n_images) * math.radians(augmentation.rotation_deg)
    zoom = 1 + uniform(n_images) * augmentation.scale
    shear = uniform(n_images) * augmentation.shear
    shift = uniform(n_images, 2)  # x then y, times translate_px below
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input ones, so dividing by zoom enlarges the digit.
    # Its units are half the frame's width along x and half its height along y: the map, drawn
    # in pixels, is rescaled to them, else a frame of H != W has its digits stretched as they
    # turn and shifted W / H times as far across.
    x_shift = shift[:, 0] * (2 * augmentation.translate_px / width)
    y_shift = shift[:, 1] * (2 * augmentation.translate_px / height)
    theta = torch.stack(
        [
            torch.stack([cos / zoom, (shear - sin) / zoom * (height / width), x_shift], dim=1),
            torch.stack([sin / zoom * (width / height), cos / zoom, y_shift], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if augmentation.elastic_px > 0:
        grid = grid + elastic_displacement(
            n_images, height, width, augmentation, generator, images.device
        ).to(images.dtype)
    # Made contiguous: torch's CPU grid_sample reads a bfloat16 or float16 batch laid out image
    # index innermost (an F-ordered numpy array's strides, kept by .float() and .to()) wrongly,
    # into NaN or other pixels' values (torch 2.13); float32 and contiguous batches read right.
    warped = F.grid_sample(images.contiguous(), grid, align_corners=False, padding_mode="zeros")
    if augmentation.stroke > 0:
        warped = change_stroke_width(warped, uniform(n_images, 1, 1, 1) * augmentation.stroke)
    darkness = 1 + uniform(n_images, 1, 1, 1) * augmentation.contrast
    return (warped * darkness).clamp_(0, 1)


def add_writing_styles(
    images: torch.Tensor, labels: torch.Tensor, share: float, generator: torch.Generator
) -> torch.Tensor:
    """A foot, a long flag or both on a ``share`` of the 1s, a bar across the stem of a
    ``share`` of the 7s, drawn as antialiased strokes about as wide as MNIST's pens, and a
    ``share`` of the 9s mirrored. An upright 1 (leaning under UPRIGHT_LEAN) gets a third each;
    a flag alone, the continental 1, on a leaning stem draws a 7 (ARDIS's Swedish 7s, a long
    slanted stem under a short hook, were read as 1 when it went on every 1), so a leaning 1
    gets its foot, two thirds a flag too. A mirrored 9 has its loop right of the stem, a P, as
    many of CVL's and Semeion's writers draw it: MNIST's writers did not, and such 9s were read
    as 8 (mirrored back, 82 of CVL's 118 9s read as 8 were read as 9).

    Where the strokes go is read off each digit's ink: the stem's centre on its top and bottom
    rows (the 1's flag and foot) and on a row 45-65 % of the way down (the 7's bar). Styles are
    drawn on a fixed number of images per batch, ``share`` of it (~3x the 1s, 7s and 9s drawn,
    and at most that many get one): few enough that the step costs little, and a count known
    without reading the draw back from a GPU, which would stall it every step.
    """
    n_images, _, height, width = images.shape
    device = images.device
    drawn_on = torch.rand(n_images, generator=generator, device=device) < share
    styled_digit = drawn_on & torch.stack([labels == digit for digit in STYLED_DIGITS]).any(0)
    n_chosen = min(n_images, math.ceil(share * n_images))
    chosen = styled_digit.float().topk(n_chosen).indices  # the drawn digits first

    def between(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n_chosen, generator=generator, device=device)

    pixels = images[chosen, 0].float()  # (n, H, W)
    inked = pixels > 0.5

    def first_last(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the first and the last True along dim 1 of (n, L)."""
        flags = occupied.float()
        return flags.argmax(dim=1), occupied.shape[1] - 1 - flags.flip(1).argmax(dim=1)

    top, bottom = first_last(inked.any(dim=2))
    left, right = first_last(inked.any(dim=1))
    columns = torch.arange(width, device=device, dtype=pixels.dtype)
    images_index = torch.arange(n_chosen, device=device)

    def stem_at(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ink's centre column on ``row`` of each image, and whether that row has ink."""
        line = pixels[images_index, row]  # (n, W)
        mass = line.sum(dim=1)
        return (line * columns).sum(dim=1) / mass.clamp(min=1e-6), mass > 0.5

    tall = (bottom - top).float()
    top_stem, top_inked = stem_at(top)
    bottom_stem, bottom_inked = stem_at(bottom)
    bar_row = (top + tall * between(0.45, 0.65)).round().long()
    bar_stem, bar_inked = stem_at(bar_row)
    foot_half = tall * between(0.12, 0.22)
    flag_length, flag_angle = tall * between(0.25, 0.55), between(0.45, 0.95)  # 26-54 degrees
    bar_half = (right - left).float() * between(0.25, 0.45)
    bar_tilt = between(-0.1, 0.1) * bar_half

    def segment(
        x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor
    ) -> torch.Tensor:
        return torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y1], 1)], 1)

    top_y, bottom_y, bar_y = top.float(), bottom.float(), bar_row.float()
    ends = torch.stack([  # (n, 3 strokes, 2 ends, xy): the 1's foot and flag, the 7's bar
        segment(bottom_stem - foot_half, bottom_y, bottom_stem + foot_half, bottom_y),
        segment(top_stem, top_y, top_stem - flag_length * torch.cos(flag_angle),
                top_y + flag_length * torch.sin(flag_angle)),
        segment(bar_stem - bar_half, bar_y - bar_tilt, bar_stem + bar_half, bar_y + bar_tilt),
    ], 1)  # fmt: skip
    # A digit with no pixel past 0.5 has no rows or columns to read its stem from: its strokes
    # would span the whole frame.
    drawn_here = styled_digit[chosen] & inked.flatten(1).any(dim=1)
    is_one, is_seven = drawn_here & (labels[chosen] == 1), drawn_here & (labels[chosen] == 7)
    style = between(0, 1)
    is_upright = (top_stem - bottom_stem).abs() <= UPRIGHT_LEAN * tall
    with_foot, with_flag = (style < 2 / 3) | ~is_upright, style > 1 / 3
    drawn = torch.stack([is_one & bottom_inked & with_foot, is_one & top_inked & with_flag,
                         is_seven & bar_inked], 1)  # fmt: skip
    ink = _strokes(ends, between(0.9, 1.4), height, width) * drawn[:, :, None, None]
    ink = ink.amax(dim=1) * pixels.amax(dim=(1, 2))[:, None, None]  # as dark as the digit
    styled_pixels = torch.maximum(pixels, ink)
    is_nine = drawn_here & (labels[chosen] == 9)
    styled_pixels = torch.where(is_nine[:, None, None], styled_pixels.flip(-1), styled_pixels)
    styled = images.clone()
    styled[chosen, 0] = styled_pixels.to(images.dtype)
    return styled


def _strokes(ends: torch.Tensor, half_width: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased line segments: ``ends`` (B, S, 2, 2) as (x, y) pixel coordinates of both ends,
    ``half_width`` (B,) in pixels; returns their ink (B, S, H, W) in [0, 1]."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=ends.device, dtype=ends.dtype),
        torch.arange(width, device=ends.device, dtype=ends.dtype),
        indexing="ij",
    )
    points = torch.stack([xs, ys], dim=-1)  # (H, W, 2)
    start, end = ends[:, :, None, None, 0], ends[:, :, None, None, 1]  # (B, S, 1, 1, 2)
    along = end - start
    # Where each pixel's nearest point on the segment lies, 0 at the start and 1 at the end.
    t = ((points - start) * along).sum(-1) / (along * along).sum(-1).clamp(min=1e-6)
    nearest = start + t.clamp(0, 1)[..., None] * along
    offset = points - nearest
    distance = torch.hypot(offset[..., 0], offset[..., 1])
    return (half_width[:, None, None, None] + 0.5 - distance).clamp(0, 1)


def change_stroke_width(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thicker strokes where ``amount`` > 0, thinner where < 0: a blend of each image with its
    grey-level 3 x 3 dilation (a max-pool) or erosion (minus the max-pool of its negative), by
    |amount|. ``amount`` broadcasts against ``images`` (B, 1, H, W), e.g. shape (B, 1, 1, 1).
    """
    # One max-pool serves both: the erosion of x is -dilation(-x), so pool x times the sign.
    sign = torch.where(amount > 0, 1.0, -1.0).to(images.dtype)
    target = F.max_pool2d(images * sign, 3, stride=1, padding=1) * sign
    return images + amount.abs() * (target - images)


def elastic_displacement(
    n_images: int,
    height: int,
    width: int,
    augmentation: Augmentation,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """A smooth random displacement per image, in ``grid_sample`` units: shape (B, H, W, 2), x
    then y, each of standard deviation ``elastic_px`` pixels at the control points.

    Gaussian offsets on a (cells + 1)^2 grid of control points, bicubically upsampled to every
    pixel: the same smooth-noise field as Simard's Gaussian-filtered noise, at a fraction of the
    cost (no convolution with a large kernel).
    """
    points = augmentation.elastic_cells + 1
    offsets = torch.randn(n_images, 2, points, points, generator=generator, device=device)
    # Pixels -> grid units: half the frame's width along x, half its height along y.
    px = augmentation.elastic_px
    to_grid = torch.tensor([2 * px / width, 2 * px / height], device=device)
    offsets = offsets * to_grid[:, None, None]
    field = F.interpolate(offsets, size=(height, width), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)
