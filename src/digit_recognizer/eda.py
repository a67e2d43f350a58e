"""Exploratory data analysis of a Kaggle CSV, and previews of training's augmentation.

digits eda train.csv --out eda/                 # terminal summary, PNGs and eda.html
digits augment-preview train.csv --n 9          # what training's augmentation does
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray

from digit_recognizer.config import load_config
from digit_recognizer.data.augment import STYLED_DIGITS, augment_batch
from digit_recognizer.data.images import faint_to_full_ink
from digit_recognizer.data.kaggle_csv import DigitSet, count_classes
from digit_recognizer.data.shards import (
    concat_rows,
    is_read_once,
    read_data_source,
    read_rows,
    resolve_data_source,
)
from digit_recognizer.data.splits import check_seed
from digit_recognizer.data.stream import read_all_rows
from digit_recognizer.data.tensors import to_model_input, to_uint8_images
from digit_recognizer.errors import ConfigError
from digit_recognizer.evaluate import CLASSES, save_figure
from digit_recognizer.fileio import check_can_write, make_dir, write_text
from digit_recognizer.models.nets import MNIST_MEAN, MNIST_STD
from digit_recognizer.report import (
    html_img,
    html_page,
    html_table,
    montage,
    plot_gallery,
)
from digit_recognizer.train import TrainConfig

EDA_FILE = "eda.html"
LABEL_FIGURES = ("label_distribution.png", "samples_per_class.png")  # a labelled file's alone
PREVIEW_ROWS = 4  # augment-preview: this many source images, one per row
# augment-preview: at most this many augmentations a row (--n 300 would take minutes to draw a
# PNG 33,000 pixels wide).
MAX_PREVIEW_AUGMENTATIONS = 40


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
        duplicates = str(self.n_duplicates)
        # A labelled file's alone: an unlabelled one's would say "(0 with a different label)".
        if self.class_counts is not None:
            duplicates += f" ({self.n_conflicting_duplicates} with a different label)"
        rows = [
            ("file", str(self.path)),
            ("rows x columns", f"{self.n_rows:,} x {self.n_columns}"),
            ("dtypes", ", ".join(f"{k}: {v}" for k, v in self.dtypes.items())),
            ("memory", f"{self.memory_bytes / 2**20:.1f} MiB"),
            ("missing values", f"{self.n_missing} (the strict reader rejects empty cells)"),
            ("pixel mean / std", f"{self.pixel_mean:.2f} / {self.pixel_std:.2f} (0-255)"),
            ("background pixels", f"{self.zero_fraction:.1%} are exactly 0"),
            ("duplicate images", duplicates),
        ]
        if self.class_counts:
            counts = list(self.class_counts.values())
            rows.append(
                ("label counts", " ".join(f"{d}:{n}" for d, n in self.class_counts.items()))
            )
            rows.append(("balance", f"smallest / largest class = {min(counts) / max(counts):.2f}"))
        return rows


def eda(csv_path: str | Path, out_dir: str | Path) -> EdaSummary:
    """Summarise a Kaggle CSV; write its PNGs and a self-contained ``eda.html`` to ``out_dir``."""
    csv_path = Path(csv_path)
    data = read_all_rows(csv_path)
    out_dir = make_dir(out_dir)  # a file there is said as such, before any plot
    summary = _summarise(csv_path, data)
    rng = np.random.default_rng(0)
    plots = [("samples.png", "Random samples", _plot_samples)]
    if data.labels is not None:
        plots = [
            (LABEL_FIGURES[0], "Label distribution", _plot_label_distribution),
            *plots,
            (LABEL_FIGURES[1], "Samples per class", _plot_class_rows),
        ]
    plots += [
        ("mean_std_images.png", "Mean and standard deviation images", _plot_mean_std),
        ("pixel_histograms.png", "Pixel intensities", _plot_pixel_histograms),
    ]
    for file, title, plot in plots:
        plot(data, rng, out_dir / file)
        summary.figures[title] = out_dir / file
    if data.labels is None:  # else a labelled file's eda there before leaves its label plots
        for file in LABEL_FIGURES:
            (out_dir / file).unlink(missing_ok=True)
    sections = [("Summary", html_table(summary.rows()))]
    sections += [(title, html_img(path, title)) for title, path in summary.figures.items()]
    write_text(out_dir / EDA_FILE, html_page(f"EDA: {csv_path.name}", str(csv_path), sections))
    return summary


def _summarise(path: Path, data: DigitSet) -> EdaSummary:
    pixels = data.images.reshape(len(data), -1)
    counts = _pixel_value_counts(data.images)  # 256 bins: exact statistics, 0.1 s
    values = np.arange(256)
    mean = float(counts @ values / counts.sum())
    first_row: dict[bytes, int] = {}
    n_duplicates = n_conflicting = 0
    # Keyed by a 128-bit digest (no collision in any dataset), not by the row's 784 bytes,
    # which would hold a second copy of every image: 0.9 GB beside a million rows. 42,000 rows
    # take 0.15 s (0.09 s keyed by their bytes).
    for row, image in enumerate(pixels):
        first = first_row.setdefault(hashlib.blake2b(image, digest_size=16).digest(), row)
        if first != row:
            n_duplicates += 1
            n_conflicting += data.labels is not None and data.labels[first] != data.labels[row]
    dtypes = {"pixel0..pixel783": "uint8"}
    class_counts = None
    if data.labels is not None:
        dtypes = {"label": "int64", **dtypes}
        class_counts = dict(enumerate(count_classes(data.labels)))
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
    # 0-based, as explain --index takes them: "#i" would read as the file's line, which is i + 2.
    titles = [
        f"row {i}" + (f": {data.labels[i]}" if data.labels is not None else "") for i in chosen
    ]
    title = "Random samples: row from 0, as explain --index" + (
        ": label" if data.labels is not None else ""
    )
    plot_gallery(_drawable(data.images[chosen]), titles, path, columns=columns, title=title)


def _plot_class_rows(data: DigitSet, rng: np.random.Generator, path: Path) -> None:
    columns = 12
    tiles = np.zeros((10, columns, 28, 28), np.uint8)
    for digit in CLASSES:
        members = np.flatnonzero(data.labels == digit)
        picked = rng.choice(members, size=min(columns, len(members)), replace=False)
        tiles[digit, : len(picked)] = _drawable(data.images[picked])
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    ax.imshow(montage(tiles), cmap="gray", vmin=0, vmax=255)
    ax.set(xticks=[], yticks=np.arange(10) * 30 + 15, yticklabels=CLASSES, ylabel="label")
    ax.set_title(f"{columns} random samples per class")
    save_figure(fig, path)


def _drawable(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Images to draw on 0-255: faint rows (0/1, 0-16) at full ink, as every command reads them
    (the summary keeps the file's own values); drawn as they are, such a file's would be black."""
    return faint_to_full_ink(images)[0]


