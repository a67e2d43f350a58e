"""Torch nets. Each takes float images (N, 1, 28, 28) in [0, 1], ink bright, and returns logits.

Normalisation is the first layer of every net, so training, prediction, serving, ONNX export and
Grad-CAM all share one preprocessing path and a saved model carries its own statistics.

A new net is one builder here under ``@register(name, kind="net")``; tests/test_models.py then
runs it through everything the commands do with a net. What the commands ask of it: inputs come
channels-last (``reshape``, not ``view``); ``widths`` and ``dropout`` arguments, where it has
them, are what ``--config`` and ``digits tune`` set; prediction folds each batch norm into the
convolution before it where ``torch.fx`` can trace the net; Grad-CAM explains the last
``nn.Conv2d`` registered (after the activation registered next, if one is), unless the net names
another in a ``grad_cam_layer`` attribute (a residual block's shortcut, registered last, reads
the block's input, not its features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from digit_recognizer.data.kaggle_csv import N_PIXELS
from digit_recognizer.errors import ConfigError
from digit_recognizer.models.registry import register

# MNIST pixel statistics of the 60,000 training images, scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class Normalize(nn.Module):
    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    # No conv bias: the batch norm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=False),
        nn.BatchNorm2d(out_channels),
        nn.GELU(),
    )


class CompactCNN(nn.Sequential):
    """Five 3x3 conv-BN-GELU layers, two max-pools and a global max-pool head.

    Sized for a 2-core CPU: at widths (32, 64, 128) it trains at ~3,700 images/s there with bf16
    autocast and channels_last (benchmarks/time_to_accuracy.py), and the global max-pool head keeps
    it at 0.28 M parameters where a dense head would add millions.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.0) -> None:
        if len(widths) != 3:
            raise ConfigError(f"widths {list(widths)}: the compact CNN has 3 stages; give 3 "
                              "widths, one a stage")  # fmt: skip
        a, b, c = widths
        super().__init__(
            Normalize(),
            conv_bn(1, a),
            nn.MaxPool2d(2),  # 28 -> 14
            conv_bn(a, b),
            conv_bn(b, b),
            nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(b, c),
            conv_bn(c, c),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c, 10),
        )


@register("cnn", kind="net")
def cnn(widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.0) -> nn.Module:
    """Compact CNN (TrainConfig's default, best preset's): 0.28 M parameters, >= 99.6 %."""
    return CompactCNN(widths=tuple(widths), dropout=dropout)


@register("cnn-small", kind="net")
def cnn_small(widths: tuple[int, int, int] = (24, 48, 96), dropout: float = 0.0) -> nn.Module:
    """Compact CNN between cnn-tiny and cnn, in no preset: 0.16 M parameters, 1.3x cnn's speed."""
    return CompactCNN(widths=tuple(widths), dropout=dropout)


@register("cnn-tiny", kind="net")
def cnn_tiny(widths: tuple[int, int, int] = (16, 32, 64), dropout: float = 0.0) -> nn.Module:
    """Compact CNN at 1/4 of cnn's cost (70 k parameters): fast's, and default's on fp32 CPUs.

    The most accuracy per second of a CPU without native bf16 (docs/results.md).
    """
    return CompactCNN(widths=tuple(widths), dropout=dropout)


@register("cnn-wide", kind="net")
def cnn_wide(widths: tuple[int, int, int] = (64, 128, 256), dropout: float = 0.1) -> nn.Module:
    """Wider compact CNN: 1.1 M parameters, ~3x cnn's training time on 2 bf16 CPU cores."""
    return CompactCNN(widths=tuple(widths), dropout=dropout)


