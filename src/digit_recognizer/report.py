"""A run's report.html, and the pieces every page shares (galleries, self-contained HTML).

    digits report runs/cnn [--data labelled.csv]    # runs/cnn/report.html (train writes it too)

Every HTML page is self-contained: figures are inline PNG data URIs, no scripts, no network.
EDA and augmentation previews: eda.py.
"""

from __future__ import annotations

import base64
import html
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn import metrics as skm
from torch import nn

from digit_recognizer.checkpoint import CONFIG_FILE, HISTORY_FILE, read_history
from digit_recognizer.config import NONE, read_toml
from digit_recognizer.data.images import at_full_ink
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.shards import concat_rows, require_labels
from digit_recognizer.data.splits import stratified_split
from digit_recognizer.data.stream import read_all_rows, read_in_pieces
from digit_recognizer.errors import ConfigError, DataError, ModelFileError
from digit_recognizer.evaluate import (
    CLASSES,
    METRICS_FILE,
    compute_metrics,
    per_class_cells,
    plot_confusion_matrix,
    plot_learning_curves,
    read_metrics,
    save_figure,
    untrained_digits,
)
from digit_recognizer.explain import draw_overlay, grad_cam
from digit_recognizer.fileio import check_can_write, sha256_file, write_text
from digit_recognizer.models.runtime import inference_net
from digit_recognizer.models.storage import META_FILE, net_recipe, read_meta, refuse_ensemble
from digit_recognizer.predict import (
    PieceConformer,
    PredictConfig,
    Predictor,
    conformed_for_training,
)
from digit_recognizer.train import DEFAULT_LR

REPORT_FILE = "report.html"
N_GALLERY = 16  # images per gallery: two rows of eight stay legible at page width


# -- run report ------------------------------------------------------------------------------------


class SourceRows(NamedTuple):
    """Where a report's images are rows of one file, as `digits explain SOURCE --index ROW`
    counts them: image i is row ``rows[i]`` (0-based) of ``source``."""

    source: Path  # a CSV, shard directory or glob
    rows: NDArray[np.int64]  # (N,)


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
    run_dir: str | Path,
    data_csv: str | Path | None = None,
    *,
    data: DigitSet | None = None,
    data_source: str = "images given",
    data_rows: SourceRows | None = None,
    conform: bool = True,
) -> Path:
    """Write ``run_dir/report.html``: config, model, curves, metrics, errors, Grad-CAM, calibration.

    The labelled images come from ``data``, named ``data_source`` (train_job passes its
    validation set: a split, or a last shard), with the file rows they are in ``data_rows``
    (captions give them, for `digits explain --index`), else from ``data_csv`` (rows not in
    MNIST's layout redone as MNIST's unless not ``conform``, as ``digits evaluate`` reads them),
    else from the validation split rebuilt from config.toml and metrics.json.
    """
    run_dir = Path(run_dir)
    if not conform and data_csv is None and data is None:  # it would do nothing: say so
        raise ConfigError("--as-is reads the rows of --data as they are; without --data the "
                          "report reads images as training did")  # fmt: skip
    refuse_ensemble(run_dir)
    # A classical model's directory, which has no config.toml either: said to be one.
    net_recipe(run_dir / META_FILE, read_meta(run_dir))
    if not (run_dir / CONFIG_FILE).is_file():
        raise ModelFileError(f"{run_dir / CONFIG_FILE}: not found; is {run_dir} a run directory?")
    config = read_toml(run_dir / CONFIG_FILE)
    check_can_write(run_dir / REPORT_FILE)  # before the predictions and figures it would lose
    # Read once, else a training rewriting the run between two reads has Grad-CAM explain
    # another net than the one scored. Scored as `digits evaluate` scores (batch norms folded,
    # in a copy), so the two give one accuracy: unfolded, a near tie can fall the other way.
    # Grad-CAM hooks the unfolded net.
    model = Predictor.load([run_dir], PredictConfig(fuse_batch_norm=False)).models[0]
    predictor = Predictor.from_models([inference_net(model)])
    if data is not None:
        source, probas = data_source, predictor.predict_proba(data.images)
    else:
        data, source, data_rows, probas = _labelled_data(
            run_dir, config, data_csv, predictor, conform
        )
    with tempfile.TemporaryDirectory() as figures:
        sections = _report_sections(run_dir, config, model, data, source, data_rows, probas,
                                    Path(figures))  # fmt: skip
        page = html_page(f"Run report: {run_dir.name}", str(run_dir.resolve()), sections)
    write_text(run_dir / REPORT_FILE, page)
    return run_dir / REPORT_FILE