def _plot_mean_std(data: DigitSet, _rng: np.random.Generator, path: Path) -> None:
    everything = np.ones(len(data), dtype=bool)
    groups = [data.labels == d for d in CLASSES] if data.labels is not None else [everything]
    absent = np.full((2, 28, 28), np.nan)  # a class the CSV lacks: blank tiles
    moments = [_mean_and_std(data.images[g]) if g.any() else absent for g in groups]
    means, stds = np.stack(moments, axis=1)
    fig = Figure(figsize=(1.0 * len(groups) + 1.6, 3.2))
    axes = fig.subplots(2, 1)
    for ax, maps, name, cmap in zip(axes, (means, stds), ("mean", "std"), ("gray", "magma"),
                                    strict=True):  # fmt: skip
        shown = ax.imshow(montage(maps[None], pad_value=np.nan), cmap=cmap, vmin=0)
        ax.set(yticks=[], ylabel=name)
        ax.set_xticks(np.arange(len(groups)) * 30 + 15, CLASSES if len(groups) == 10 else ["all"])
        fig.colorbar(shown, ax=ax, fraction=0.02, pad=0.01, label="pixel value")
    axes[0].set_title(
        "Mean and standard deviation of each pixel" + (" per class" * (len(groups) > 1))
    )
    save_figure(fig, path)


def _mean_and_std(images: NDArray[np.uint8], chunk: int = 8192) -> NDArray[np.float64]:
    """Per-pixel mean and standard deviation (2, 28, 28), in chunks: a million rows in float
    would take gigabytes beside their bytes."""
    total, squares = np.zeros((2, *images.shape[1:]))
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    mean = total / len(images)
    return np.stack([mean, np.sqrt(np.maximum(squares / len(images) - mean**2, 0))])


