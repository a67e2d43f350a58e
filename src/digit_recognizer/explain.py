"""Explanations: where a net looks. Grad-CAM for the CNNs (any layer, default the last conv's
activation) and input-gradient saliency for nets without convolutions (the MLP). Heatmaps lie
over the image as given, also where the net straightens it first (cnn-deskew).

    digits explain runs/cnn test.csv --index 7 --out explain.png

    from digit_recognizer.explain import grad_cam
    heatmaps = grad_cam(model, images)            # (N, 28, 28) float32 in [0, 1]

Grad-CAM: Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391. Each channel of the layer's
output is weighted by the spatial mean of the target logit's gradient, the weighted sum goes
through a ReLU and is upsampled to the image. Gradients are taken in fp32 (no autocast): the
heatmaps are small and bf16 gradients make them blotchy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from torch import nn

from digit_recognizer.data import stream  # its STREAM_ROWS read at each use, as predict's
from digit_recognizer.data.images import check_images, load_image
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.shards import (
    MANIFEST_FILE,
    concat_rows,
    is_data_source,
    is_read_once,
    read_data_source,
    read_rows,
    resolve_data_source,
)
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.errors import ConfigError, DataError, OutputError
from digit_recognizer.evaluate import figure_kind, save_figure
from digit_recognizer.fileio import (
    MAX_NAME_BYTES,
    check_can_write,
    cut_name,
    is_glob,
    refuse_special_file,
)
from digit_recognizer.models.storage import load_net
from digit_recognizer.predict import (
    PieceConformer,
    PredictConfig,
    Predictor,
    check_data_source,
    conform_row,
    uncrossed_as_ones,
    warn_conformed,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 256  # bounds the memory held by the graph: activations and gradients of a batch
HEATMAP_CMAP = "jet"  # the Grad-CAM paper's colours: readable on top of a grey digit
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.ELU, nn.SELU, nn.SiLU, nn.Mish, nn.LeakyReLU,
               nn.PReLU, nn.Hardswish, nn.Tanh)  # fmt: skip


@torch.enable_grad()  # callers may hold torch.no_grad(), as inference code does
def grad_cam(
    model: nn.Module,
    images: NDArray[np.uint8],
    target: int | ArrayLike | None = None,
    layer: nn.Module | str | None = None,
) -> NDArray[np.float32]:
    """Grad-CAM heatmaps of ``model`` for ``images``.

    Parameters
    ----------
    model : a net taking float (N, 1, 28, 28) in [0, 1] and returning logits (N, 10)
    images : ndarray of shape (n_images, 28, 28), uint8
    target : the digit to explain, one for all images or one per image; None = the prediction
    layer : a module of ``model`` or its name in ``model.named_modules()``; None = the net's
        ``grad_cam_layer`` if it names one, else the last ``nn.Conv2d``, read after the
        activation registered right after it, where there is one. A net without a conv layer
        (the MLP) gets ``saliency`` instead.

    Returns
    -------
    ndarray of shape (n_images, 28, 28), float32 in [0, 1] (each map scaled to its maximum)
    """
    if layer is None and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return saliency(model, images, target)
    module = _find_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}
    activation_after = _activation_after(model, module) if layer is None else None

    def on_layer(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["output"] = output
        captured["armed"] = activation_after is not None

    def on_activation(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        # Its first call after the conv's: a net may call one activation module elsewhere too.
        if captured.pop("armed", False):
            captured["output"] = output

    hooks = [module.register_forward_hook(on_layer)]
    if activation_after is not None:
        hooks.append(activation_after.register_forward_hook(on_activation))
    # Layers that warp the image before the convolutions (cnn-deskew's Deskew) have the heatmap,
    # drawn on what the net saw, moved back onto the image as given (their to_input_frame).
    warps = [m for m in model.modules() if hasattr(m, "to_input_frame")]
    warp_inputs: dict[nn.Module, torch.Tensor] = {}
    hooks += [warp.register_forward_hook(lambda m, inputs, _o: warp_inputs.update({m: inputs[0]}))
              for warp in warps]  # fmt: skip
    try:
        heatmaps = []
        for x, scores in _target_scores(model, images, target):
            activation = captured["output"]  # (B, C, h, w)
            if activation.ndim != 4:  # else a Linear's (B, C) fails on a mean over no axes
                raise ValueError(f"layer {layer!r} outputs {tuple(activation.shape[1:])} per "
                                 "image, not feature maps (channels, height, width): Grad-CAM "
                                 "reads a conv layer's")  # fmt: skip
            (gradient,) = torch.autograd.grad(scores.sum(), activation)
            weights = gradient.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
            cam = F.relu((weights * activation).sum(dim=1, keepdim=True))  # (B, 1, h, w)
            cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear")
            for warp in reversed(warps):
                cam = warp.to_input_frame(cam, warp_inputs[warp])
            heatmaps.append(cam.detach())
    finally:
        for hook in hooks:
            hook.remove()
    return _scaled(heatmaps)


@torch.enable_grad()
def saliency(
    model: nn.Module, images: NDArray[np.uint8], target: int | ArrayLike | None = None
) -> NDArray[np.float32]:
    """Input-gradient saliency |d logit[target] / d pixel| for any net (Simonyan et al. 2013).

    Same parameters and result as ``grad_cam``: (n_images, 28, 28) float32 in [0, 1].
    """
    heatmaps = []
    for x, scores in _target_scores(model, images, target):
        (gradient,) = torch.autograd.grad(scores.sum(), x)
        heatmaps.append(gradient.abs())
    return _scaled(heatmaps)


def _target_scores(model: nn.Module, images: NDArray[np.uint8], target: int | ArrayLike | None):
    """Yield (input batch with gradients, target logit per image) in eval mode, batch by batch."""
    device = next(model.parameters()).device
    images = torch.as_tensor(check_images(images))
    targets = None
    if target is not None:
        asked = np.broadcast_to(np.asarray(target), len(images))
        if asked.dtype.kind not in "iu" or asked.min(initial=0) < 0 or asked.max(initial=0) > 9:
            raise ValueError(f"target must be a digit 0-9 (or one per image), got {target!r:.60}")
        targets = asked.astype(np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), BATCH_SIZE):
            x = to_model_input(images[start : start + BATCH_SIZE].to(device))
            x.requires_grad_(True)  # so there is a graph even when the weights are frozen
            logits = model(x).float()
            if targets is None:
                chosen = logits.argmax(dim=1)
            else:
                chosen = torch.as_tensor(targets[start : start + BATCH_SIZE], device=device)
            yield x, logits.gather(1, chosen[:, None])[:, 0]
    finally:
        model.train(was_training)


def _find_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    modules = dict(model.named_modules())
    convs = [name for name, module in modules.items() if isinstance(module, nn.Conv2d)]
    if layer is None:
        # Named by the net, or by a net inside a wrapper (cnn-deskew's): relative to it.
        named = [f"{prefix}.{module.grad_cam_layer}".lstrip(".")
                 for prefix, module in modules.items()
                 if isinstance(getattr(module, "grad_cam_layer", None), str)]  # fmt: skip
        if named and not isinstance(modules.get(named[0]), nn.Conv2d):
            raise ValueError(f"the net's grad_cam_layer, '{named[0]}', is not one of its conv "
                             f"layers: {', '.join(convs)}")  # fmt: skip
        layer = named[0] if named else convs[-1]
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in modules.values()):
            raise ValueError("layer is not a module of this model")
        return layer
    if layer not in modules:
        raise ValueError(f"no layer named '{layer}' in the model; conv layers: {', '.join(convs)}")
    return modules[layer]


def _activation_after(model: nn.Module, conv: nn.Module) -> nn.Module | None:
    """The activation registered right after ``conv`` (past its batch norm), if any: Grad-CAM
    reads the conv's features as the next layer sees them, its output after that activation's
    first call. On the default model of replica 577215 and 1,000 MNIST digits, 0.71 of the
    heatmaps' mass lay on the ink (dilated by a pixel) and 93 % of their peaks, where the raw
    conv output put 0.64 and 85 %."""
    modules = list(model.modules())
    for module in modules[next(i for i, m in enumerate(modules) if m is conv) + 1 :]:
        if isinstance(module, ACTIVATIONS):
            return module
        if not isinstance(module, nn.BatchNorm2d | nn.Identity):
            return None
    return None


def _scaled(batches: list[torch.Tensor]) -> NDArray[np.float32]:
    """Batches (B, 1, H, W) -> (N, H, W) numpy, each map divided by its maximum (all-zero stays
    zero)."""
    if not batches:  # no images (a filter that kept none), as predict_proba answers (0, 10)
        return np.zeros((0, 28, 28), dtype=np.float32)
    maps = torch.cat(batches)[:, 0].float().cpu()
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-12), 0).numpy().astype(np.float32)


# -- one image, explained and plotted -------------------------------------------------------------


@dataclass
class Explanation:
    """Why a net predicted what it did for one image."""

    image: NDArray[np.uint8]  # (28, 28)
    heatmap: NDArray[np.float32]  # (28, 28) in [0, 1], for the predicted digit
    probas: NDArray[np.float32]  # (10,)
    method: str  # "Grad-CAM" or "saliency"
    label: int | None = None  # the true digit, when known
    net_predicted: int | None = None  # the net's own digit, where its file reads the row otherwise

    @property
    def predicted(self) -> int:
        return int(self.probas.argmax())


def explain_image(
    model: nn.Module,
    image: NDArray[np.uint8],
    label: int | None = None,
    reading: NDArray[np.float32] | None = None,
) -> Explanation:
    """Probabilities and a heatmap (Grad-CAM, or saliency for nets without convs) for one image.
    ``reading``: the image's probabilities as its file reads it, where they are not the net's
    own (``explain_run``); the heatmap is of the digit they predict."""
    images = check_images(np.asarray(image)[None])  # one image (28, 28) or row (784,)
    has_conv = any(isinstance(module, nn.Conv2d) for module in model.modules())
    probas = Predictor.from_models([model]).predict_proba(images)[0]
    shown = probas if reading is None else reading
    return Explanation(
        image=images[0],
        # The map of the digit the probabilities predict: grad_cam's own fp32 forward pass may
        # choose the other digit of a near tie than the bf16 one the prediction comes from.
        heatmap=grad_cam(model, images, target=[int(shown.argmax())])[0],
        probas=shown,
        method="Grad-CAM" if has_conv else "saliency",
        label=label,
        net_predicted=None if shown.argmax() == probas.argmax() else int(probas.argmax()),
    )


def draw_overlay(ax: Axes, image: NDArray[np.uint8], heatmap: NDArray[np.float32]) -> None:
    """The digit in grey with the heatmap on top; one look shared by every explanation plot."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    # Opacity follows the heat, so the strokes stay visible where the net did not look.
    ax.imshow(heatmap, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.15 + 0.5 * heatmap)
    ax.set_axis_off()


