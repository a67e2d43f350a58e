"""Evaluation: accuracy, per-class precision/recall/F1, ROC-AUC and confusion matrix
(scikit-learn), their plots, learning curves, and scoring a submission against a solution.

    digits evaluate runs/cnn labelled.csv
    digits score solution.csv submission.csv
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics as skm

from digit_recognizer.data.images import check_labels
from digit_recognizer.data.kaggle_csv import read_submission
from digit_recognizer.data.mnist import MNIST_TRAIN_ROWS, load_mnist
from digit_recognizer.data.shards import require_labels
from digit_recognizer.data.splits import missing_digits
from digit_recognizer.data.stream import read_in_pieces
from digit_recognizer.errors import DataError, ModelFileError, OutputError
from digit_recognizer.fileio import (
    atomic_path,
    check_can_write,
    sha256_file,
    write_text,
    write_together,
)
from digit_recognizer.models.storage import expand_ensembles, read_meta
from digit_recognizer.predict import (
    PieceConformer,
    PredictConfig,
    Predictor,
    check_data_source,
)

log = logging.getLogger(__name__)

CLASSES = list(range(10))
METRICS_FILE = "metrics.json"  # a run's figures: training, validation, and the test score
REPLAYED_KEY = "replayed_mnist_training_images"  # metrics.json's: fine-tuned with MNIST's mixed in
# What `digits evaluate` writes, beside the run's own files and never over them.
EVAL_FILES = ("eval_metrics.json", "eval_per_class.csv", "eval_confusion_matrix.png")


def read_metrics(run_dir: Path) -> dict:
    """The run's metrics.json, {} where it has none yet."""
    path = run_dir / METRICS_FILE
    try:
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    # ValueError: also a 5,000-digit number (Python's int limit); RecursionError: deep nesting.
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error!s:.200})") from None
    if not isinstance(metrics, dict):
        raise ModelFileError(f"{path}: not a run's metrics (a JSON object); delete it")
    return metrics


def write_metrics(run_dir: Path, updates: dict, merge: bool = True) -> None:
    """Merge ``updates`` into the run's metrics.json (later stages add their figures), or with
    ``merge=False`` write them as all of it."""
    metrics = read_metrics(run_dir) if merge else {}
    write_text(run_dir / METRICS_FILE, json.dumps(metrics | updates, indent=2) + "\n")