def _pixel_value_counts(
    images: NDArray[np.uint8], chunk: int = 1024, full_ink: bool = False
) -> NDArray[np.int64]:
    """How many pixels take each value 0-255, in chunks: ``bincount`` of all pixels at once
    makes an int64 copy of them, 8 bytes a pixel (6 GB beside a million rows' 0.8 GB).
    ``full_ink``: of the images as the nets read them, faint rows scaled (``_drawable``)."""
    counts = np.zeros(256, np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        counts += np.bincount((_drawable(block) if full_ink else block).ravel(), minlength=256)
    return counts


def _plot_pixel_histograms(data: DigitSet, _rng: np.random.Generator, path: Path) -> None:
    raw = np.arange(256)
    normalised = (raw / 255 - MNIST_MEAN) / MNIST_STD  # what the nets' first layer computes
    # The file's own values, then what the nets read: a binarised file's ink would otherwise be
    # drawn at (1 / 255 - mean) / std, where the nets see it at full ink.
    fig = Figure(figsize=(11, 3.4))
    for ax, x, counts, name in zip(fig.subplots(1, 2), (raw, normalised),
                                   (_pixel_value_counts(data.images),
                                    _pixel_value_counts(data.images, full_ink=True)),
                                   ("before normalisation", "after normalisation"),
                                   strict=True):  # fmt: skip
        mean = counts @ x / counts.sum()
        std = np.sqrt(counts @ (x - mean) ** 2 / counts.sum())
        ax.bar(x, counts, width=x[1] - x[0], color="tab:blue")
        ax.set(yscale="log", ylabel="pixels (log scale)")
        ax.set_xlabel("(x / 255 - 0.1307) / 0.3081, as the nets' first layer" if x is normalised
                      else "pixel value x (uint8)")  # fmt: skip
        ax.set_title(f"{name}: mean {mean:.3f}, std {std:.3f}")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


# -- augmentation preview -------------------------------------------------------------------------


def augment_preview(
    csv_path: str | Path,
    out_path: str | Path,
    n: int = 9,
    seed: int = 0,
    augment: float = 1.0,
    elastic: float = 0.0,
    stroke: float = 0.5,
    styles: float = 0.3,
) -> Path:
    """PNG grid: a few images of the CSV (first column) and ``n`` random augmentations of each.

    Uses ``augment_batch`` with the ``TrainConfig(...).augmentation()`` of these settings,
    exactly as training does (these defaults are the default preset's), writing styles only
    where the CSV has labels.
    """
    check_seed(seed, "--seed")  # else torch's generator takes 2**32 and fails at 2**64
    if not 1 <= n <= MAX_PREVIEW_AUGMENTATIONS:
        raise ConfigError(f"--n must be from 1 to {MAX_PREVIEW_AUGMENTATIONS}, got {n}")
    # Checked as training's flags, and named so: Augmentation's own errors would say elastic_px.
    settings = {"augment": augment, "elastic": elastic, "stroke": stroke, "styles": styles}
    augmentation = load_config(TrainConfig, None, settings).augmentation()
    # Else a file where a folder above --out would be says "cannot be written (File exists)".
    check_can_write(out_path)
    generator = torch.Generator().manual_seed(seed)
    shown = _preview_rows(Path(csv_path), np.random.default_rng(seed), augmentation.styles > 0)
    # Faint rows (0/1, 0-16) at full ink, as training augments them: else black tiles.
    originals = _drawable(shown.images)
    x = to_model_input(torch.as_tensor(originals).repeat_interleave(n, 0))
    labels = None
    if shown.labels is not None:
        labels = torch.as_tensor(shown.labels).repeat_interleave(n, 0)
    augmented = augment_batch(x, augmentation, generator, labels)
    augmented = to_uint8_images(augmented).reshape(-1, n, 28, 28)
    tiles = np.concatenate([originals[:, None], augmented], axis=1).reshape(-1, 28, 28)
    titles = [("original" if c == 0 else f"augmented {c}") for _ in originals for c in range(n + 1)]
    a = augmentation
    title = (f"Training augmentation, strength {augment:g}: rotation ±{a.rotation_deg:g}°, zoom "
             f"±{a.scale:.0%}, shear ±{a.shear:g}, shift ±{a.translate_px:g} px, contrast "
             f"±{a.contrast:.0%}, stroke width ±{a.stroke:g}")  # fmt: skip
    if a.elastic_px:
        title += f", elastic {a.elastic_px:g} px"
    if a.styles and labels is not None:
        title += f", styles {a.styles:.0%}"
    plot_gallery(tiles, titles, Path(out_path), columns=n + 1, title=title)
    return Path(out_path)


def _preview_rows(source: Path, rng: np.random.Generator, styles: bool) -> DigitSet:
    """The rows augment-preview shows: PREVIEW_ROWS drawn from all of ``source``'s, with a 1, a
    7 and a 9 among them where the ``styles`` are drawn on a labelled file (they draw on those
    digits alone, STYLED_DIGITS, which four random rows often lack).

    Read a piece at a time: every row's label where those digits are sought, then the images of
    the rows shown alone, rather than all of a file's held to show four. A pipe, which can be
    read only once, is read whole.
    """
    if is_read_once(source):
        data = read_data_source(source)
        return data.take(_choose_preview_rows(len(data), data.labels if styles else None, rng))
    manifest = resolve_data_source(source)
    labels = None
    if manifest.has_labels and styles:
        pieces = read_rows(manifest, 0, manifest.n_rows)
        labels = np.concatenate([piece.labels for piece in pieces])
    rows = _choose_preview_rows(manifest.n_rows, labels, rng)
    return concat_rows([piece for row in rows for piece in read_rows(manifest, row, row + 1)])


def _choose_preview_rows(
    n_rows: int, labels: NDArray[np.int64] | None, rng: np.random.Generator
) -> NDArray[np.int64]:
    """PREVIEW_ROWS of ``n_rows`` at random; where ``labels`` are given, each of STYLED_DIGITS
    among them (each in the place of a row that is none of them), where the file has it."""
    shown = rng.choice(n_rows, size=min(PREVIEW_ROWS, n_rows), replace=False)
    if labels is not None:
        for digit in STYLED_DIGITS:
            candidates = np.flatnonzero(labels == digit)
            free = np.flatnonzero(~np.isin(labels[shown], STYLED_DIGITS))  # slots to give up
            if len(candidates) and len(free) and digit not in labels[shown]:
                shown[free[0]] = rng.choice(candidates)
    return shown