def plot_explanation(explanation: Explanation, path: Path) -> None:
    """PNG of the image, the heatmap overlay and the probabilities of each digit."""
    fig = Figure(figsize=(9, 3.2))
    image_ax, overlay_ax, bar_ax = fig.subplots(1, 3, width_ratios=[1, 1, 1.6])
    image_ax.imshow(explanation.image, cmap="gray", vmin=0, vmax=255)
    image_ax.set_axis_off()
    known = f"true {explanation.label}, " if explanation.label is not None else ""
    net = explanation.net_predicted
    as_read = "" if net is None else f"\nthe net's {net}, read as its file is"
    image_ax.set_title(f"image ({known}predicted {explanation.predicted}){as_read}")
    draw_overlay(overlay_ax, explanation.image, explanation.heatmap)
    overlay_ax.set_title(explanation.method)
    colours = ["tab:blue"] * 10
    colours[explanation.predicted] = "tab:orange"
    bar_ax.bar(range(10), explanation.probas, color=colours)
    bar_ax.set(xticks=range(10), xlabel="digit", ylim=(0, 1), title="probability")
    bar_ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def explain_run(
    run_dir: Path, source: Path, index: int | None, out: Path, conform: bool = True
) -> Explanation:
    """Explain an image with a run's net and write the PNG: row ``index`` (0-based) of a Kaggle
    CSV, or an image file (``index`` None), preprocessed as MNIST was (data/images.py).

    A CSV row is seen as ``digits predict`` sees it (conform_row): conformed to MNIST's layout
    if it is not in it (``conform``), and the file's rows transposed if the net reads them as
    digits only so, so the explanation is of the prediction that command makes; and read as
    that command reads it, where its file's writers cross their 7s (``_as_its_file_reads_it``).
    """
    # Swapped arguments said as such, not as the --out they imply.
    check_data_source(source, takes_images=True)
    check_explanation_path(out, source)
    reading = None
    if is_data_source(source):
        first_rows, row, whole = _first_rows_and_row(source, index)
        model, _ = load_net(run_dir)
        config = PredictConfig(conform=conform)
        predictor = Predictor.from_models([model], config)
        image = conform_row(
            first_rows.images, row.images[0], index, config, source, predictor.layout_judge
        )
        label = None if row.labels is None else int(row.labels[0])
        if conform:
            reading = _as_its_file_reads_it(source, index, image, predictor, config, whole)
    elif index is not None:
        raise DataError(f"{source}: --index picks a row of a CSV; an image file holds one digit")
    elif not conform:  # it would be redone as MNIST's all the same: say so
        raise ConfigError(f"{source}: --as-is takes a CSV's rows in their own layout; an "
                          "image file is always redone as MNIST's, as predict-image reads "
                          "it")  # fmt: skip
    else:
        image, label = load_image(source), None
        model, _ = load_net(run_dir)
    explanation = explain_image(model, image, label, reading)
    plot_explanation(explanation, out)
    return explanation


