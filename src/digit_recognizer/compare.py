"""Side-by-side comparison of registered models on one labelled CSV: accuracy, macro F1, fit and
predict seconds, learned parameters; a leaderboard CSV and a chart of accuracy against time.

    digits compare --train train.csv --valid-size 0.2 --models logreg,knn,svm,random-forest,mlp \
        --out runs/compare
    digits compare --train train.csv --models knn,svm --cv 5 --out runs/compare-cv   # K-fold
"""

from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.model_selection import StratifiedKFold

from digit_recognizer.checkpoint import rows_fingerprint
from digit_recognizer.data.kaggle_csv import DigitSet, count_classes
from digit_recognizer.data.shards import read_labelled
from digit_recognizer.data.splits import (
    check_seed,
    split_for_training,
    warn_missing_digits,
    warn_shared_images,
)
from digit_recognizer.errors import ConfigError, DataError, UnknownModelError, first_line
from digit_recognizer.estimator import build_estimator, count_parameters
from digit_recognizer.evaluate import CLASSES, compute_metrics, draw_figure
from digit_recognizer.fileio import (
    LEFTOVER_AGE_S,
    check_can_write,
    make_dir,
    remove_leftovers,
    source_record,
    write_together,
)
from digit_recognizer.logs import hushed
from digit_recognizer.models.registry import get_spec

log = logging.getLogger(__name__)

LEADERBOARD_FILE = "leaderboard.csv"
CHART_FILE = "leaderboard.png"
SETTINGS_FILE = "compare.json"  # what produced the leaderboard: data, settings, versions
DEFAULT_VALID_SIZE = 0.2  # without --test or --cv: 8,400 of Kaggle's rows score each model
SCORES = ("accuracy", "macro_f1", "fit_seconds", "predict_seconds")


@dataclass
class Leaderboard:
    """Rows sorted by accuracy, best first; ``columns`` as in leaderboard.csv."""

    columns: list[str]
    rows: list[dict[str, float | int | str]]
    csv_path: Path
    chart_path: Path
    n_folds: int

    def printed_rows(self) -> list[list[str]]:
        """Each row's cells, in ``columns`` order, as `digits compare` prints them: seconds to
        2 decimals, accuracy and macro F1 (and their spreads) to 4 (leaderboard.csv keeps 6
        significant digits)."""
        return [[f"{row[column]:.{2 if 'seconds' in column else 4}f}"
                 if isinstance(row[column], float) else str(row[column])
                 for column in self.columns] for row in self.rows]  # fmt: skip


