"""Reports people look at: EDA of a Kaggle CSV, augmentation previews, and a run's report.html.

    digits eda train.csv --out eda/                 # terminal summary, PNGs and eda.html
    digits augment-preview train.csv --n 9          # what training's augmentation does
    digits report runs/cnn [--data labelled.csv]    # runs/cnn/report.html (train writes it too)

Every HTML page is self-contained: figures are inline PNG data URIs, no scripts, no network.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn import metrics as skm
from torch import nn

from digit_recognizer.config import read_toml
from digit_recognizer.data.augment import Augmentation, augment_batch
from digit_recognizer.data.kaggle_csv import DigitSet, read_kaggle_csv
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import DataError, ModelFileError
from digit_recognizer.evaluate import (
    CLASSES,
    METRICS_FILE,
    compute_metrics,
    plot_confusion_matrix,
    plot_learning_curves,
    save_figure,
)
from digit_recognizer.explain import draw_overlay, grad_cam
from digit_recognizer.fileio import write_text
from digit_recognizer.models.nets import MNIST_MEAN, MNIST_STD
from digit_recognizer.models.runtime import to_model_input
from digit_recognizer.predict import Predictor
from digit_recognizer.train import CONFIG_FILE, HISTORY_FILE

REPORT_FILE = "report.html"
EDA_FILE = "eda.html"
N_GALLERY = 16  # images per gallery: two rows of eight stay legible at page width
PREVIEW_ROWS = 4  # augment-preview: this many source images, one per row


# -- EDA -------------------------------------------------------------------------------------------


@dataclass
class EdaSummary:
    """What ``eda`` found in a Kaggle CSV; ``rows()`` is the table both terminal and HTML show."""

    path: Path
    n_rows: int
    n_columns: int
    dtypes: dict[str, str]  # column(s) -> dtype as read
    memory_bytes: int  # images and labels in memory
    n_missing: int
    class_counts: dict[int, int] | None  # None for an unlabelled CSV (test.csv)
    pixel_mean: float  # over all pixels, 0-255
    pixel_std: float
    zero_fraction: float  # share of pixels that are exactly 0 (background)
    n_duplicates: int  # images identical to an earlier row
    n_conflicting_duplicates: int  # ... of which carry a different label
    figures: dict[str, Path] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("file", str(self.path)),
            ("rows x columns", f"{self.n_rows:,} x {self.n_columns}"),
            ("dtypes", ", ".join(f"{k}: {v}" for k, v in self.dtypes.items())),
            ("memory", f"{self.memory_bytes / 2**20:.1f} MiB"),
            ("missing values", f"{self.n_missing} (the strict reader rejects empty cells)"),
            ("pixel mean / std", f"{self.pixel_mean:.2f} / {self.pixel_std:.2f} (0-255)"),
            ("background pixels", f"{self.zero_fraction:.1%} are exactly 0"),
            ("duplicate images", f"{self.n_duplicates} ({self.n_conflicting_duplicates} with "
             "a different label)"),
        ]  # fmt: skip
        if self.class_counts:
            counts = list(self.class_counts.values())
            rows.append(
                ("label counts", " ".join(f"{d}:{n}" for d, n in self.class_counts.items()))
            )
            rows.append(("balance", f"smallest / largest class = {min(counts) / max(counts):.2f}"))
        return rows


def eda(csv_path: str | Path, out_dir: str | Path) -> EdaSummary:
    """Summarise a Kaggle CSV; write its PNGs and a self-contained ``eda.html`` to ``out_dir``."""
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    data = read_kaggle_csv(csv_path)
    summary = _summarise(csv_path, data)
    rng = np.random.default_rng(0)
    plots = [("samples.png", "Random samples", _plot_samples)]
    if data.labels is not None:
        plots = [
            ("label_distribution.png", "Label distribution", _plot_label_distribution),
            *plots,
            ("samples_per_class.png", "Samples per class", _plot_class_rows),
        ]
    plots += [
        ("mean_std_images.png", "Mean and standard deviation images", _plot_mean_std),
        ("pixel_histograms.png", "Pixel intensities", _plot_pixel_histograms),
    ]
    for file, title, plot in plots:
        plot(data, rng, out_dir / file)
        summary.figures[title] = out_dir / file
    sections = [("Summary", _table(summary.rows()))]
    sections += [(title, _img(path, title)) for title, path in summary.figures.items()]
    write_text(out_dir / EDA_FILE, _page(f"EDA: {csv_path.name}", str(csv_path), sections))
    return summary


def _summarise(path: Path, data: DigitSet) -> EdaSummary:
    pixels = data.images.reshape(len(data), -1)
    counts = np.bincount(pixels.ravel(), minlength=256)  # 256 bins: exact statistics, 0.1 s
    values = np.arange(256)
    mean = float(counts @ values / counts.sum())
    first_row: dict[bytes, int] = {}
    n_duplicates = n_conflicting = 0
    for row, image in enumerate(pixels):  # hashing 42,000 rows: ~50 ms
        first = first_row.setdefault(image.tobytes(), row)
        if first != row:
            n_duplicates += 1
            n_conflicting += data.labels is not None and data.labels[first] != data.labels[row]
    dtypes = {"pixel0..pixel783": "uint8"}
    class_counts = None
    if data.labels is not None:
        dtypes = {"label": "int64", **dtypes}
        class_counts = dict(enumerate(np.bincount(data.labels, minlength=10).tolist()))
    return EdaSummary(
        path=path,
        n_rows=len(data),
        n_columns=pixels.shape[1] + (data.labels is not None),
        dtypes=dtypes,
        memory_bytes=data.images.nbytes + (data.labels.nbytes if data.labels is not None else 0),
        n_missing=0,
        class_counts=class_counts,
        pixel_mean=mean,
        pixel_std=float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())),
        zero_fraction=float(counts[0] / counts.sum()),
        n_duplicates=n_duplicates,
        n_conflicting_duplicates=int(n_conflicting),
    )


def _plot_label_distribution(data: DigitSet, _rng: np.random.Generator, path: Path) -> None:
    counts = np.bincount(data.labels, minlength=10)
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    bars = ax.bar(CLASSES, counts, color="tab:blue")
    labels = [f"{n:,}\n{n / counts.sum():.1%}" for n in counts]
    ax.bar_label(bars, labels, label_type="center", color="white", fontsize=8)
    ax.axhline(counts.mean(), color="tab:gray", linestyle="--", label="mean")
    ax.set(xticks=CLASSES, xlabel="digit", ylabel="images", ylim=(0, counts.max() * 1.2))
    ax.set_title(f"Label distribution ({counts.sum():,} images)")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def _plot_samples(data: DigitSet, rng: np.random.Generator, path: Path) -> None:
    rows, columns = 4, 12
    chosen = rng.choice(len(data), size=min(rows * columns, len(data)), replace=False)
    titles = [f"#{i}" + (f": {data.labels[i]}" if data.labels is not None else "") for i in chosen]
    title = "Random samples" + (" (row number: label)" if data.labels is not None else "")
    _plot_gallery(data.images[chosen], titles, path, columns=columns, title=title)


def _plot_class_rows(data: DigitSet, rng: np.random.Generator, path: Path) -> None:
    columns = 12
    tiles = np.zeros((10, columns, 28, 28), np.uint8)
    for digit in CLASSES:
        members = np.flatnonzero(data.labels == digit)
        picked = rng.choice(members, size=min(columns, len(members)), replace=False)
        tiles[digit, : len(picked)] = data.images[picked]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    ax.imshow(_montage(tiles), cmap="gray", vmin=0, vmax=255)
    ax.set(xticks=[], yticks=np.arange(10) * 30 + 15, yticklabels=CLASSES, ylabel="label")
    ax.set_title(f"{columns} random samples per class")
    save_figure(fig, path)


def _plot_mean_std(data: DigitSet, _rng: np.random.Generator, path: Path) -> None:
    everything = np.ones(len(data), dtype=bool)
    groups = [data.labels == d for d in CLASSES] if data.labels is not None else [everything]
    images = data.images.astype(np.float32)
    means = np.stack([images[g].mean(axis=0) for g in groups])
    stds = np.stack([images[g].std(axis=0) for g in groups])
    fig = Figure(figsize=(1.0 * len(groups) + 1.6, 3.2))
    axes = fig.subplots(2, 1)
    for ax, maps, name, cmap in zip(axes, (means, stds), ("mean", "std"), ("gray", "magma"),
                                    strict=True):  # fmt: skip
        shown = ax.imshow(_montage(maps[None], pad_value=np.nan), cmap=cmap, vmin=0)
        ax.set(yticks=[], ylabel=name)
        ax.set_xticks(np.arange(len(groups)) * 30 + 15, CLASSES if len(groups) == 10 else ["all"])
        fig.colorbar(shown, ax=ax, fraction=0.02, pad=0.01, label="pixel value")
    axes[0].set_title(
        "Mean and standard deviation of each pixel" + (" per class" * (len(groups) > 1))
    )
    save_figure(fig, path)


def _plot_pixel_histograms(data: DigitSet, _rng: np.random.Generator, path: Path) -> None:
    counts = np.bincount(data.images.ravel(), minlength=256)
    raw = np.arange(256)
    normalised = (raw / 255 - MNIST_MEAN) / MNIST_STD  # what the nets' first layer computes
    fig = Figure(figsize=(11, 3.4))
    for ax, x, name in zip(fig.subplots(1, 2), (raw, normalised), ("before normalisation",
                           "after normalisation"), strict=True):  # fmt: skip
        mean = counts @ x / counts.sum()
        std = np.sqrt(counts @ (x - mean) ** 2 / counts.sum())
        ax.bar(x, counts, width=x[1] - x[0], color="tab:blue")
        ax.set(yscale="log", ylabel="pixels (log scale)")
        ax.set_xlabel("(x / 255 - 0.1307) / 0.3081, as the nets' first layer" if x is normalised
                      else "pixel value x (uint8)")  # fmt: skip
        ax.set_title(f"{name}: mean {mean:.3f}, std {std:.3f}")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _montage(tiles: NDArray, pad: int = 2, pad_value: float = 255) -> NDArray:
    """(rows, columns, 28, 28) tiles -> one (rows * 30, columns * 30) image with separators."""
    rows, columns, height, width = tiles.shape
    padded = np.full((rows, columns, height + pad, width + pad), pad_value, np.float32)
    padded[:, :, pad // 2 : pad // 2 + height, pad // 2 : pad // 2 + width] = tiles
    return padded.transpose(0, 2, 1, 3).reshape(rows * (height + pad), columns * (width + pad))


def _plot_gallery(
    images: NDArray[np.uint8],
    titles: Sequence[str],
    path: Path,
    columns: int = 8,
    title: str = "",
    heatmaps: NDArray[np.float32] | None = None,
) -> None:
    """Images (or Grad-CAM overlays) in a grid, each with a short caption."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(1.15 * columns, 1.6 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < len(images) and heatmaps is not None:
            draw_overlay(ax, images[i], heatmaps[i])
        elif i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if i < len(images):
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


