import numpy as np
import torch

from digit_recognizer.data.tensors import to_model_input, to_uint8_images


def test_uint8_images_round_trip_through_the_model_input_exactly():
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    x = to_model_input(torch.as_tensor(images))
    assert x.shape == (8, 1, 28, 28) and x.is_contiguous(memory_format=torch.channels_last)
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8_images(x), images)
    # Out-of-range floats (e.g. an interpolation's overshoot) saturate instead of wrapping.
    np.testing.assert_array_equal(to_uint8_images(torch.tensor([-0.2, 1.3]).view(1, 1, 1, 2)),
                                  [[[0, 255]]])  # fmt: skip


def test_the_model_input_is_float32_each_net_takes():
    """Nets' weights are float32: a double input fails at their first layer."""
    x = to_model_input(torch.zeros(2, 28, 28, dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.shape == (2, 1, 28, 28)


def test_float_images_between_two_levels_go_to_the_nearer_one():
    """An augmentation's interpolated values: 254.6 / 255 is ink at 255, not cut down to 254."""
    x = torch.tensor([0.4, 0.6, 127.6, 254.4, 254.6]).div(255).view(1, 1, 1, 5)
    np.testing.assert_array_equal(to_uint8_images(x), [[[0, 1, 128, 254, 255]]])
