"""k-NN and SVM speed-ups against plain scikit-learn, measured in the same run, and each classical
model's replica accuracy with fit and predict seconds (via ``digit_recognizer.compare``).

Run: ``.venv/bin/python benchmarks/classical_speed.py`` (the replica of ``--seed`` in the cache,
as ``digits run`` keeps them), or ``--dir DIR`` to reuse or build one there; ``--svm-subset N``
sets the training images for the SVM pair (plain SVC on all 33,600 raw pixels takes many
minutes on 2 cores); ``--models knn,logreg`` measures only those classical models (a pair for
knn and svm alone), ``--rows N`` only the replica's first N rows.

Baselines are what a notebook does: ``KNeighborsClassifier()`` and ``SVC()`` with defaults on
raw pixels / 255. Ours are the registered ``knn`` and ``svm`` pipelines (deskew, PCA, ...).
Both sides fit on the same images and predict the same validation images (8,400 of the whole
replica: 0.2 of its rows, the split ``digits compare`` holds out).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from digit_recognizer.compare import compare, parse_model_names
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.replica import cached_replica, ready_replica
from digit_recognizer.data.shards import read_labelled
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import ConfigError, DigitsError
from digit_recognizer.evaluate import CLASSES
from digit_recognizer.models import available, build
from script import (  # run from benchmarks/: its folder is on the path
    count,
    flag_checks,
    mean_and_spread,
    replica_seed,
    run_script,
    times_faster,
)


def fit_predict_seconds(model, fit_set: DigitSet, X_fit, X_score, score_set: DigitSet):
    """(seconds for fit + predict, accuracy) of one model on prepared inputs."""
    start = time.perf_counter()
    predicted = model.fit(X_fit, fit_set.labels).predict(X_score)
    return time.perf_counter() - start, float((predicted == score_set.labels).mean())


WARM_UP = slice(0, 1000)  # the images of an untimed fit and predict
HELD_OUT = 0.2  # of the rows, scored: the split `digits compare` holds out by default


def warm_up(name: str, fit_set: DigitSet, score_set: DigitSet) -> None:
    """An untimed fit and predict of ``name``: the first fit pays one-time start-up (torch's
    threads and kernels, BLAS's), which had made our k-NN's single timed fit 2x its time in
    compare."""
    images, labels = fit_set.images[WARM_UP], fit_set.labels[WARM_UP]
    build(name).fit(images, labels).predict(score_set.images[WARM_UP])


def pair(name: str, baseline, fit_set: DigitSet, score_set: DigitSet, repeats: int) -> None:
    flat = [s.images.reshape(len(s), -1).astype(np.float32) / 255 for s in (fit_set, score_set)]
    warm_up(name, fit_set, score_set)  # and the baseline alike
    clone(baseline).fit(flat[0][WARM_UP], fit_set.labels[WARM_UP]).predict(flat[1][WARM_UP])
    ours = [fit_predict_seconds(build(name), fit_set, fit_set.images, score_set.images,
                                score_set) for _ in range(repeats)]  # fmt: skip
    theirs = [fit_predict_seconds(baseline, fit_set, *flat, score_set) for _ in range(repeats)]
    ours_s, theirs_s = np.array([s for s, _ in ours]), np.array([s for s, _ in theirs])
    print(
        f"{name:4s} fit {len(fit_set):,} + predict {len(score_set):,}: "
        f"scikit-learn defaults {mean_and_spread(theirs_s, 1)} s "
        f"(accuracy {theirs[0][1]:.4f}), ours {mean_and_spread(ours_s, 1)} s "
        f"(accuracy {ours[0][1]:.4f}): ours {times_faster(theirs_s.mean(), ours_s.mean())}"
    )


def classical_models(text: str) -> list[str]:
    """argparse's type for --models: names as `digits compare --models` takes and checks them,
    of classical models only (a net would train for its 15 epochs)."""
    try:
        names = parse_model_names(text)
    except DigitsError as error:  # argparse names the flag itself
        raise argparse.ArgumentTypeError(str(error).removeprefix("--models: ")) from None
    nets = [name for name in names if name not in available("classical")]
    if nets:
        raise argparse.ArgumentTypeError(f"{', '.join(nets)}: not a classical model; choose "
                                         f"from {','.join(available('classical'))}")  # fmt: skip
    return names


def check_rows(rows: int | None, svm_subset: int, models: list[str]) -> None:
    """``ConfigError`` where --rows or --svm-subset leave a model too few rows: the split holds
    out HELD_OUT of the rows, at least one of each digit, and a PCA of N components fits on N
    rows at least. The split's refusal had named compare's --valid-size, and a model's
    scikit-learn's traceback."""
    least_fit = {name: build(name).get_params().get("pca__n_components", 1) for name in models}
    if rows is not None:
        least = math.ceil(max(len(CLASSES) / HELD_OUT,
                              *(n / (1 - HELD_OUT) for n in least_fit.values())))  # fmt: skip
        if rows < least:
            raise ConfigError(f"--rows {rows}: too few to hold out {HELD_OUT} of them, a row of "
                              f"each digit at least, and fit {','.join(models)} on the rest; "
                              f"give --rows {least} or more")  # fmt: skip
    if "svm" in models and svm_subset < least_fit["svm"]:
        raise ConfigError(f"--svm-subset {svm_subset}: svm's PCA keeps {least_fit['svm']} "
                          f"features, which takes as many rows; give --svm-subset "
                          f"{least_fit['svm']} or more")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="replica folder (default: the cache's)")
    parser.add_argument("--seed", type=replica_seed, default=7, help="replica seed")
    parser.add_argument("--models", type=classical_models, default=available("classical"),
                        help="comma-separated classical models (default: all)")  # fmt: skip
    parser.add_argument("--rows", type=count, help="the replica's first N rows (default: all)")
    parser.add_argument("--svm-subset", type=count, default=10_000, help="SVM training images")
    parser.add_argument("--repeats", type=count, default=1)
    args = parser.parse_args()
    with flag_checks(parser):
        check_rows(args.rows, args.svm_subset, args.models)
    files = ready_replica(args.dir, args.seed) if args.dir else cached_replica(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        train_csv, data = files.train, read_labelled(files.train)
        if args.rows is not None and args.rows < len(data):
            # A CSV of its own: compare reads one, and holds out the split the pairs score on.
            data = data.take(slice(0, args.rows))
            train_csv = Path(scratch) / "train.csv"
            write_kaggle_csv(train_csv, data.images, data.labels)
        fit_set, score_set = split_for_training(data, HELD_OUT, 0)
        if "knn" in args.models:
            pair("knn", KNeighborsClassifier(), fit_set, score_set, args.repeats)
        if "svm" in args.models:
            subset = fit_set.take(slice(0, args.svm_subset))
            pair("svm", SVC(), subset, score_set, args.repeats)
        if not {"knn", "svm"} & set(args.models):  # no pair has paid the start-up
            warm_up(args.models[0], fit_set, score_set)
        board = compare(train_csv, args.models, Path(scratch) / "compare")
    print(f"\nclassical models, fit on {len(fit_set):,} rows, scored on {len(score_set):,} "
          f"({HELD_OUT} of {len(data):,} replica rows):")  # fmt: skip
    print(",".join(board.columns))
    for cells in board.printed_rows():
        print(",".join(cells))


if __name__ == "__main__":
    run_script(main)