# -- augmentation preview -------------------------------------------------------------------------


def augment_preview(
    csv_path: str | Path, out_path: str | Path, n: int = 9, seed: int = 0, strength: float = 1.0
) -> Path:
    """PNG grid: a few images of the CSV (first column) and ``n`` random augmentations of each.

    Uses ``augment_batch`` with ``Augmentation().scaled(strength)``, exactly as training does
    with ``--augment strength``.
    """
    data = read_kaggle_csv(csv_path)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    originals = data.images[rng.choice(len(data), size=min(PREVIEW_ROWS, len(data)), replace=False)]
    x = to_model_input(torch.as_tensor(originals).repeat_interleave(n, 0), channels_last=False)
    augmented = augment_batch(x, Augmentation().scaled(strength), generator)
    augmented = (augmented[:, 0] * 255).round().to(torch.uint8).numpy().reshape(-1, n, 28, 28)
    tiles = np.concatenate([originals[:, None], augmented], axis=1).reshape(-1, 28, 28)
    titles = [("original" if c == 0 else f"augmented {c}") for _ in originals for c in range(n + 1)]
    a = Augmentation().scaled(strength)
    title = (f"Training augmentation, strength {strength:g}: rotation ±{a.rotation_deg:g}°, zoom "
             f"±{a.scale:.0%}, shear ±{a.shear:g}, shift ±{a.translate_px:g} px, contrast "
             f"±{a.contrast:.0%}")  # fmt: skip
    _plot_gallery(tiles, titles, Path(out_path), columns=n + 1, title=title)
    return Path(out_path)