def _as_its_file_reads_it(
    source: Path,
    index: int,
    image: NDArray[np.uint8],
    predictor: Predictor,
    config: PredictConfig,
    whole: DigitSet | None,
) -> NDArray[np.float32] | None:
    """Row ``index``'s probabilities as ``digits predict`` reads the file, where they are not
    the net's own of ``image`` (the row conformed): a digit read as 7, else 1, without a bar
    across its stem, in a file whose writers cross their 7s (``PieceConformer.rereadings``).
    That is judged on every row, so only such a row has the file read through, as predict
    reads it; ``whole``: its rows, where the file can be read once only (a pipe)."""
    if not len(uncrossed_as_ones(image[None], predictor.predict_proba(image[None]))[0]):
        return None
    log.info("%s, row %d: read as 7, else 1, with no bar across the stem; reading every row "
             "to judge whether the writers cross their 7s", source, index)  # fmt: skip
    if whole is None:
        pieces = stream.read_in_pieces(source)[2]
    else:
        pieces = (whole.take(rows) for rows in stream.piece_slices(len(whole)))
    conformer = PieceConformer(config, predictor.layout_judge)
    for piece in conformer.conformed(pieces):
        conformer.read(piece.images, predictor.predict_proba(piece.images))
    rows, reread = conformer.rereadings()
    if index not in rows:
        return None
    warn_conformed(f"{source}, row {index}", 1, n_faint=0, n_uncrossed=1)
    return reread[np.flatnonzero(rows == index)[0]]


