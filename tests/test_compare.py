import csv

import pytest

from digit_recognizer.compare import compare
from digit_recognizer.errors import ConfigError, UnknownModelError


def test_leaderboard_has_one_row_per_model_and_the_documented_columns(tmp_path, small_csvs):
    compare(small_csvs["train"], ["knn", "logreg"], tmp_path, valid_size=0.2)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "accuracy", "macro_f1", "fit_seconds", "predict_seconds",
                             "parameters"]  # fmt: skip
    assert sorted(row["model"] for row in rows) == ["knn", "logreg"]
    assert all(float(row["accuracy"]) > 0.8 for row in rows)
    accuracies = [float(row["accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    assert (tmp_path / "leaderboard.png").stat().st_size > 1000


def test_cross_validation_reports_mean_and_std(tmp_path, small_csvs):
    board = compare(small_csvs["train"], ["knn"], tmp_path, cv=2)
    assert board.n_folds == 2
    assert board.columns[:3] == ["model", "accuracy_mean", "accuracy_std"]
    assert "predict_seconds_std" in board.columns and board.columns[-1] == "parameters"


def test_bad_requests_fail_before_training(tmp_path, small_csvs):
    with pytest.raises(UnknownModelError, match="Did you mean 'svm'"):
        compare(small_csvs["train"], ["knn", "svn"], tmp_path)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        compare(small_csvs["train"], ["knn"], tmp_path, cv=1)
    with pytest.raises(ConfigError, match="no model to compare: give --models"):
        compare(small_csvs["train"], [], tmp_path)  # `--models ,`
    with pytest.raises(ConfigError, match="--cv folds the training CSV and --test scores"):
        compare(small_csvs["train"], ["knn"], tmp_path, test_csv=small_csvs["train"], cv=3)