class Deskew(nn.Module):
    """Straightens each digit's slant: the classic MNIST deskew (LeCun et al. 1998), in the net.

    Each image is sheared about its centre of mass so that its ink's horizontal position no longer
    depends on the vertical one (covariance(x, y) = 0), one ``grid_sample`` for the batch. Slant
    is the largest way one writer's digits differ from another's; a net that sees them upright
    makes different mistakes from one that learnt every slant, which is what an ensemble needs.
    Being a layer, it runs wherever the net runs: training, prediction, serving and ONNX.
    ``centre=True`` also moves each centre of mass to pixel (14, 14), where MNIST put it (the
    classical models' input: pixel distances need aligned digits; nets learn to look anywhere).
    """

    def __init__(self, size: int = 28, max_slant: float = 1.0, centre: bool = False) -> None:
        super().__init__()
        centres = (torch.arange(size) * 2 + 1) / size - 1  # pixel centres in grid units
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        # meshgrid returns broadcast views; the weight average (EMA) writes into buffers.
        self.register_buffer("x", x.contiguous(), persistent=False)
        self.register_buffer("y", y.contiguous(), persistent=False)
        self.max_slant = max_slant  # blank or one-dot images have no meaningful slant
        self.centre = centre
        self.mass_centre = (2 * (size // 2) + 1) / size - 1  # pixel 14, half a pixel off centre

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        slant, y_mean, shift_x, shift_y = self._shear(images)
        # The upright output's pixel (x, y) comes from (x + slant * (y - mean y), y) in the input,
        # each coordinate shifted by the distance of its mean from pixel 14 when centring.
        source_y = self.y + shift_y
        source_x = self.x + shift_x + slant * (source_y - y_mean)
        return self._sample(images, source_x, source_y)

    def to_input_frame(self, maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``maps`` (N, C, H, W) drawn on ``forward(images)`` moved back onto ``images``: the
        inverse shear, so that a heatmap of what the net saw lies over the digit as written."""
        slant, y_mean, shift_x, shift_y = self._shear(images)
        # forward's map inverted: input pixel (x, y) is output pixel
        # (x - shift x - slant * (y - mean y), y - shift y).
        output_x = self.x - shift_x - slant * (self.y - y_mean)
        return self._sample(maps, output_x, self.y - shift_y)

    def _shear(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float, torch.Tensor | float]:
        """Per image (B, 1, 1): the slant, the ink's mean y and the shifts (0 unless centring)."""
        ink = images[:, 0]
        mass = ink.sum(dim=(1, 2)).clamp_min(1e-6)

        def mean(values: torch.Tensor) -> torch.Tensor:  # ink-weighted, per image: (B, 1, 1)
            return ((ink * values).sum(dim=(1, 2)) / mass)[:, None, None]

        x_mean, y_mean = mean(self.x), mean(self.y)
        dx, dy = self.x - x_mean, self.y - y_mean
        slant = mean(dx * dy) / mean(dy * dy).clamp_min(1e-6)
        slant = slant.clamp(-self.max_slant, self.max_slant)
        if self.centre:
            return slant, y_mean, x_mean - self.mass_centre, y_mean - self.mass_centre
        return slant, y_mean, 0.0, 0.0

    @staticmethod
    def _sample(
        images: torch.Tensor, source_x: torch.Tensor, source_y: torch.Tensor
    ) -> torch.Tensor:
        grid = torch.stack([source_x, source_y.expand_as(source_x)], dim=-1)
        return F.grid_sample(images, grid.to(images.dtype), align_corners=False)


@register("cnn-deskew", kind="net")
def cnn_deskew(widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.0) -> nn.Module:
    """Compact CNN on deskewed digits (0.28 M parameters): a second view for ensembles."""
    return nn.Sequential(Deskew(), *CompactCNN(widths=tuple(widths), dropout=dropout))


class SeedCNN(nn.Sequential):
    """The seed notebook's Keras CNN, layer for layer (2.69 M parameters).

    5x5 conv 64, max-pool, BN; 2 x conv 128, max-pool, BN; 2 x conv 256, max-pool, BN;
    dense 512-512-256-10 with ELU and dropout 0.2. Its L2 penalty is the optimizer's weight decay.
    """

    def __init__(self, dropout: float = 0.2) -> None:
        def conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(in_channels, out_channels, kernel_size, padding="same"), nn.ELU()]

        def dense(in_features: int, out_features: int) -> list[nn.Module]:
            return [nn.Linear(in_features, out_features), nn.ELU(), nn.Dropout(dropout)]

        super().__init__(
            Normalize(),
            *conv(1, 64, 5),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(64),
            *conv(64, 128),
            *conv(128, 128),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(128),
            *conv(128, 256),
            *conv(256, 256),
            nn.MaxPool2d(2),  # 7 -> 3, as Keras' 'valid' pooling floors
            nn.BatchNorm2d(256),
            nn.Flatten(),
            *dense(256 * 3 * 3, 512),
            *dense(512, 512),
            *dense(512, 256),
            nn.Linear(256, 10),
        )


@register("seed-cnn", kind="net")
def seed_cnn(dropout: float = 0.2) -> nn.Module:
    """The seed notebook's CNN (2.69 M parameters), kept as the baseline to beat."""
    return SeedCNN(dropout=dropout)


class MLP(nn.Sequential):
    """Fully connected net on the 784 raw pixels: the notebook's 'dense network' family."""

    def __init__(self, widths: tuple[int, ...] = (512, 256), dropout: float = 0.2) -> None:
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        in_features = N_PIXELS
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.GELU()]
            layers.append(nn.Dropout(dropout))
            in_features = width
        layers.append(nn.Linear(in_features, 10))
        super().__init__(*layers)


@register("mlp", kind="net")
def mlp(widths: tuple[int, ...] = (512, 256), dropout: float = 0.2) -> nn.Module:
    """MLP with batch norm and dropout; ``widths`` are the hidden layers' units."""
    return MLP(widths=tuple(widths), dropout=dropout)
