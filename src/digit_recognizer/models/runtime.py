"""Running a net: device choice, bf16 autocast, and the one batched inference loop.

Training (validation), prediction, serving and explanation all go through ``batched_logits``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import typing
from collections.abc import Callable
from typing import Literal, ParamSpec, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.fx.experimental.optimization import fuse

from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.errors import ConfigError, first_line

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda", "mps"]  # the configs' device field
DEVICES: tuple[str, ...] = typing.get_args(Device)
P = ParamSpec("P")
R = TypeVar("R")


def keeps_callers_random_state(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` on a fork of torch's random state: its seeded draws (initial weights,
    dropout) leave the caller's stream as it was, as scikit-learn's estimators do. CUDA's too
    where the caller had started CUDA; forking every GPU's would start CUDA on each of them."""

    @functools.wraps(function)
    def forked(*args: P.args, **kwargs: P.kwargs) -> R:
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return forked


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got '{name}'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the hardware does it natively, else None (full fp32).

    On a 2-core AVX512-BF16 CPU, bf16 autocast with channels_last trains the compact CNN 3x faster
    than fp32 (benchmarks/time_to_accuracy.py); CPUs without native bf16 would be slower with it.
    """
    if not enabled:
        return None
    # Compute capability 8 (Ampere) on: is_bf16_supported() is also true where bf16 is only
    # emulated (T4, V100, P100: Kaggle's and Colab's GPUs), slower than fp32 there.
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    mkldnn = torch.backends.mkldnn.is_available()
    if device.type == "cpu" and mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def memory_bytes(free: bool = False) -> int | None:
    """This machine's memory, or only what is free now (Linux; None where the system does not
    say)."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES" if free else "SC_PHYS_PAGES")
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU (CUDA or Apple MPS); the CPU runs in step already."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def inference_net(model: nn.Module, fuse_batch_norm: bool = True) -> nn.Module:
    """``model`` in eval mode, laid out for fast inference: channels_last like the training
    input, and each batch norm that directly follows a convolution or linear layer folded into
    it (``torch.fx``; a net fx cannot trace is left unfolded).

    On 2 CPU cores, 28,000 images: 6.7 s as loaded (NCHW weights, which oneDNN reorders every
    batch), 4.5 s channels_last, 3.6 s folded too; predictions unchanged. Folding replaces the
    modules, so Grad-CAM, which hooks a real convolution, wants ``fuse_batch_norm=False``.
    """
    model = model.eval()
    if fuse_batch_norm:
        try:
            model = fuse(model)
        # fx fails on forwards it cannot trace (TraceError; RuntimeError for len(x); TypeError
        # for range(x.shape[0])): such a net predicts unfolded, as it trained. fuse works on a
        # copy, so nothing is left half folded.
        except Exception as error:
            log.info("%s: predicting without folding its batch norms (torch.fx cannot trace "
                     "it: %s)", type(model).__name__, first_line(error))  # fmt: skip
    return model.to(memory_format=torch.channels_last)


@torch.no_grad()
def batched_logits(
    model: nn.Module,
    images: NDArray[np.uint8] | torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (N, 10) as float32 on ``device`` for uint8 images (N, 28, 28), in eval mode."""
    images = torch.as_tensor(images)
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size].to(device))
        with autocast(device, amp_dtype):
            outputs.append(model(batch).float())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 10, device=device)
    return torch.cat(outputs)