# -- run report ------------------------------------------------------------------------------------


@dataclass
class Reliability:
    """Calibration by confidence bin: a perfectly calibrated model has accuracy == confidence."""

    bin_edges: NDArray[np.float64]  # (n_bins + 1,) from 0 to 1
    confidence: NDArray[np.float64]  # (n_bins,) mean top probability per bin (nan when empty)
    accuracy: NDArray[np.float64]  # (n_bins,) fraction correct per bin (nan when empty)
    counts: NDArray[np.int64]  # (n_bins,)
    ece: float  # expected calibration error: count-weighted mean |accuracy - confidence|


def reliability(
    probas: NDArray[np.floating], labels: NDArray[np.int64], n_bins: int = 15
) -> Reliability:
    """Reliability-diagram data for probabilities (N, 10) and true labels (N,).

    Bins are equal-width in top-class confidence, (0, 1/15], ... as in Guo et al. 2017,
    https://arxiv.org/abs/1706.04599 (15 bins is their choice).
    """
    confidence = probas.max(axis=1)
    correct = probas.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, n_bins) / counts
        accuracy = np.bincount(bins, correct, n_bins) / counts
    gaps = np.nan_to_num(np.abs(accuracy - mean_confidence))
    return Reliability(edges, mean_confidence, accuracy, counts, float(gaps @ counts / len(labels)))


