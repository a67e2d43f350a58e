import csv
import errno
import json
import logging
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.model_selection import StratifiedKFold

from digit_recognizer.compare import compare
from digit_recognizer.data.kaggle_csv import read_kaggle_csv, write_kaggle_csv
from digit_recognizer.errors import ConfigError, DataError, OutputError, UnknownModelError
from digit_recognizer.estimator import build_estimator, count_parameters
from digit_recognizer.fileio import sha256_file


def test_leaderboard_has_one_row_per_model_and_the_documented_columns(tmp_path, small_csvs):
    board = compare(small_csvs["train"], ["knn", "logreg"], tmp_path, valid_size=0.2)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row, scored in zip(rows, board.rows, strict=True):  # as scored, not rounded to 3 digits
        assert float(row["accuracy"]) == pytest.approx(scored["accuracy"], abs=1e-6)
    assert list(rows[0]) == ["model", "accuracy", "macro_f1", "fit_seconds", "predict_seconds",
                             "parameters"]  # fmt: skip
    assert sorted(row["model"] for row in rows) == ["knn", "logreg"]
    assert all(float(row["accuracy"]) > 0.8 for row in rows)
    accuracies = [float(row["accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    assert (tmp_path / "leaderboard.png").stat().st_size > 1000
    settings = json.loads((tmp_path / "compare.json").read_text())
    assert settings["models"] == ["knn", "logreg"] and settings["valid_size"] == 0.2
    assert settings["train_sha256"] == sha256_file(small_csvs["train"])
    assert settings["test_csv"] is None and "torch" in settings["versions"]
    assert sorted(settings["scored"]) == ["knn", "logreg"]


def test_cross_validation_reports_mean_and_std(tmp_path, small_csvs):
    board = compare(small_csvs["train"], ["knn"], tmp_path, cv=2)
    assert board.n_folds == 2
    assert board.columns[:3] == ["model", "accuracy_mean", "accuracy_std"]
    assert "predict_seconds_std" in board.columns and board.columns[-1] == "parameters"
    # The mean and spread of every fold's accuracy, each fold fitted and scored afresh here
    # (the folds differ, so a first fold's score or a zero spread would show).
    data = read_kaggle_csv(small_csvs["train"])
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    fold_accuracies = []
    for fit, scored in folds.split(data.images, data.labels):
        knn = build_estimator("knn", seed=0).fit(data.images[fit], data.labels[fit])
        fold_accuracies.append(np.mean(knn.predict(data.images[scored]) == data.labels[scored]))
    assert fold_accuracies[0] != fold_accuracies[1]
    (row,) = board.rows
    assert row["accuracy_mean"] == pytest.approx(np.mean(fold_accuracies), abs=1e-12)
    assert row["accuracy_std"] == pytest.approx(np.std(fold_accuracies), abs=1e-12)


def test_cross_validation_parameters_describe_every_fold(tmp_path, small_csvs, monkeypatch):
    """The parameters column had shown the last fold's count alone: k-NN stores its fold's
    rows, so folds of 151 and 150 rows give two counts, and both are shown; logreg's folds
    agree, and their one count is shown. --resume reads the description back."""
    from digit_recognizer import compare as compare_module

    data = read_kaggle_csv(small_csvs["train"]).take(np.arange(301))
    odd = tmp_path / "odd.csv"
    write_kaggle_csv(odd, data.images, data.labels)
    board = compare(odd, ["knn", "logreg"], tmp_path / "out", cv=2)
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    counts = sorted(count_parameters(build_estimator("knn").fit(data.images[fit], data.labels[fit]))
                    for fit, _ in folds.split(data.images, data.labels))  # fmt: skip
    rows = {row["model"]: row for row in board.rows}
    assert rows["knn"]["parameters"] == f"{counts[0]} (1 fold); {counts[1]} (1 fold)"
    assert counts[0] != counts[1] and isinstance(rows["logreg"]["parameters"], int)
    monkeypatch.setattr(compare_module, "_score_model", lambda *args: pytest.fail("fitted"))
    assert compare(odd, ["knn", "logreg"], tmp_path / "out", cv=2, resume=True).rows == board.rows


def test_bad_requests_fail_before_training(tmp_path, small_csvs):
    with pytest.raises(UnknownModelError, match=r"^--models: unknown model 'svn'\. Did you mean"):
        compare(small_csvs["train"], ["knn", "svn"], tmp_path)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        compare(small_csvs["train"], ["knn"], tmp_path, cv=1)
    with pytest.raises(ConfigError, match="no model to compare: give --models"):
        compare(small_csvs["train"], [], tmp_path)  # `--models ,`
    with pytest.raises(ConfigError, match="--cv folds the training CSV and --test scores"):
        compare(small_csvs["train"], ["knn"], tmp_path, test_csv=small_csvs["train"], cv=3)
    # --valid-size had been ignored there: the scores came from another hold-out than asked.
    for held_out, flag in [({"test_csv": small_csvs["train"]}, "--test"), ({"cv": 3}, "--cv")]:
        with pytest.raises(ConfigError, match=f"--valid-size holds out part of --train, and "
                                              f"{flag} scores instead: give one"):  # fmt: skip
            compare(small_csvs["train"], ["knn"], tmp_path, valid_size=0.3, **held_out)
    with pytest.raises(ConfigError, match=r"--valid-size must be in \(0, 1\), got 0"):
        compare(small_csvs["train"], ["knn"], tmp_path, valid_size=0)  # nothing left to score
    # The split's own remedy, "(0: none held out)", is the value refused just above.
    with pytest.raises(ConfigError, match=r"^3,000 labelled rows are too few, .* --valid-size "
                       r"0\.001 of them by digit; give more rows, another --valid-size, or "
                       r"--test$"):  # fmt: skip
        compare(small_csvs["train"], ["knn"], tmp_path, valid_size=0.001)
    with pytest.raises(ConfigError, match="--models names knn more than once"):
        compare(small_csvs["train"], ["knn", "logreg", "knn"], tmp_path)
    with pytest.raises(ConfigError, match=r"--seed must be from 0 to 2\*\*32 - 1"):
        compare(small_csvs["train"], ["knn"], tmp_path, seed=2**32)


def test_scoring_on_the_images_fitted_is_warned_of(tmp_path, small_csvs, caplog):
    """--test naming the training CSV: k-NN scored 1.0 on the rows it had stored, silently."""
    with caplog.at_level(logging.WARNING):
        compare(small_csvs["train"], ["knn"], tmp_path, test_csv=small_csvs["train"])
    assert "3,000 of its 3,000 images are also among those trained on" in caplog.text


@pytest.mark.parametrize("name", ["leaderboard.csv", "leaderboard.png", "compare.json"])
def test_an_output_that_cannot_be_replaced_is_refused_before_any_model_is_fitted(
    tmp_path, small_csvs, monkeypatch, name
):
    """A read-only leaderboard, chart or compare.json had been found only on writing it,
    after the first model's fitting (every model's, before they were written as scored)."""
    from digit_recognizer import compare as compare_module

    monkeypatch.setattr(compare_module, "_score_model", lambda *args: pytest.fail("fitted"))
    (tmp_path / name).write_text("old")
    (tmp_path / name).chmod(0o444)
    with pytest.raises(OutputError, match=rf"{name}: read-only"):
        compare(small_csvs["train"], ["knn"], tmp_path)


def test_what_a_compare_killed_outright_left_is_removed_by_the_next(tmp_path, small_csvs):
    """`digits compare` killed while drawing its chart left `.leaderboard.png.PID-RANDOM.tmp`
    in --out, and no later compare there removed it. One written lately stays: a compare on
    another machine sharing --out, whose pid says nothing here, may be writing it."""
    import os
    import time

    from digit_recognizer.fileio import LEFTOVER_AGE_S

    killed = tmp_path / ".leaderboard.png.999999999-abcdefgh.tmp"  # no process has that pid
    recent = tmp_path / ".compare.json.999999999-ijklmnop.tmp"
    for path in (killed, recent):
        path.write_text("partial")
    long_ago = time.time() - LEFTOVER_AGE_S - 1
    os.utime(killed, (long_ago, long_ago))
    with pytest.raises(DataError, match=r"missing\.csv"):
        compare(tmp_path / "missing.csv", ["knn"], tmp_path)
    assert not killed.exists() and recent.exists()


def test_a_compare_that_cannot_write_all_its_files_leaves_the_earlier_ones_as_they_were(
    tmp_path, small_csvs, monkeypatch
):
    """Written one after another, a full disk at the chart had left the new leaderboard.csv
    beside the earlier compare's chart and compare.json."""
    compare(small_csvs["train"], ["knn"], tmp_path)
    earlier = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OutputError, match=r"leaderboard\.png: cannot be written: no space left"):
        compare(small_csvs["train"], ["knn", "logreg"], tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier


def test_the_models_scored_before_an_interruption_are_kept(tmp_path, small_csvs, monkeypatch):
    """Ctrl-C in the third model's fitting had lost the two scored before it."""
    from digit_recognizer import compare as compare_module

    build = compare_module.build_estimator

    def interrupted_at_svm(name, **params):
        if name == "svm":
            raise KeyboardInterrupt
        return build(name, **params)

    monkeypatch.setattr(compare_module, "build_estimator", interrupted_at_svm)
    with pytest.raises(KeyboardInterrupt):
        compare(small_csvs["train"], ["knn", "logreg", "svm"], tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        assert sorted(row["model"] for row in csv.DictReader(handle)) == ["knn", "logreg"]
    settings = json.loads((tmp_path / "compare.json").read_text())
    assert settings["models"] == ["knn", "logreg", "svm"]
    assert sorted(settings["scored"]) == ["knn", "logreg"]

    # --resume fits only the model not scored yet, keeping the others' scores as they were;
    # other settings are refused, not mixed into one leaderboard.
    with pytest.raises(ConfigError, match=r"written for other seed; drop --resume"):
        compare(small_csvs["train"], ["knn", "logreg", "svm"], tmp_path, seed=1, resume=True)
    fitted = []

    def counted(name, **params):
        fitted.append(name)
        return build(name, **params)

    monkeypatch.setattr(compare_module, "build_estimator", counted)
    board = compare(small_csvs["train"], ["logreg", "svm"], tmp_path, resume=True)
    assert fitted == ["svm"]
    assert sorted(row["model"] for row in board.rows) == ["logreg", "svm"]
    kept = next(row for row in settings["scores"] if row["model"] == "logreg")
    assert next(row for row in board.rows if row["model"] == "logreg") == kept
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        assert sorted(row["model"] for row in csv.DictReader(handle)) == ["logreg", "svm"]


def test_resume_starts_afresh_keeps_what_is_asked_and_refuses_an_unreadable_record(
    tmp_path, small_csvs, monkeypatch
):
    """--resume in a new folder fits every model; with every model scored it fits none, yet the
    leaderboard shows the models asked now; a damaged compare.json is one line, not a
    traceback. Scores are stand-ins, so that the ranking, not the models given, orders rows."""
    from digit_recognizer import compare as compare_module

    accuracy = {"knn": 0.5, "logreg": 0.9, "svm": 0.7}
    fitted = []

    def scored(name, *args):
        fitted.append(name)
        return {"model": name, "accuracy": accuracy[name], "macro_f1": accuracy[name],
                "fit_seconds": 1.0, "predict_seconds": 1.0, "parameters": 10}  # fmt: skip

    monkeypatch.setattr(compare_module, "_score_model", scored)
    board = compare(small_csvs["train"], ["knn", "logreg", "svm"], tmp_path, resume=True)
    assert fitted == ["knn", "logreg", "svm"]  # nothing scored before: every model fits
    assert [row["model"] for row in board.rows] == ["logreg", "svm", "knn"]  # best first
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        assert [row["model"] for row in csv.DictReader(handle)] == ["logreg", "svm", "knn"]

    fitted.clear()
    board = compare(small_csvs["train"], ["knn", "svm"], tmp_path, resume=True)
    assert fitted == []
    assert [row["model"] for row in board.rows] == ["svm", "knn"]
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        assert [row["model"] for row in csv.DictReader(handle)] == ["svm", "knn"]
    settings = json.loads((tmp_path / "compare.json").read_text())
    assert settings["models"] == ["knn", "svm"] and settings["scored"] == ["svm", "knn"]

    record = json.loads((tmp_path / "compare.json").read_text())
    (tmp_path / "compare.json").write_text('{"models": ["knn"')  # cut short by a full disk
    with pytest.raises(ConfigError, match=r"--resume: cannot read .*compare\.json"):
        compare(small_csvs["train"], ["knn"], tmp_path, resume=True)
    # JSON, yet not compare's record: each had ended in a traceback (AttributeError, KeyError).
    (tmp_path / "compare.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"compare\.json is not the record compare writes"):
        compare(small_csvs["train"], ["knn"], tmp_path, resume=True)
    for scores in ([{"accuracy": 0.5}], [{**record["scores"][0], "accuracy": "high"}], {}):
        (tmp_path / "compare.json").write_text(json.dumps(record | {"scores": scores}))
        with pytest.raises(ConfigError, match=r"scores are not rows of model, accuracy, "):
            compare(small_csvs["train"], ["knn"], tmp_path, resume=True)
    assert fitted == []


def test_data_lacking_a_digit_or_rows_is_scored_or_refused_in_one_line(tmp_path, small_csvs):
    """A pipeline fitted without the 9s had crashed (9 columns of probabilities), 14 rows
    crashed PCA, and more folds than a digit has rows crashed in scikit-learn."""
    data = read_kaggle_csv(small_csvs["train"])
    no_nines = tmp_path / "no9.csv"
    write_kaggle_csv(no_nines, data.images[data.labels != 9], data.labels[data.labels != 9])
    board = compare(no_nines, ["knn"], tmp_path / "no9", test_csv=small_csvs["train"])
    (row,) = board.rows
    is_nine = data.labels == 9
    assert row["accuracy"] < 1 - is_nine.mean() + 0.02  # every 9 wrong, most others right
    assert row["accuracy"] > 1 - is_nine.mean() - 0.1
    tiny = tmp_path / "tiny.csv"
    write_kaggle_csv(tiny, data.images[:30], data.labels[:30])
    # It had given scikit-learn's reason alone ("n_components=40 must be between 0 and ...").
    with pytest.raises(DataError, match=r"^knn: cannot be fitted on these 30 rows \(.*\); give "
                       r"more rows, or leave knn out of --models \(--resume keeps the models "
                       r"scored before it\)$"):  # fmt: skip
        compare(tiny, ["knn"], tmp_path / "tiny", test_csv=tiny)
    with pytest.raises(ConfigError, match=r"--cv 20: .*; give fewer folds"):
        compare(tiny, ["knn"], tmp_path / "tiny", cv=20)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(OutputError, match="cannot be made a directory"):
        compare(no_nines, ["knn", "logreg"], taken)  # before either is fitted


def test_nets_fit_on_all_the_fit_rows_as_classical_models_do(tmp_path, small_csvs, caplog):
    """A net had held 5 % of its fit rows out for a validation split that chose nothing (and on
    12 rows had failed to draw one); it fits on them all, as the classical models do."""
    data = read_kaggle_csv(small_csvs["train"])
    tiny = tmp_path / "tiny.csv"
    write_kaggle_csv(tiny, data.images[:12], data.labels[:12])
    with caplog.at_level("INFO", logger="digit_recognizer"):
        compare(tiny, ["mlp"], tmp_path / "out", test_csv=tiny, epochs=1)
    assert "training mlp on 12 images (0 validation)" in caplog.text


def test_nets_train_the_epochs_asked_and_classical_models_ignore_them(
    tmp_path, small_csvs, monkeypatch
):
    """A net had trained TrainConfig's 15 epochs whatever one wanted of a quick comparison."""
    from digit_recognizer import compare as compare_module

    built = []

    def recording(name, seed=None, **params):
        built.append((name, params))
        return build_estimator(name, seed=seed, **params)

    monkeypatch.setattr(compare_module, "build_estimator", recording)
    compare(small_csvs["train"], ["mlp", "logreg"], tmp_path, epochs=1)
    assert built == [("mlp", {"valid_size": 0, "epochs": 1}), ("logreg", {})]
    assert json.loads((tmp_path / "compare.json").read_text())["epochs"] == 1
    with pytest.raises(ConfigError, match="--epochs must be >= 1, got 0"):
        compare(small_csvs["train"], ["mlp"], tmp_path, epochs=0)


def test_predict_seconds_leave_out_the_fitting(tmp_path, small_csvs, monkeypatch):
    """The chart's and the leaderboard's cost columns: fit and predict each timed alone."""
    from types import SimpleNamespace

    from digit_recognizer import compare as compare_module

    clock = iter([100.0, 110.0, 113.0])  # fitting starts, fitting ends, predicting ends
    monkeypatch.setattr(compare_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    (row,) = compare(small_csvs["train"], ["knn"], tmp_path).rows
    assert (row["fit_seconds"], row["predict_seconds"]) == (10.0, 3.0)


def test_digits_the_fitted_rows_lack_are_warned_of_once_naming_the_csv(
    tmp_path, small_csvs, caplog
):
    """A net had warned, naming no file, once per fold ("the training rows hold no 9"), and the
    classical models not at all: one warning for the command, whichever models run."""
    data = read_kaggle_csv(small_csvs["train"]).take(np.arange(300))
    no_nines = tmp_path / "no9.csv"
    write_kaggle_csv(no_nines, data.images[data.labels != 9], data.labels[data.labels != 9])
    with caplog.at_level("WARNING", logger="digit_recognizer"):
        compare(no_nines, ["mlp", "logreg"], tmp_path / "no9", cv=2, epochs=1)
    (warning,) = [record.getMessage() for record in caplog.records if "hold no" in record.message]
    assert warning.startswith(f"{no_nines}: its rows fitted hold no 9 (1 of the 10 digits)")

    # One 7 among the rows: the fold scoring it fits none, the other fold does.
    caplog.clear()
    is_kept = (data.labels != 7) | (np.cumsum(data.labels == 7) == 1)
    one_seven = tmp_path / "one7.csv"
    write_kaggle_csv(one_seven, data.images[is_kept], data.labels[is_kept])
    with caplog.at_level("WARNING", logger="digit_recognizer"):
        compare(one_seven, ["knn"], tmp_path / "one7", cv=2)
    (warning,) = [record.getMessage() for record in caplog.records if "hold no" in record.message]
    assert warning.startswith(f"{one_seven}: its rows fitted in some of the 2 folds hold no 7 ")


def test_resume_refuses_other_rows_split_or_test_rows(tmp_path, small_csvs, monkeypatch):
    """--resume keeps scores of the same rows, fitted and scored alike, alone: --seed,
    --valid-size, --cv, --test, or rows changed in --train's or --test's file are refused,
    naming what changed. A glob's (or a shard folder's) data had been known by its path alone:
    rows changed under it kept the scores of the rows before."""
    from typer.testing import CliRunner

    from digit_recognizer import compare as compare_module
    from digit_recognizer.cli import app

    def scored(name, folds, has_cv, *args):  # a stand-in, of the columns with and without --cv
        stats = ("_mean", "_std") if has_cv else ("",)
        scores = {f"{score}{stat}": 0.5 for score in compare_module.SCORES for stat in stats}
        return {"model": name, **scores, "parameters": 10}

    monkeypatch.setattr(compare_module, "_score_model", scored)
    monkeypatch.setattr(compare_module, "draw_figure", lambda figure, file, kind: file.touch())
    data = read_kaggle_csv(small_csvs["train"])

    def write_parts(folder, rows):
        folder.mkdir(exist_ok=True)
        for part in range(2):
            write_kaggle_csv(folder / f"part{part}.csv", data.images[rows[part::2]],
                             data.labels[rows[part::2]])  # fmt: skip

    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    write_kaggle_csv(train_csv, data.images[:400], data.labels[:400])
    write_kaggle_csv(test_csv, data.images[400:600], data.labels[400:600])
    write_parts(tmp_path / "train", np.arange(400))
    write_parts(tmp_path / "test", np.arange(400, 600))
    train_glob, test_glob = tmp_path / "train" / "*.csv", tmp_path / "test" / "*.csv"

    def digits_compare(*flags):
        args = ["compare", "--models", "knn", "--out", tmp_path / "out", *flags]
        return CliRunner().invoke(app, [str(arg) for arg in args])

    def refused(*flags):
        result = digits_compare(*flags)
        assert result.exit_code == 1, result.output
        return result.output

    assert digits_compare("--train", train_csv).exit_code == 0
    for flags, changed in [
        (("--seed", "1"), "seed"),
        (("--valid-size", "0.3"), "valid_size"),
        (("--cv", "2"), "valid_size, cv"),
        (("--test", test_csv), "valid_size, test_csv, test_sha256, test_rows"),
    ]:
        said = refused("--train", train_csv, "--resume", *flags)
        assert f"written for other {changed}; drop --resume" in said
    write_kaggle_csv(train_csv, data.images[:399], data.labels[:399])  # its rows, one fewer
    said = refused("--train", train_csv, "--resume")
    assert "written for other train_sha256, train_rows; drop --resume" in said
    assert digits_compare("--train", train_csv, "--cv", "2").exit_code == 0
    assert "other cv; drop" in refused("--train", train_csv, "--cv", "3", "--resume")

    assert digits_compare("--train", train_glob, "--test", test_glob).exit_code == 0
    for role, glob in (("test", test_glob), ("train", train_glob)):
        third = np.arange(600, 650) if role == "train" else np.arange(650, 700)
        write_kaggle_csv(glob.parent / "part2.csv", data.images[third], data.labels[third])
        said = refused("--train", train_glob, "--test", test_glob, "--resume")
        assert f"written for other {role}_rows; drop --resume" in said
        (glob.parent / "part2.csv").unlink()
    result = digits_compare("--train", train_glob, "--test", test_glob, "--resume")
    assert result.exit_code == 0, result.output


def test_a_digit_rarer_than_the_folds_is_warned_of_by_compare_alone(tmp_path, small_csvs, caplog):
    """--cv 2 on rows holding one 7 had printed scikit-learn's own warning ("The least
    populated class in y has only 1 members") beside compare's, which names the CSV."""
    data = read_kaggle_csv(small_csvs["train"]).take(np.arange(300))
    is_kept = (data.labels != 7) | (np.cumsum(data.labels == 7) == 1)
    one_seven = tmp_path / "one7.csv"
    write_kaggle_csv(one_seven, data.images[is_kept], data.labels[is_kept])
    with warnings.catch_warnings(record=True) as raised, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        compare(one_seven, ["knn"], tmp_path / "one7", cv=2)
    assert [
        str(warning.message) for warning in raised if "least populated" in str(warning.message)
    ] == []
    assert f"{one_seven}: its rows fitted in some of the 2 folds hold no 7 " in caplog.text
