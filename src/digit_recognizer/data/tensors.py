"""The two image formats and the one conversion each way between them.

Files, replicas and shards hold uint8 images (N, 28, 28), ink bright; augmentation and every net
take float tensors (N, 1, 28, 28) in [0, 1]. Training, prediction, serving, export, explanation,
``digits data expand`` and the previews all convert here, so the formats cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], the input every net takes.
    One channel is laid out alike contiguous and channels-last: a net in channels-last
    (TrainConfig.channels_last) takes it as it is."""
    return images.unsqueeze(1).float().div_(255)


def to_uint8_images(x: torch.Tensor) -> NDArray[np.uint8]:
    """Float images (N, 1, H, W) in [0, 1] -> uint8 (N, H, W): ``to_model_input``'s inverse."""
    return (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