def expected_calibration_error(
    probas: NDArray[np.floating], labels: NDArray[np.int64], n_bins: int = 15
) -> float:
    """ECE of probabilities (N, 10) against labels (N,): 0 is perfectly calibrated."""
    return reliability(probas, labels, n_bins).ece


def model_summary(model: nn.Module) -> list[tuple[str, str, str, int]]:
    """(name, type, output shape, parameters) of each leaf module, from one 1x1x28x28 forward."""
    rows: list[tuple[str, str, str, int]] = []
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]

    def hook_for(name: str):
        def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            n_parameters = sum(p.numel() for p in module.parameters())
            rows.append((name, type(module).__name__, str(tuple(output.shape)), n_parameters))

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in leaves]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, 28, 28, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def write_run_report(
    run_dir: str | Path, data_csv: str | Path | None = None, *, data: DigitSet | None = None
) -> Path:
    """Write ``run_dir/report.html``: config, model, curves, metrics, errors, Grad-CAM, calibration.

    The labelled images come from ``data`` (train_job passes its validation split), else from
    ``data_csv``, else from the validation split rebuilt from config.toml and metrics.json.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ModelFileError(f"{run_dir / CONFIG_FILE}: not found; is {run_dir} a run directory?")
    config = read_toml(run_dir / CONFIG_FILE)
    data, source = _labelled_data(run_dir, config, data_csv, data)
    predictor = Predictor.load([run_dir])
    probas = predictor.predict_proba(data.images)
    with tempfile.TemporaryDirectory() as figures:
        model = predictor.models[0]
        sections = _report_sections(run_dir, config, model, data, source, probas, Path(figures))
        page = _page(f"Run report: {run_dir.name}", str(run_dir.resolve()), sections)
    write_text(run_dir / REPORT_FILE, page)
    return run_dir / REPORT_FILE


def _report_sections(
    run_dir: Path,
    config: dict,
    model: nn.Module,
    data: DigitSet,
    source: str,
    probas: NDArray[np.float32],
    figures: Path,
) -> list[tuple[str, str]]:
    """The report's (heading, HTML) sections; figures are drawn into ``figures`` first."""
    metrics = compute_metrics(data.labels, probas)
    calibration = reliability(probas, data.labels)
    n_wrong = int((probas.argmax(axis=1) != data.labels).sum())
    headline = [
        ("evaluated on", f"{source}: {len(data):,} images"),
        ("accuracy", f"{metrics.accuracy:.4f} ({n_wrong} wrong)"),
        ("macro F1", f"{metrics.macro_f1:.4f}"),
        ("ROC-AUC (one-vs-rest)", f"{metrics.roc_auc_ovr:.5f}" if metrics.roc_auc_ovr else "n/a"),
        ("expected calibration error", f"{calibration.ece:.4f} (15 bins)"),
        ("model", f"{config.get('model')}: {sum(p.numel() for p in model.parameters()):,} "
         "parameters"),
    ]  # fmt: skip
    per_class = [(str(r["digit"]), f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                  f"{r['f1']:.4f}", f"{r['support']:.0f}") for r in metrics.per_class]  # fmt: skip
    layers = [(*row[:3], f"{row[3]:,}") for row in model_summary(model)]
    sections = [
        ("Summary", _table(headline)),
        ("Configuration and model", _columns(
            _table([(k, str(v)) for k, v in config.items()], header=("config.toml", "value")),
            _table(layers, header=("layer", "type", "output shape", "parameters")))),
    ]  # fmt: skip
    if (run_dir / HISTORY_FILE).is_file():
        plot_learning_curves(_read_history(run_dir / HISTORY_FILE), figures / "curves.png")
        sections.append(("Learning curves", _img(figures / "curves.png", "learning curves")))
    plot_confusion_matrix(metrics.confusion, figures / "confusion.png")
    _plot_roc_pr(data.labels, probas, figures / "roc_pr.png")
    _plot_reliability(calibration, figures / "calibration.png")
    _plot_mistakes_and_grad_cam(model, data, probas, figures)
    return [
        *sections,
        ("Per-class precision, recall and F1; confusion matrix", _columns(
            _table(per_class, header=("digit", "precision", "recall", "F1", "support")),
            _img(figures / "confusion.png", "confusion matrix"))),
        ("ROC and precision-recall, one digit against the rest",
         _img(figures / "roc_pr.png", "ROC and precision-recall curves")),
        ("Calibration", _img(figures / "calibration.png", "reliability diagram") + _note(
            "Bars above the diagonal: the net is right more often than its confidence says "
            "(under-confident, as label smoothing makes it); below: over-confident.")),
        ("Most confident mistakes", _img(figures / "mistakes.png", "most confident mistakes")),
        ("Grad-CAM: where the net looked", _img(figures / "grad_cam.png", "Grad-CAM") + _note(
            "Red: where the predicted digit's score rises most (Grad-CAM on the last conv layer; "
            "input-gradient saliency for a net without convolutions). "
            "Run digits explain RUN_DIR CSV --index I to explain any image.")),
    ]  # fmt: skip