def parse_model_names(text: str) -> list[str]:
    """``--models``' comma-separated names (blanks around them and empty ones dropped), checked
    by ``check_model_names``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    check_model_names(names)
    return names


def check_model_names(models: list[str]) -> None:
    """Refuse no model, an unknown one (``UnknownModelError``) or one named twice, before any
    training."""
    if not models:
        raise ConfigError("no model to compare: give --models, e.g. logreg,knn,cnn")
    for name in models:
        try:
            get_spec(name)
        except UnknownModelError as error:  # named as train names its --model
            raise UnknownModelError(f"--models: {error}") from None
    if len(set(models)) < len(models):  # two rows, and two bars on one label of the chart
        twice = sorted({name for name in models if models.count(name) > 1})
        raise ConfigError(f"--models names {', '.join(twice)} more than once")


def compare(
    train_csv: Path,
    models: list[str],
    out_dir: Path,
    test_csv: Path | None = None,
    valid_size: float | None = None,
    cv: int | None = None,
    seed: int = 0,
    epochs: int | None = None,
    resume: bool = False,
) -> Leaderboard:
    """Fit each model with its defaults (nets: ``TrainConfig``'s, trained ``epochs`` if given)
    and score it on held-out labelled images.

    Held out: ``test_csv`` if given, else stratified ``cv`` folds if given, else a stratified
    ``valid_size`` split (default 0.2; refused with the other two), drawn with ``seed``, which
    also seeds the models that draw at random (nets, the random forest, the SVM's calibration
    holdout). Writes ``out_dir/leaderboard.csv`` with columns
    ``model,accuracy,macro_f1,fit_seconds,predict_seconds,parameters`` (with ``cv``: a ``_mean``
    and a ``_std`` column for each score, and the parameters the folds' models agree on, else
    each count with its number of folds), ``out_dir/leaderboard.png``, and
    ``out_dir/compare.json``: the data (paths, SHA-256, a fingerprint of the rows read), the
    settings and the library versions. All three are written as each model is scored,
    ``compare.json``'s ``scored`` naming the models in them: Ctrl-C or a later model's failure
    keeps the scores before it, and ``resume`` keeps them and fits only the others, where
    ``compare.json`` shows the same data and settings.
    """
    check_model_names(models)
    if cv is not None and cv < 2:
        raise ConfigError(f"--cv must be at least 2 folds, got {cv}")
    if cv is not None and test_csv is not None:
        raise ConfigError("--cv folds the training CSV and --test scores on another: give one")
    if valid_size is not None and (test_csv is not None or cv is not None):
        # Else ignored: the scores would come from another hold-out than the one asked for.
        raise ConfigError(f"--valid-size holds out part of --train, and "
                          f"{'--test' if test_csv is not None else '--cv'} scores instead: give "
                          "one")  # fmt: skip
    valid_size = DEFAULT_VALID_SIZE if valid_size is None else valid_size
    if not 0 < valid_size < 1:
        raise ConfigError(f"--valid-size must be in (0, 1), got {valid_size}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    check_seed(seed, "--seed")
    # Before the fitting, whose work a bad --out would lose.
    out_dir = make_dir(out_dir)
    for name in (LEADERBOARD_FILE, CHART_FILE, SETTINGS_FILE):
        check_can_write(out_dir / name)
    # What a write killed outright left (a chart's 30 kB), as tune's --out has it removed: old
    # enough that no compare on another machine sharing --out is still writing it.
    remove_leftovers(out_dir, min_age_s=LEFTOVER_AGE_S)
    data = read_labelled(train_csv, to_split=test_csv is None)
    folds = list(_folds(data, test_csv, valid_size, cv, seed))
    warn_shared_images(*folds[0], str(test_csv or f"{train_csv}'s held-out rows"))
    _warn_missing_digits(folds, train_csv)
    columns = ["model", *(f"{s}_{stat}" for s in SCORES for stat in ("mean", "std"))] if cv else [
        "model", *SCORES]  # fmt: skip
    columns.append("parameters")
    split = {"valid_size": None if test_csv or cv else valid_size, "cv": cv, "seed": seed,
             "epochs": epochs}  # fmt: skip
    # The rows read, not only the files' hashes: a shard folder's or a glob's rows change
    # under the same path, and --resume would keep scores of other rows.
    fingerprints = {"train_rows": rows_fingerprint(data),
                    "test_rows": rows_fingerprint(folds[0][1]) if test_csv else None}  # fmt: skip
    settings = {"models": models, **split, **source_record("train", train_csv),
                **source_record("test", test_csv), **fingerprints,
                "versions": _versions()}  # fmt: skip
    rows = _scored_before(out_dir / SETTINGS_FILE, settings, columns) if resume else []
    rows = [row for row in rows if row["model"] in models]
    if rows:
        log.info("--resume: %s scored before, not fitted again",
                 ", ".join(str(row["model"]) for row in rows))  # fmt: skip
    board = Leaderboard(columns, rows, out_dir / LEADERBOARD_FILE, out_dir / CHART_FILE,
                        len(folds))  # fmt: skip
    to_fit = [name for name in models if name not in {row["model"] for row in rows}]
    if not to_fit:  # each one resumed: the files show the models asked now
        _write(board, settings)
    for name in to_fit:
        try:
            rows.append(_score_model(name, folds, cv is not None, seed, epochs))
        except KeyboardInterrupt:
            if rows:
                log.warning("%s keeps the %d model%s scored before the interruption "
                            "(--resume fits the others)", board.csv_path, len(rows),
                            "s" * (len(rows) > 1))  # fmt: skip
            raise
        # Written as each model is scored: Ctrl-C, a kill or the next model's failure keeps
        # the scores before it, and compare.json says which models they are.
        _write(board, settings)
    return board


def _write(board: Leaderboard, settings: dict[str, object]) -> None:
    board.rows.sort(key=lambda row: -float(row.get("accuracy", row.get("accuracy_mean", 0))))
    scored = {"scored": [str(row["model"]) for row in board.rows], "scores": board.rows}
    record = json.dumps(settings | scored, indent=2)
    # Together, else a full disk at the chart leaves a new leaderboard.csv beside older others.
    write_together([
        (board.csv_path, lambda file: write_leaderboard(board, file)),
        (board.chart_path, lambda file: draw_figure(leaderboard_figure(board), file, "png")),
        (board.csv_path.with_name(SETTINGS_FILE),
         lambda file: file.write_text(record, encoding="utf-8")),
    ])  # fmt: skip


def _scored_before(
    path: Path, settings: dict[str, object], columns: list[str]
) -> list[dict[str, float | int | str]]:
    """The rows an earlier call scored (``compare.json``'s ``scores``, of ``columns``), where it
    had the same data, settings and library versions as this one: those models need no fitting
    again."""
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []  # nothing scored yet: --resume starts
    except (OSError, ValueError) as error:
        raise ConfigError(f"--resume: cannot read {path} ({first_line(error)}); "
                          "drop --resume to fit every model") from None  # fmt: skip
    if not isinstance(before, dict):  # JSON, yet no record of compare's (else AttributeError)
        raise ConfigError(f"--resume: {path} is not the record compare writes (a JSON "
                          "object); drop --resume to fit every model")  # fmt: skip
    now = json.loads(json.dumps(settings))  # as it would read back
    differing = [key for key in now if key != "models" and before.get(key) != now[key]]
    if differing:
        raise ConfigError(f"--resume: {path} was written for other {', '.join(differing)}; "
                          "drop --resume to fit every model again")  # fmt: skip
    scores = before.get("scores", [])
    if not isinstance(scores, list) or not all(_is_row(row, columns) for row in scores):
        raise ConfigError(f"--resume: {path}'s scores are not rows of {', '.join(columns)} as "
                          "compare writes them; drop --resume to fit every model")  # fmt: skip
    return scores


def _is_row(row: object, columns: list[str]) -> bool:
    """Whether ``row`` is a leaderboard row of ``columns``: a model's name, numbers, then its
    parameters (a count, or the folds' counts described)."""
    return (isinstance(row, dict) and list(row) == columns and isinstance(row["model"], str)
            and all(isinstance(row[column], int | float) for column in columns[1:-1])
            and isinstance(row["parameters"], int | str))  # fmt: skip


def _versions() -> dict[str, str]:
    import sklearn
    import torch

    from digit_recognizer import __version__

    return {"digit-recognizer": __version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__}  # fmt: skip


def _folds(
    data: DigitSet, test_csv: Path | None, valid_size: float, cv: int | None, seed: int
) -> Iterator[tuple[DigitSet, DigitSet]]:
    """(fit set, scoring set) pairs."""
    if test_csv is not None:
        yield data, read_labelled(test_csv)
    elif cv is not None:
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        try:
            with warnings.catch_warnings():
                # A digit with fewer rows than folds: _warn_missing_digits says so, naming the
                # CSV, where scikit-learn's own ("The least populated class in y ...") comes too.
                warnings.filterwarnings(
                    "ignore", "The least populated class in y has only", UserWarning
                )
                folds = list(splitter.split(data.images, data.labels))
        except ValueError as error:  # more folds than a digit has rows
            reason = first_line(error).rstrip(".")
            raise ConfigError(f"--cv {cv}: {reason}; give fewer folds") from None
        for fit_indices, score_indices in folds:
            yield data.take(fit_indices), data.take(score_indices)
    else:
        try:
            fit_set, score_set = split_for_training(data, valid_size, seed)
        except ConfigError:  # its remedy, --valid-size 0, leaves compare nothing to score on
            raise ConfigError(f"{len(data):,} labelled rows are too few, or a digit among them "
                              f"too rare, to hold out --valid-size {valid_size} of them by "
                              "digit; give more rows, another --valid-size, or --test"
                              ) from None  # fmt: skip
        yield fit_set, score_set


def _warn_missing_digits(folds: list[tuple[DigitSet, DigitSet]], train_csv: Path) -> None:
    """Warn once, naming ``train_csv``, where the rows fitted lack digits: in every fold, or
    in some of them (a digit with fewer rows than --cv folds). Every model, classical or net,
    fits the same rows, and a net's own warning, unnamed, would come once per net and fold."""
    counts = np.array([count_classes(fit_set.labels) for fit_set, _ in folds])  # fold x digit
    fewest = counts.min(axis=0)
    is_lacking_everywhere = np.array_equal(fewest == 0, counts.max(axis=0) == 0)
    where = "" if is_lacking_everywhere else f" in some of the {len(folds)} folds"
    warn_missing_digits(fewest.tolist(), f"{train_csv}: its rows fitted{where}")


def _score_model(
    name: str,
    folds: list[tuple[DigitSet, DigitSet]],
    has_cv: bool,
    seed: int,
    epochs: int | None,
) -> dict[str, float | int | str]:
    scores: dict[str, list[float]] = {score: [] for score in SCORES}
    n_parameters: list[int] = []
    # A net fits on all the fit rows, as the classical models do: its own validation split
    # would hold 5 % of them out for nothing (one-cycle keeps the last epoch, chosen by none).
    trains: dict[str, int] = {}
    if get_spec(name).kind == "net":
        trains = {"valid_size": 0} | ({} if epochs is None else {"epochs": epochs})
    for fold, (fit_set, score_set) in enumerate(folds, start=1):
        estimator = build_estimator(name, seed=seed, **trains)
        start = time.perf_counter()
        try:
            # Said once for the command, naming the file (_warn_missing_digits).
            with hushed(warn_missing_digits.__module__):
                estimator.fit(fit_set.images, fit_set.labels)
        except ValueError as error:  # 40 PCA components of 14 rows
            raise DataError(f"{name}: cannot be fitted on these {len(fit_set):,} rows "
                            f"({first_line(error)}); give more rows, or leave {name} out of "
                            "--models (--resume keeps the models scored before it)"
                            ) from error  # fmt: skip
        fit_seconds = time.perf_counter() - start
        # A pipeline fitted without some digit has no column for it: it gets probability 0.
        probas = np.zeros((len(score_set), len(CLASSES)), np.float32)
        probas[:, estimator.classes_] = estimator.predict_proba(score_set.images)
        predict_seconds = time.perf_counter() - start - fit_seconds
        metrics = compute_metrics(score_set.labels, probas)
        for score, value in zip(SCORES, (metrics.accuracy, metrics.macro_f1, fit_seconds,
                                         predict_seconds), strict=True):  # fmt: skip
            scores[score].append(value)
        n_parameters.append(count_parameters(estimator))
        log.info("%s fold %d/%d: accuracy %.4f, fit %.1f s, predict %.1f s", name, fold,
                 len(folds), metrics.accuracy, fit_seconds, predict_seconds)  # fmt: skip
    row: dict[str, float | int | str] = {"model": name}
    for score, values in scores.items():
        if has_cv:
            row[f"{score}_mean"], row[f"{score}_std"] = np.mean(values), np.std(values)
        else:
            row[score] = values[0]
    row["parameters"] = _describe_counts(n_parameters)
    return row


def _describe_counts(n_parameters: list[int]) -> int | str:
    """Each fold's parameter count: the count where all agree, else each count with its folds
    (k-NN stores its fold's rows, a forest grows its own trees), "73274 (1 fold); 73290 (2
    folds)"."""
    counts = Counter(n_parameters)
    if len(counts) == 1:
        return n_parameters[0]
    return "; ".join(f"{value} ({n_folds} fold{'s' * (n_folds > 1)})"
                     for value, n_folds in sorted(counts.items()))  # fmt: skip


def write_leaderboard(board: Leaderboard, file: Path) -> None:
    """Write ``board``'s rows to ``file`` as it is (``_write`` gives atomic_path's)."""
    with open(file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=board.columns, lineterminator="\n")
        writer.writeheader()
        for row in board.rows:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value
                             for key, value in row.items()})  # fmt: skip


def leaderboard_figure(board: Leaderboard) -> Figure:
    """Two bar panels sharing the model axis: accuracy, and fit + predict seconds (log)."""
    suffix = "_mean" if board.n_folds > 1 and "accuracy_mean" in board.columns else ""
    names = [str(row["model"]) for row in board.rows][::-1]  # best on top
    accuracy = [float(row[f"accuracy{suffix}"]) for row in board.rows][::-1]
    seconds = [float(row[f"fit_seconds{suffix}"]) + float(row[f"predict_seconds{suffix}"])
               for row in board.rows][::-1]  # fmt: skip
    fig = Figure(figsize=(10, 0.5 * len(names) + 1.6))
    ax_accuracy, ax_time = fig.subplots(1, 2, sharey=True)
    bars = ax_accuracy.barh(names, accuracy, color="tab:blue")
    ax_accuracy.bar_label(bars, fmt="%.4f", padding=3, fontsize=8)
    low = min(accuracy)
    margin = max(1 - low, 0.01)  # every model at 1.0 would leave no width at all
    ax_accuracy.set(xlim=(max(0.0, low - margin), 1.0), xlabel="accuracy (held out)")
    bars = ax_time.barh(names, seconds, color="tab:orange")
    ax_time.bar_label(bars, fmt="%.1f s", padding=3, fontsize=8)
    ax_time.set(xscale="log", xlabel="fit + predict seconds (log scale)")
    fig.suptitle(f"digits compare ({board.n_folds} fold{'s' if board.n_folds > 1 else ''})")
    return fig
