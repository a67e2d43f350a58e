"""Batched augmentation on the training device: one random affine map, an optional elastic
distortion, a stroke-width change and a contrast change per image.

No per-sample Python: every parameter is drawn as a (B,) tensor and the whole batch is resampled
with one ``affine_grid`` + ``grid_sample`` call (airbench's batch_crop idea, applied to affine
maps). The elastic distortion (Simard et al. 2003) is a smooth random displacement field added to
that same grid, so it costs one small upsampling, not a second resampling. The same function
drives training, ``digits data expand`` and augmentation previews.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each parameter is drawn uniformly in [-range, range].

    The defaults stay inside what handwriting itself varies by (slant, size, position, stroke
    darkness), so augmented digits are still unambiguous: a 9 rotated by 30 degrees starts to look
    like a 6 to nobody, but a 7 sheared hard looks like a 1.
    """

    rotation_deg: float = 12.0
    scale: float = 0.12  # relative zoom, 0.12 = 88 % to 112 %
    shear: float = 0.15  # horizontal shear factor, the slant of handwriting
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
    # conformed CSV 51 -> 44, the replica's own 87 -> 81 (README, 'Beyond MNIST').
    stroke: float = 1.0

    def scaled(self, strength: float) -> Augmentation:
        """All ranges multiplied by ``strength`` (0 disables augmentation)."""
        return Augmentation(
            rotation_deg=self.rotation_deg * strength,
            scale=self.scale * strength,
            shear=self.shear * strength,
            translate_px=self.translate_px * strength,
            contrast=self.contrast * strength,
            elastic_px=self.elastic_px * strength,
            elastic_cells=self.elastic_cells,
            stroke=self.stroke * strength,
        )


def augment_batch(
    images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator
) -> torch.Tensor:
    """Randomly transform a batch.

    Parameters
    ----------
    images : float tensor of shape (B, 1, H, W), values in [0, 1]
    augmentation : the ranges to draw from
    generator : a seeded generator on the images' device, so runs are reproducible

    Returns
    -------
    float tensor of shape (B, 1, H, W), values in [0, 1]
    """
    n_images, _, height, _ = images.shape

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1]
        random = torch.rand(*shape, generator=generator, device=images.device)
        return random * 2 - 1

    angle = uniform(n_images) * math.radians(augmentation.rotation_deg)
    zoom = 1 + uniform(n_images) * augmentation.scale
    shear = uniform(n_images) * augmentation.shear
    shift = uniform(n_images, 2) * (2 * augmentation.translate_px / height)  # grid units: [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input ones, so dividing by zoom enlarges the digit.
    theta = torch.stack(
        [
            torch.stack([cos / zoom, (shear - sin) / zoom, shift[:, 0]], dim=1),
            torch.stack([sin / zoom, cos / zoom, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if augmentation.elastic_px > 0:
        grid = grid + elastic_displacement(
            n_images, height, augmentation, generator, images.device
        ).to(images.dtype)
    warped = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    if augmentation.stroke > 0:
        warped = change_stroke_width(warped, uniform(n_images, 1, 1, 1) * augmentation.stroke)
    darkness = 1 + uniform(n_images, 1, 1, 1) * augmentation.contrast
    return (warped * darkness).clamp_(0, 1)


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
    size: int,
    augmentation: Augmentation,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """A smooth random displacement per image, in ``grid_sample`` units: shape (B, size, size, 2).

    Gaussian offsets on a (cells + 1)^2 grid of control points, bicubically upsampled to every
    pixel: the same smooth-noise field as Simard's Gaussian-filtered noise, at a fraction of the
    cost (no convolution with a large kernel).
    """
    points = augmentation.elastic_cells + 1
    offsets = torch.randn(n_images, 2, points, points, generator=generator, device=device)
    offsets = offsets * (2 * augmentation.elastic_px / size)  # pixels -> grid units
    field = F.interpolate(offsets, size=(size, size), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)