@dataclass
class Metrics:
    """Scores of predictions against true labels; ``per_class`` rows are for digits 0-9."""

    n_samples: int
    accuracy: float
    macro_f1: float  # over the digits in the labels or the predictions
    roc_auc_ovr: float | None  # None when a class is absent from the labels
    per_class: list[dict[str, float]]  # digit, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true digit, columns: predicted digit

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def compute_metrics(labels: ArrayLike, probas: NDArray[np.floating]) -> Metrics:
    """Metrics for true ``labels`` (N,), digits 0-9, and predicted probabilities ``probas``
    (N, 10)."""
    probas = np.asarray(probas)
    if probas.ndim != 2 or probas.shape[1] != len(CLASSES):
        raise ValueError(f"probas must be of shape (n_samples, 10), got {probas.shape}: "
                         "pass predict_proba's output, not predicted labels")  # fmt: skip
    # Checked, as they index the per-class scores below: float labels (np.loadtxt's) would fail
    # there, and a -1 would be read as a 9 in the macro F1 and left out of the confusion matrix.
    labels = check_labels(labels, len(probas), "labels")
    predicted = probas.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=CLASSES, zero_division=0
    )
    per_class = [
        {"digit": d, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for d, p, r, f, s in zip(CLASSES, precision, recall, f1, support, strict=True)
    ]
    has_every_class = len(np.unique(labels)) == len(CLASSES)
    roc_auc = (
        float(skm.roc_auc_score(labels, probas, multi_class="ovr", labels=CLASSES))
        if has_every_class
        else None
    )
    # Over the digits present (labelled or predicted), as scikit-learn's default: a digit the
    # data lacks and nothing was called would count as an F1 of 0 (all 9s removed: 0.90).
    present = np.union1d(labels, predicted)
    return Metrics(
        n_samples=len(labels),
        accuracy=float(skm.accuracy_score(labels, predicted)),
        macro_f1=float(f1[present].mean()),
        roc_auc_ovr=roc_auc,
        per_class=per_class,
        confusion=skm.confusion_matrix(labels, predicted, labels=CLASSES).tolist(),
    )


def per_class_cells(metrics: Metrics) -> list[tuple[str, str, str, str, str]]:
    """The per-class rows as shown (the report's table, `digits evaluate`'s): digit, precision,
    recall, F1 and support, with "n/a" for a score of no images: the precision of a digit never
    predicted, the recall of one not among the labels, the F1 of one neither. The figures keep
    scikit-learn's 0 for those, which shown read as a digit read wrong every time (the 5-9 of a
    run trained on 0-4), where the macro F1 leaves such a digit out."""
    n_predicted = np.asarray(metrics.confusion).sum(axis=0)

    def shown(score: float, has_images: bool) -> str:
        return f"{score:.4f}" if has_images else "n/a"

    return [(str(row["digit"]), shown(row["precision"], n_predicted[row["digit"]] > 0),
             shown(row["recall"], row["support"] > 0),
             shown(row["f1"], n_predicted[row["digit"]] + row["support"] > 0),
             f"{row['support']:.0f}") for row in metrics.per_class]  # fmt: skip


def plot_confusion_matrix(confusion: list[list[int]], path: Path) -> None:
    save_figure(confusion_figure(confusion), path)


def confusion_figure(confusion: list[list[int]]) -> Figure:
    matrix = np.asarray(confusion)
    # Figure, not pyplot: no GUI backend and no global state, so plotting is safe on servers.
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    # Log colour scale: on a good model the diagonal dwarfs the errors, which are the interest.
    image = ax.imshow(matrix + 1, cmap="Blues", norm=LogNorm())
    for true, pred in np.ndindex(matrix.shape):
        if matrix[true, pred]:
            colour = "white" if true == pred else "black"
            ax.text(pred, true, str(matrix[true, pred]), ha="center", va="center", fontsize=7,
                    color=colour)  # fmt: skip
    ax.set(xticks=CLASSES, yticks=CLASSES, xlabel="predicted digit", ylabel="true digit")
    ax.set_title(f"Confusion matrix ({matrix.sum():,} images, {np.trace(matrix):,} correct)")
    fig.colorbar(image, ax=ax, label="images + 1 (log scale)")
    return fig


def plot_learning_curves(
    history: list[dict[str, float]], path: Path, label_smoothing: float = 0.0
) -> None:
    """Loss, accuracy and learning rate per epoch, train and validation. The train loss is the
    one trained on, with ``label_smoothing``, whose floor is above 0 (0.5 for 0.1): its legend
    says so, as it lies above the validation loss (plain cross-entropy) for that alone."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    smoothed = f", label smoothing {label_smoothing:g}" if label_smoothing else ""
    for ax, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
        train_label = f"train (augmented{smoothed if metric == 'loss' else ''})"
        ax.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label=train_label)
        if "valid_" + metric in history[0]:
            ax.plot(epochs, [row[f"valid_{metric}"] for row in history], "o-", label="validation")
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [row["lr"] for row in history], "o-", color="tab:green")
    axes[2].set(xlabel="epoch", title="learning rate (end of epoch)")
    axes[2].grid(alpha=0.3)
    save_figure(fig, path)


def figure_kind(path: Path) -> str:
    """The format ``path``'s suffix names (.png, .svg, .pdf, ...; PNG without), or OutputError
    for one matplotlib cannot draw: a command may check it before the work its figure shows."""
    kind = Path(path).suffix.lower().lstrip(".") or "png"
    if kind not in FigureCanvasBase.get_supported_filetypes():
        raise OutputError(f"{path}: cannot draw a figure as .{kind}; name a .png, .svg or .pdf")
    return kind


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` in the format its file's suffix names (.png, .svg, .pdf, ...; PNG without)."""
    kind = figure_kind(path)
    with atomic_path(path) as tmp:
        draw_figure(fig, tmp, kind)


def draw_figure(fig: Figure, file: Path, kind: str) -> None:
    """Draw ``fig`` into ``file`` as ``kind`` (png, svg, pdf, ...), laid out as every figure is."""
    fig.tight_layout()
    fig.savefig(file, dpi=110, format=kind)


def write_per_class_csv(metrics: Metrics, file: Path) -> None:
    """Write the per-class scores to ``file`` as it is (``evaluate_run`` gives atomic_path's)."""
    with open(file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(metrics.per_class[0]))
        writer.writeheader()
        writer.writerows(metrics.per_class)


def evaluate_run(
    run_dirs: list[Path],
    labelled_csv: Path,
    out_dir: Path,
    config: PredictConfig | None = None,
    solution_csv: Path | None = None,
) -> Metrics:
    """Predict ``labelled_csv`` with the run(s); write the scores, per-class CSV and confusion
    matrix (EVAL_FILES) to ``out_dir``. With ``solution_csv`` (ImageId,Label, as a replica's
    solution.csv) the rows are unlabelled and take their labels from it, in ImageId order.
    Rows are read as `digits predict` reads them: a CSV larger than STREAM_FILE_BYTES, shards
    and globs streamed (``read_in_pieces``)."""
    labelled_csv, out_dir = Path(labelled_csv), Path(out_dir)
    check_data_source(labelled_csv)  # first: arguments swapped are said as such
    # Before the predictions, which an --out that cannot take the files would lose.
    scores, per_class, confusion = (check_can_write(out_dir / name) for name in EVAL_FILES)
    warn_if_trained_on(run_dirs, labelled_csv)
    n_rows, has_labels, pieces = read_in_pieces(labelled_csv)
    solution_labels = None
    if solution_csv is None:
        solution = ", or their labels with --solution (ImageId,Label: a replica's solution.csv)"
        require_labels(has_labels, labelled_csv, solution)
    elif has_labels:
        raise DataError(f"{labelled_csv}: has a label column of its own; give it without "
                        f"--solution, or its images alone with {solution_csv}")  # fmt: skip
    else:
        solution_labels = read_submission(solution_csv, expected_rows=n_rows)
    config = config or PredictConfig()
    predictor = Predictor.load(run_dirs, config)
    conformer = PieceConformer(config, predictor.layout_judge)
    probas, piece_labels = [], []
    replayed = replayed_runs(run_dirs)
    n_replayed_rows = 0
    for piece in conformer.conformed(pieces):
        probas.append(conformer.read(piece.images, predictor.predict_proba(piece.images)))
        piece_labels.append(piece.labels)
        n_replayed_rows += count_mnist_training_images(piece.images) if replayed else 0
    all_probas = conformer.reread(np.concatenate(probas))
    conformer.warn(labelled_csv)
    if n_replayed_rows:
        log.warning("%s: %s of its rows are MNIST training images, which %s was shown when "
                    "fine-tuned (its replay): its score on them is not an honest one (a Kaggle "
                    "replica's test rows are MNIST's); --replay 0 fine-tunes without them",
                    labelled_csv, f"{n_replayed_rows:,}", replayed[0])  # fmt: skip
    labels = np.concatenate(piece_labels) if solution_labels is None else solution_labels
    metrics = compute_metrics(labels, all_probas)
    warn_untrained_digits(run_dirs, metrics, labelled_csv)
    # Together, else a full disk at the matrix leaves a new eval_metrics.json beside older others.
    write_together([
        (scores, lambda file: file.write_text(metrics.to_json(), encoding="utf-8")),
        (per_class, lambda file: write_per_class_csv(metrics, file)),
        (confusion, lambda file: draw_figure(confusion_figure(metrics.confusion), file, "png")),
    ])  # fmt: skip
    return metrics


def untrained_digits(run_dirs: list[Path], metrics: Metrics) -> list[int]:
    """The digits among ``metrics``' labels that none of the runs (an ensemble's members) trained
    on, by the counts model.json records (``train_class_counts``); [] where a run does not say
    (trained before they were recorded, a classical model): nothing is known of its digits."""
    totals = np.zeros(len(CLASSES), np.int64)
    for run_dir in expand_ensembles(run_dirs):
        counts = read_meta(run_dir).get("train_class_counts")
        is_counts = isinstance(counts, list) and len(counts) == len(CLASSES)
        if not is_counts or not all(isinstance(n, int) and n >= 0 for n in counts):
            return []
        totals += counts
    never_trained = set(missing_digits(totals.tolist()))
    return [row["digit"] for row in metrics.per_class
            if row["support"] and row["digit"] in never_trained]  # fmt: skip


def warn_untrained_digits(run_dirs: list[Path], metrics: Metrics, source: str | Path) -> None:
    """Warn where ``source``'s labels hold digits the model never trained on: every such image
    is read as another digit, which a low accuracy alone does not tell."""
    if untrained := untrained_digits(run_dirs, metrics):
        support = sum(metrics.per_class[digit]["support"] for digit in untrained)
        log.warning("%s: %s of its images are of %s, which the model never trained on "
                    "(model.json's train_class_counts): it reads each as another digit, and its "
                    "accuracy counts them wrong; train on rows of every digit scored",
                    source, f"{support:,}", ", ".join(map(str, untrained)))  # fmt: skip


def warn_if_trained_on(run_dirs: list[Path], labelled_csv: Path) -> None:
    """Warn where ``labelled_csv`` is the very file a run trained on (metrics.json's SHA-256):
    its score says how well the run fits what it saw, not how it reads digits it has not."""
    recorded = {}
    for run_dir, metrics in _runs_metrics(run_dirs):
        # The first to record it named: the directory given rather than its members.
        recorded.setdefault(metrics.get("train_sha256"), run_dir)
    recorded.pop(None, None)
    if recorded and labelled_csv.is_file() and (digest := sha256_file(labelled_csv)) in recorded:
        log.warning("%s is the file %s trained on: this scores images it learned from (and its "
                    "validation split), not new ones", labelled_csv, recorded[digest])  # fmt: skip


def replayed_runs(run_dirs: list[Path]) -> list[Path]:
    """The runs, an ensemble's members among them, fine-tuned with MNIST's training images
    replayed (metrics.json's ``REPLAYED_KEY``)."""
    return [run_dir for run_dir, metrics in _runs_metrics(run_dirs) if metrics.get(REPLAYED_KEY)]


def _runs_metrics(run_dirs: list[Path]) -> list[tuple[Path, dict]]:
    """Each run's metrics.json, the directories given first, then their ensembles' members (an
    ensemble put together by hand records no training of its own: its members do). A damaged
    file is left out: the warnings that read them neither warn nor stop of it."""
    with contextlib.suppress(ModelFileError):  # a damaged ensemble.json: Predictor.load says so
        run_dirs = [*run_dirs, *expand_ensembles(run_dirs)]
    found = []
    for run_dir in run_dirs:
        with contextlib.suppress(ModelFileError):
            found.append((Path(run_dir), read_metrics(Path(run_dir))))
    return found


@functools.cache
def _mnist_training_keys() -> frozenset[int]:
    return frozenset(hash(image.tobytes()) for image in load_mnist().images[:MNIST_TRAIN_ROWS])


def count_mnist_training_images(images: NDArray[np.uint8]) -> int:
    """How many of ``images`` (N, 28, 28) are, pixel for pixel, among MNIST's 60,000 training
    images (by hash: ~0.4 s for the set, once)."""
    keys = _mnist_training_keys()
    return sum(hash(image.tobytes()) in keys for image in np.asarray(images, np.uint8))


def score_submission(solution_csv: Path, submission_csv: Path) -> float:
    """Kaggle's metric: the fraction of ImageIds whose predicted label matches the solution."""
    truth = read_submission(solution_csv)
    predicted = read_submission(submission_csv, expected_rows=len(truth))
    return float((truth == predicted).mean())