def _labelled_data(
    run_dir: Path, config: dict, data_csv: str | Path | None, data: DigitSet | None
) -> tuple[DigitSet, str]:
    """The images to evaluate on and a description of where they came from."""
    if data is not None:
        return data, f"validation split (valid_size {config['valid_size']}, seed {config['seed']})"
    if data_csv is not None:
        data = read_kaggle_csv(data_csv)
        if data.labels is None:
            raise DataError(f"{data_csv}: has no label column; a report needs labelled data")
        return data, str(data_csv)
    metrics_path = run_dir / METRICS_FILE
    train_csv = (
        json.loads(metrics_path.read_text()).get("train_csv") if metrics_path.is_file() else None
    )
    valid_size = config.get("valid_size", 0)
    if not train_csv or not valid_size or not Path(train_csv).is_file():
        raise DataError(
            f"{run_dir}: cannot rebuild the validation split (needs valid_size > 0 in "
            f"{CONFIG_FILE} and the training CSV named in {METRICS_FILE}); give --data LABELLED_CSV"
        )
    full = read_kaggle_csv(train_csv)
    _, valid_set = split_for_training(full, valid_size, config.get("seed", 0))
    source = (
        f"validation split of {train_csv} (valid_size {valid_size}, seed {config.get('seed', 0)})"
    )
    return valid_set, source