def check_explanation_path(out: Path, source: Path) -> None:
    """Refuse an ``out`` that cannot be drawn to or written, or that is the image explained
    (the figure would replace it), before the net and the rows are read rather than after."""
    figure_kind(out)
    check_can_write(refuse_special_file(out))
    if out.is_file() and out.resolve() == source.resolve():
        raise OutputError(f"{out}: is the image to explain; write the figure to another --out")


def explanation_path(run_dir: Path, source: Path, index: int | None) -> Path:
    """Where `digits explain` draws without --out: RUN_DIR/explain-NAME-EXT.png for an image
    NAME.EXT (photo.png and photo.jpg are two figures), RUN_DIR/explain-NAME-rowINDEX.png for
    row INDEX of NAME.csv, of the shard directory NAME, or of a glob of directory NAME's CSVs
    whose pattern is wildcards alone ('NAME/*.csv'): row 3 of two CSVs are two figures. In
    NAME each run of characters other than letters, digits, ``.``, ``-`` and ``_`` (spaces,
    quotes, a glob's wildcards) is written as one ``_``: the path is typed in a shell unquoted,
    and no command reads it as a glob. A NAME so rewritten, or cut to fit MAX_NAME_BYTES (a
    name over ~240 bytes), ends in 8 hex digits of a hash of the name as given (my digit.png:
    explain-my_digit-png-18549a71.png), or it would be another name's figure (my_digit.png's),
    drawn over without a word."""
    if index is None:
        return run_dir / _figure_name(source.stem + source.suffix.replace(".", "-"))
    named = source.parent if source.name == MANIFEST_FILE else source
    name = named.resolve().name if named.is_dir() else named.stem
    if is_glob(named) and not any(char.isalnum() for char in name):  # "data/*.csv": "data"
        name = named.parent.resolve().name
    return run_dir / _figure_name(name, f"-row{index}")