def _report_sections(
    run_dir: Path,
    config: dict,
    model: nn.Module,
    data: DigitSet,
    source: str,
    data_rows: SourceRows | None,
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
    if untrained := untrained_digits([run_dir], metrics):
        never_seen = ", ".join(map(str, untrained))
        headline.append(("never trained on", f"{never_seen}: the model reads each as another "
                         "digit (model.json's train_class_counts)"))  # fmt: skip
    per_class = per_class_cells(metrics)
    layers = [(*row[:3], f"{row[3]:,}") for row in model_summary(model)]
    sections = [
        ("Summary", html_table(headline)),
        ("Configuration and model", html_columns(
            html_table(_config_rows(config), header=("config.toml", "value")),
            html_table(layers, header=("layer", "type", "output shape", "parameters")))),
    ]  # fmt: skip
    if (run_dir / HISTORY_FILE).is_file():
        plot_learning_curves(read_history(run_dir / HISTORY_FILE), figures / "curves.png",
                             config.get("label_smoothing", 0.0))  # fmt: skip
        sections.append(("Learning curves", html_img(figures / "curves.png", "learning curves")))
    plot_confusion_matrix(metrics.confusion, figures / "confusion.png")
    digits = np.unique(data.labels)
    if len(digits) > 1:  # a digit's curve against the rest needs images of both
        _plot_roc_pr(data.labels, probas, figures / "roc_pr.png")
    _plot_reliability(calibration, figures / "calibration.png")
    rows = np.arange(len(data)) if data_rows is None else data_rows.rows
    _plot_mistakes_and_grad_cam(model, data, probas, figures, rows)
    return [
        *sections,
        ("Per-class precision, recall and F1; confusion matrix", html_columns(
            html_table(per_class, header=("digit", "precision", "recall", "F1", "support")),
            html_img(figures / "confusion.png", "confusion matrix"))),
        ("ROC and precision-recall, one digit against the rest",
         html_img(figures / "roc_pr.png", "ROC and precision-recall curves") if len(digits) > 1
         else html_note(f"None: every image is a {digits[0]}, and a digit's curves against the "
                        "rest need images of other digits too.")),
        ("Calibration", html_img(figures / "calibration.png", "reliability diagram") + html_note(
            "Bars above the diagonal: the net is right more often than its confidence says "
            "(under-confident, as label smoothing makes a net); below: over-confident.")),
        ("Most confident mistakes",
         html_img(figures / "mistakes.png", "most confident mistakes") if n_wrong
         else html_note(f"None: all {len(data):,} images are predicted right.")),
        ("Grad-CAM: where the net looked", html_img(figures / "grad_cam.png", "Grad-CAM")
         + html_note(
            "Red: where the predicted digit's score rises most (Grad-CAM on the last conv "
            "layer's activations; input-gradient saliency for a net without convolutions). "
            + _explain_hint(run_dir, data_rows))),
    ]  # fmt: skip


def _config_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """config.toml's settings as written, an lr left to the optimizer with the value it takes
    (else the table would say "lr none")."""
    rows = [(key, str(value)) for key, value in config.items()]
    if config.get("lr") == NONE and config.get("optimizer") in DEFAULT_LR:
        lr = f"{NONE}: {DEFAULT_LR[config['optimizer']]:g}, {config['optimizer']}'s default"
        rows[list(config).index("lr")] = ("lr", lr)
    return rows


def _explain_hint(run_dir: Path, data_rows: SourceRows | None) -> str:
    """How to explain an image shown: the command, with the file its caption's row is of."""
    if data_rows is None:  # images handed over in Python, from no file the report knows of
        return ("Each caption's row counts the images evaluated from 0; digits explain RUN_DIR "
                "CSV --index ROW explains row ROW of a CSV.")  # fmt: skip
    # Absolute: the page is read in a browser, and the command pasted into a shell in any
    # folder; paths as typed would work only from the folder the run was trained or reported in.
    paths = (run_dir.absolute(), data_rows.source.absolute())
    command = "digits explain " + " ".join(shlex.quote(str(path)) for path in paths)
    return (f"Each caption's row is the image's row of {data_rows.source}, counted from 0: "
            f"{command} --index ROW explains it.")  # fmt: skip


def _labelled_data(
    run_dir: Path,
    config: dict,
    data_csv: str | Path | None,
    predictor: Predictor,
    conform: bool,
) -> tuple[DigitSet, str, SourceRows, NDArray[np.float32]]:
    """The images to evaluate on, from ``data_csv`` or the rebuilt validation split, a
    description of where they came from, the rows of that file they are, and the predictor's
    probabilities of them (``data_csv``'s as ``digits evaluate`` reads them)."""
    if data_csv is not None:
        # Read as evaluate reads it: a file past STREAM_FILE_BYTES in pieces, never whole, and
        # other collections' layouts redone as MNIST's, piece by piece.
        n_rows, has_labels, pieces = read_in_pieces(data_csv)
        require_labels(has_labels, data_csv)
        conformer = PieceConformer(PredictConfig(conform=conform), predictor.layout_judge)
        data = concat_rows(list(conformer.conformed(pieces)))
        probas = conformer.reread(conformer.read(data.images, predictor.predict_proba(data.images)))
        conformer.warn(data_csv)
        return data, str(data_csv), SourceRows(Path(data_csv), np.arange(n_rows)), probas
    metrics = read_metrics(run_dir)
    train_csv, recorded_hash = metrics.get("train_csv"), metrics.get("train_sha256")
    valid_size = config.get("valid_size", 0)
    if not train_csv or not valid_size:
        raise DataError(
            f"{run_dir}: cannot rebuild the validation split (needs valid_size > 0 in "
            f"{CONFIG_FILE} and the training CSV named in {METRICS_FILE}); give --data LABELLED_CSV"
        )
    # The split is rebuilt from the very file trained on, or not at all: another file of that
    # name, or the same one changed, would give other images under the validation split's name.
    if not Path(train_csv).is_file() or recorded_hash is None:
        raise DataError(
            f"{run_dir}: the training data {train_csv} is not a CSV file here (gone, moved, or "
            "shards), so its validation split cannot be rebuilt; give --data LABELLED_CSV"
        )
    if sha256_file(train_csv) != recorded_hash:
        raise DataError(
            f"{train_csv}: changed since {run_dir} was trained on it (SHA-256 differs), so its "
            "validation split cannot be rebuilt; give --data LABELLED_CSV"
        )
    # Kaggle's train.csv (76 MB) is past STREAM_FILE_BYTES: parsed a piece at a time.
    full = read_all_rows(train_csv)
    _, valid_rows = stratified_split(full.labels, valid_size, config.get("seed", 0))
    source = (
        f"validation split of {train_csv} (valid_size {valid_size}, seed {config.get('seed', 0)})"
    )
    # Its rows as training read them (pipeline.ink_as_predicted): the ink row by row, the file
    # conformed as a whole where it is another collection's, judged by the net fine-tuned from.
    init_from = config.get("init_from", NONE)
    full = at_full_ink(full)
    conformed = conformed_for_training(full.images, train_csv,
                                       None if init_from == NONE else init_from)  # fmt: skip
    valid = DigitSet(conformed[valid_rows], full.labels[valid_rows])
    return (
        valid,
        source,
        SourceRows(Path(train_csv), valid_rows),
        predictor.predict_proba(valid.images),
    )


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
                    label="accuracy at the bin's mean confidence")  # fmt: skip
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
    model: nn.Module,
    data: DigitSet,
    probas: NDArray[np.floating],
    figures: Path,
    rows: NDArray[np.int64],
) -> None:
    """mistakes.png (most confident errors; none without any) and grad_cam.png (up to 8 right,
    then up to 8 of the most confident errors) in ``figures``, each image captioned with its
    row of ``rows`` (as `digits explain --index` takes it)."""
    predicted, confidence = probas.argmax(axis=1), probas.max(axis=1)
    wrong = np.flatnonzero(predicted != data.labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = np.flatnonzero(predicted == data.labels)
    right = np.random.default_rng(0).choice(right, size=min(8, len(right)), replace=False)

    def caption(i: int) -> str:
        return f"row {rows[i]}\ntrue {data.labels[i]} → {predicted[i]}\n{confidence[i]:.1%}"

    shown = wrong[:N_GALLERY]
    if len(wrong):  # none: the report says so, rather than draw a blank "0 of 0 mistakes" figure
        plot_gallery(data.images[shown], [caption(i) for i in shown], figures / "mistakes.png",
                      title=f"{len(shown)} of {len(wrong)} mistakes, most confident first "
                      "(row, true → predicted, confidence)")  # fmt: skip
    chosen = np.concatenate([right, wrong[:8]])
    # The captions' digit, as the predictor (bf16, TTA) chose it, not fp32's argmax again.
    heatmaps = grad_cam(model, data.images[chosen], target=predicted[chosen])
    # Counted: with fewer than 8 right, mistakes fill the first row too.
    title = f"Grad-CAM for the predicted digit: {len(right)} right"
    if len(chosen) > len(right):
        title += f", then the {len(chosen) - len(right)} most confident mistakes"
    plot_gallery(data.images[chosen], [caption(i) for i in chosen], figures / "grad_cam.png",
                 title=title, heatmaps=heatmaps)  # fmt: skip


# -- galleries ------------------------------------------------------------------------------------


def montage(tiles: NDArray, pad: int = 2, pad_value: float = 255) -> NDArray:
    """(rows, columns, 28, 28) tiles -> one (rows * 30, columns * 30) image with separators."""
    rows, columns, height, width = tiles.shape
    padded = np.full((rows, columns, height + pad, width + pad), pad_value, np.float32)
    padded[:, :, pad // 2 : pad // 2 + height, pad // 2 : pad // 2 + width] = tiles
    return padded.transpose(0, 2, 1, 3).reshape(rows * (height + pad), columns * (width + pad))


def plot_gallery(
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
    fig.suptitle(title, wrap=True)  # else a title wider than few columns is cut at both sides
    save_figure(fig, path)


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


def html_page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{html.escape(name)}</h2>\n{content}</section>"
                     for name, content in sections)  # fmt: skip
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1><p class="subtitle">{html.escape(subtitle)}</p>\n'
        f"{body}\n</body></html>\n"
    )
    # A path whose name is not UTF-8 holds its bytes as lone surrogates, which no UTF-8 page
    # can encode, and `digits eda` of such a file would end in a traceback. Shown as \udcff, as
    # the terminal's messages show them.
    return page.encode("utf-8", "backslashreplace").decode("utf-8")


def html_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row) + "</tr>"

    head = cells("th", header) if header else ""
    return f"<table>{head}{''.join(cells('td', row) for row in rows)}</table>"


def html_img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def html_columns(*blocks: str) -> str:
    """Blocks side by side, wrapping onto new lines on narrow screens."""
    return '<div class="columns">' + "".join(f"<div>{block}</div>" for block in blocks) + "</div>"


def html_note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'