def _read_history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _plot_roc_pr(labels: NDArray[np.int64], probas: NDArray[np.floating], path: Path) -> None:
    fig = Figure(figsize=(12, 4.6))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for digit in CLASSES:
        is_digit = labels == digit
        if is_digit.all() or not is_digit.any():
            continue  # one-vs-rest curves need both classes present
        fpr, tpr, _ = skm.roc_curve(is_digit, probas[:, digit])
        precision, recall, _ = skm.precision_recall_curve(is_digit, probas[:, digit])
        auc = skm.roc_auc_score(is_digit, probas[:, digit])
        ap = skm.average_precision_score(is_digit, probas[:, digit])
        roc_ax.plot(fpr, tpr, color=f"C{digit}", label=f"{digit}: AUC {auc:.4f}")
        pr_ax.plot(recall, precision, color=f"C{digit}", label=f"{digit}: AP {ap:.4f}")
    # Log-scaled false positive rate: on a good model every curve hugs the corner otherwise.
    roc_ax.set(xscale="log", xlim=(1 / max(2, len(labels)), 1), xlabel="false positive rate "
               "(log scale)", ylabel="true positive rate", title="ROC")  # fmt: skip
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2, loc="lower left" if ax is pr_ax else "lower right")
    save_figure(fig, path)


def _plot_reliability(calibration: Reliability, path: Path) -> None:
    edges, counts = calibration.bin_edges, calibration.counts
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = Figure(figsize=(11, 4))
    diagram_ax, count_ax = fig.subplots(1, 2)
    diagram_ax.bar(centres, np.nan_to_num(calibration.accuracy), width=width * 0.9,
                   color="tab:blue", label="accuracy in bin")  # fmt: skip
    diagram_ax.plot([0, 1], [0, 1], "--", color="tab:gray", label="perfect calibration")
    diagram_ax.plot(calibration.confidence, calibration.accuracy, "o", color="tab:orange",
                    label="mean confidence in bin")  # fmt: skip
    diagram_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)",
                   ylabel="accuracy in bin")  # fmt: skip
    diagram_ax.set_title(f"Reliability diagram, ECE {calibration.ece:.4f}")
    diagram_ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(centres, counts, width=width * 0.9, color="tab:blue")
    count_ax.set(xlim=(0, 1), yscale="log", xlabel="confidence (top probability)",
                 ylabel="images (log scale)", title="Confidence histogram")  # fmt: skip
    for ax in (diagram_ax, count_ax):
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_mistakes_and_grad_cam(
    model: nn.Module, data: DigitSet, probas: NDArray[np.floating], figures: Path
) -> None:
    """mistakes.png (most confident errors) and grad_cam.png (8 right, 8 wrong) in ``figures``."""
    predicted, confidence = probas.argmax(axis=1), probas.max(axis=1)
    wrong = np.flatnonzero(predicted != data.labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = np.flatnonzero(predicted == data.labels)
    right = np.random.default_rng(0).choice(right, size=min(8, len(right)), replace=False)

    def caption(i: int) -> str:
        return f"true {data.labels[i]} → {predicted[i]}\n{confidence[i]:.1%}"

    shown = wrong[:N_GALLERY]
    _plot_gallery(data.images[shown], [caption(i) for i in shown], figures / "mistakes.png",
                  title=f"{len(shown)} of {len(wrong)} mistakes, most confident first "
                  "(true → predicted, confidence)")  # fmt: skip
    chosen = np.concatenate([right, wrong[:8]])
    heatmaps = grad_cam(model, data.images[chosen])
    _plot_gallery(data.images[chosen], [caption(i) for i in chosen], figures / "grad_cam.png",
                  title="Grad-CAM for the predicted digit: 8 right (first row), the most confident "
                  "mistakes (second row)", heatmaps=heatmaps)  # fmt: skip


# -- HTML ------------------------------------------------------------------------------------------

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1200px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { margin-bottom: 0; } .subtitle { color: #59636e; margin-top: 4px; }
h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: left; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.columns { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.note { color: #59636e; margin-top: 4px; }
"""


def _page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{html.escape(name)}</h2>\n{content}</section>"
                     for name, content in sections)  # fmt: skip
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1><p class="subtitle">{html.escape(subtitle)}</p>\n'
        f"{body}\n</body></html>\n"
    )


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row) + "</tr>"

    head = cells("th", header) if header else ""
    return f"<table>{head}{''.join(cells('td', row) for row in rows)}</table>"


def _img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _columns(*blocks: str) -> str:
    """Blocks side by side, wrapping onto new lines on narrow screens."""
    return '<div class="columns">' + "".join(f"<div>{block}</div>" for block in blocks) + "</div>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'