def _figure_name(name: str, tail: str = "") -> str:
    safe = re.sub(r"[^\w.-]+", "_", name)
    figure = f"explain-{safe}{tail}.png"
    if safe == name and len(figure.encode()) <= MAX_NAME_BYTES:
        return figure
    # fsencode: a name that is no UTF-8 (its bytes held as surrogates) hashes as its bytes
    digest = f"-{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}"
    room = max(MAX_NAME_BYTES - len(f"explain-{digest}{tail}.png".encode()), 0)
    return f"explain-{cut_name(safe, room)}{digest}{tail}.png"


def _first_rows_and_row(
    source: Path, index: int | None
) -> tuple[DigitSet, DigitSet, DigitSet | None]:
    """The first STREAM_ROWS rows of a CSV (shard directory, glob), which judge how its rows are
    conformed (``conform_row``), and its row ``index`` (`digits explain --index`): those alone
    are parsed, a piece at a time (read whole, a 562 MB CSV took 3 GB at the peak to show one
    row); a pipe, which can be read only once, is read whole, and its rows returned too."""
    if is_read_once(source):
        data = read_data_source(source)
        _check_row_index(source, index, len(data))
        return data.take(slice(0, stream.STREAM_ROWS)), data.take(slice(index, index + 1)), data
    manifest = resolve_data_source(source)
    _check_row_index(source, index, manifest.n_rows)
    first_rows = concat_rows(list(read_rows(manifest, 0, stream.STREAM_ROWS)))
    return first_rows, concat_rows(list(read_rows(manifest, index, index + 1))), None


def _check_row_index(source: Path, index: int | None, n_rows: int) -> None:
    if index is None:
        raise DataError(f"{source}: holds {n_rows:,} digits; pick one with --index ROW "
                        f"(0 to {n_rows - 1}, 0-based)")  # fmt: skip
    if not 0 <= index < n_rows:
        raise DataError(f"{source}: has {n_rows:,} rows; --index must be 0 to {n_rows - 1} "
                        "(0-based)")  # fmt: skip
