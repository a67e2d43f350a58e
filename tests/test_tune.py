import errno
import fcntl
import json
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import Mock

import optuna
import pytest
import sqlalchemy
from typer.testing import CliRunner

from digit_recognizer import tune as tune_module
from digit_recognizer.cli import app
from digit_recognizer.config import load_config
from digit_recognizer.data.kaggle_csv import write_kaggle_csv
from digit_recognizer.errors import ConfigError, DigitsError, DivergedError, OutputError
from digit_recognizer.fileio import LOCK_FILE, check_not_in_use, locked_dir
from digit_recognizer.train import TrainConfig
from digit_recognizer.tune import TuneConfig, tune


def test_classical_study_resumes_from_its_sqlite_storage(tmp_path, small_csvs, monkeypatch):
    config = TuneConfig(model="knn", trials=2, seed=0)
    out = tmp_path / "tune?x=1 %20"  # a URL's characters: the study.db had gone elsewhere
    first = tune(config, small_csvs["train"], out)
    assert first.n_trials == 2 and first.storage.startswith("sqlite:///")
    assert [path.name for path in tmp_path.iterdir()] == [out.name]
    assert (out / "study.db").is_file()
    assert 0.8 < first.best_value <= 1 and set(first.best_params) == {"n_neighbors", "n_components"}
    second = tune(TuneConfig(model="knn", trials=1), small_csvs["train"], out)
    assert second.n_trials == 3  # the same study, grown
    best = json.loads((out / "best_params.json").read_text())
    assert best["model"] == "knn" and (out / "optimization_history.png").exists()
    # Another model cannot join the study: its trials would mix two search spaces; nor can other
    # data or another split, on which the earlier trials' scores would not rank these.
    shared = TuneConfig(model="logreg", trials=1, study_name="tune-knn")
    with pytest.raises(ConfigError, match="run with model 'knn', not logreg; give its settings"):
        tune(shared, small_csvs["train"], out)
    with pytest.raises(ConfigError, match=r"run with seed 0, not 1; .* or another --out for a"):
        tune(TuneConfig(model="knn", trials=1, seed=1), small_csvs["train"], out)
    # What it says to do works: another --study-name alone was refused for the results in --out.
    assert tune(TuneConfig(model="knn", trials=1, seed=1), small_csvs["train"], tmp_path / "new")
    everywhere = TuneConfig(model="knn", trials=1, seed=1, storage=first.storage)  # any --out
    with pytest.raises(ConfigError, match="or another --study-name and --out for a new study"):
        tune(everywhere, small_csvs["train"], tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"run with valid_size 0\.2, not 0\.3"):
        tune(TuneConfig(model="knn", trials=1, valid_size=0.3), small_csvs["train"], out)
    fewer_rows = out / "fewer.csv"
    fewer_rows.write_text("".join(small_csvs["train"].read_text().splitlines(True)[:-5]))
    with pytest.raises(ConfigError, match="run with other training rows, not these"):
        tune(TuneConfig(model="knn", trials=1), fewer_rows, out)
    assert len(optuna.load_study(study_name="tune-knn", storage=first.storage).trials) == 3
    # Another model's study in the same --out would replace this one's results without a word.
    # (a classical study writes no best_config.toml, and the message does not list one)
    owned = r"holds the results of study 'tune-knn' in .*study.db \(best_params.json, plots\)"
    with pytest.raises(ConfigError, match=owned + r".* another --"):
        tune(TuneConfig(model="logreg", trials=1), small_csvs["train"], out)
    assert json.loads((out / "best_params.json").read_text())["study"] == "tune-knn"
    fresh = tmp_path / "fresh"  # out holds the results of the study in its study.db
    for storage in ("foo://bar", f"sqlite:///{tmp_path}/missing/study.db"):
        with pytest.raises(ConfigError, match=f"--storage {storage}: cannot open the study's"):
            tune(TuneConfig(model="knn", trials=1, storage=storage), small_csvs["train"], fresh)
    with monkeypatch.context() as patch:  # a PostgreSQL URL without its driver: a traceback
        patch.setitem(sys.modules, "psycopg2", None)
        postgres = "postgresql+psycopg2://user:secret@host/db"  # shown in job logs: masked
        with pytest.raises(ConfigError, match=r"user:\*\*\*@host/db: .* module psycopg2 that SQLA"):
            tune(TuneConfig(model="knn", trials=1, storage=postgres), small_csvs["train"], fresh)
    legacy = json.loads((out / "best_params.json").read_text())
    del legacy["study"]  # written before studies were recorded: whose, unknown; not refused
    (out / "best_params.json").write_text(json.dumps(legacy))
    assert tune(TuneConfig(model="logreg", trials=1), small_csvs["train"], out).n_trials == 1


def test_ctrl_c_ends_the_study_with_the_trial_recorded_as_failed(tmp_path, small_csvs, monkeypatch,
                                                                   capfd, caplog):  # fmt: skip
    """The interrupted trial is failed, which TPE leaves out (pruned, it counted as a poor
    setting), without Optuna's traceback and warnings; the study stops, the finished trials'
    results are written (they had not been: `timeout 3600 digits tune` wrote none), and the
    interruption reaches the caller (the CLI says "interrupted")."""
    objective = tune_module._classical_objective

    def interrupted_second(trial, *args):
        if trial.number == 1:
            raise KeyboardInterrupt
        return objective(trial, *args)

    monkeypatch.setattr(tune_module, "_classical_objective", interrupted_second)
    verbosity = optuna.logging.get_verbosity()
    with pytest.raises(KeyboardInterrupt):
        tune(TuneConfig(model="knn", trials=3), small_csvs["train"], tmp_path)
    assert optuna.logging.get_verbosity() == verbosity
    study = optuna.load_study(study_name="tune-knn", storage=f"sqlite:///{tmp_path}/study.db")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed" not in err
    # Optuna's handler writes to the stderr of its import, which capfd misses under pytest's
    # capture: its records, "Trial 1 failed with value nan.", are looked for here.
    assert [r.message for r in caplog.records if r.name.startswith("optuna.study")
            and r.levelno >= logging.WARNING] == []  # fmt: skip
    assert tune_module.why_pruned(study) == "1 trial interrupted"
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["params"] == study.trials[0].params


def test_ctrl_c_between_trials_writes_the_results_too(tmp_path, small_csvs, monkeypatch):
    """Ctrl-C in Optuna's bookkeeping before the second trial (not in an objective) had skipped
    the finished trial's results."""
    calls = []

    def stale_trials_check(study):
        calls.append(study)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", stale_trials_check)
    with pytest.raises(KeyboardInterrupt):
        tune(TuneConfig(model="knn", trials=3), small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name="tune-knn", storage=f"sqlite:///{tmp_path}/study.db")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"]
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["params"] == study.trials[0].params


def test_ctrl_c_while_optuna_records_a_trial_still_writes_the_results(
    tmp_path, small_csvs, monkeypatch
):
    """Ctrl-C inside Optuna's recording of a trial makes Optuna fail in turn (a name left
    unbound in its cleanup): that failure had escaped, the finished trial's results unwritten."""
    from optuna.study import _optimize

    tell = _optimize._tell_with_warning
    calls = []

    def interrupted_tell(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return tell(*args, **kwargs)

    monkeypatch.setattr(_optimize, "_tell_with_warning", interrupted_tell)
    with pytest.raises(KeyboardInterrupt):
        tune(TuneConfig(model="knn", trials=3), small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name="tune-knn", storage=f"sqlite:///{tmp_path}/study.db")
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["params"] == study.trials[0].params


def test_a_stray_rank_is_refused_before_any_trial(tmp_path, small_csvs, monkeypatch):
    """RANK alone had failed every net trial, each logged with its traceback."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="RANK is set"):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
    assert not (tmp_path / "study.db").exists()


def test_a_seed_near_2_32_resumes_and_one_past_it_is_refused(tmp_path, small_csvs):
    """The sampler's seed grows with the stored trials: past 2**32 - 1 a resumed study had
    ended in Optuna's traceback."""
    top = TuneConfig(model="knn", trials=1, seed=2**32 - 1)
    tune(top, small_csvs["train"], tmp_path)
    assert tune(top, small_csvs["train"], tmp_path).n_trials == 2
    with pytest.raises(ConfigError, match=r"seed must be from 0 to 2\*\*32 - 1"):
        TuneConfig(model="knn", seed=2**32)


def test_a_zero_timeout_is_none_and_a_negative_one_is_refused(tmp_path, small_csvs):
    result = tune(TuneConfig(model="knn", trials=1, timeout_s=0), small_csvs["train"], tmp_path)
    assert result.n_trials == 1
    # Over before the first trial began: said so (the message had ended in "trial: ").
    with pytest.raises(ConfigError, match=r"no completed trial: none began within --timeout 1e-09"):
        tune(TuneConfig(model="knn", trials=1, timeout_s=1e-9), small_csvs["train"], tmp_path / "b")
    for timeout in (-1, float("nan"), float("inf")):  # nan had meant no timeout, silently
        with pytest.raises(ConfigError, match="timeout_s must be >= 0"):
            TuneConfig(model="knn", timeout_s=timeout)
        # The flag in the same words, not typer's usage error (exit 2) for -1 alone.
        result = CliRunner().invoke(app, ["tune", "--train", str(small_csvs["train"]),
                                          "--timeout", str(timeout)])  # fmt: skip
        assert result.exit_code == 1, result.output
        assert result.output == f"error: --timeout must be >= 0 (0 = none), got {float(timeout)}\n"


def test_net_study_writes_a_config_that_train_accepts(tmp_path, small_csvs):
    result = CliRunner().invoke(app, ["tune", "--train", str(small_csvs["train"]), "--model",
        "mlp", "--trials", "2", "--epochs", "1", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 trials" in result.output
    config = load_config(TrainConfig, tmp_path / "best_config.toml")
    assert config.model == "mlp" and 0.02 <= config.lr <= 0.3
    assert (tmp_path / "intermediate_values.png").exists()


def test_net_trials_below_the_median_are_pruned_and_the_timeout_stops_a_trial_between_epochs(
    tmp_path, small_csvs, monkeypatch
):
    # A stand-in for train() with fixed learning curves: what is under test is the wiring of
    # reports, pruning, the deadline and the best config, not the nets. The clock passes the
    # deadline during the last trial's first epoch: it stops there, failed (not pruned: its
    # score is the time's, which TPE must not take for its settings'). Trials train without a
    # time budget, which would steer their lr by the clock (a trial that still finished had
    # scored the time left).
    curves = iter([[0.90, 0.95], [0.91, 0.96], [0.50, 0.55], [0.97, 0.99]])
    now = [0.0]
    monkeypatch.setattr(tune_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    budgets = []

    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        budgets.append(config.time_budget_s)
        curve = next(curves)
        for epoch, accuracy in enumerate(curve, start=1):
            if accuracy == 0.97:
                now[0] = 601.0
            on_epoch_end({"epoch": epoch, "valid_accuracy": accuracy})
        return SimpleNamespace(valid_accuracy=max(curve), epochs_run=len(curve))

    monkeypatch.setattr(tune_module, "train", fake_train)
    config = TuneConfig(model="cnn", trials=4, epochs=2, timeout_s=600, seed=5)
    result = tune(config, small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert [trial.user_attrs.get("pruned") for trial in study.trials[2:]] == [
        tune_module.BELOW_MEDIAN, tune_module.CUT_BY_TIMEOUT]  # fmt: skip
    assert study.best_value == 0.96 and result.n_pruned == 1 and budgets == [None] * 4
    best = load_config(TrainConfig, tmp_path / "best_config.toml")
    scale = study.best_params["width_scale"]
    assert best.widths == tuple(round(width * scale) for width in (32, 64, 128))
    assert best.dropout == study.best_params["dropout"] and best.time_budget_s is None
    assert best.seed == 5  # the trial's: another seed trains another net than it scored


def test_a_trial_whose_training_diverges_is_pruned_and_the_study_goes_on(
    tmp_path, small_csvs, monkeypatch
):
    runs = iter([DivergedError("diverged in epoch 1"), 0.9])

    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        outcome = next(runs)
        if isinstance(outcome, Exception):
            raise outcome
        return SimpleNamespace(valid_accuracy=outcome, epochs_run=1, cut_by_budget=False)

    monkeypatch.setattr(tune_module, "train", fake_train)
    result = tune(TuneConfig(model="cnn", trials=2, epochs=1), small_csvs["train"], tmp_path)
    assert result.n_trials == 2 and result.n_pruned == 1 and result.best_value == 0.9
    # With no trial completed the error says why they were pruned (it had said "raise
    # --timeout" of trials that diverged, with no timeout given).
    runs = iter([DivergedError("diverged in epoch 1")] * 2)
    with pytest.raises(ConfigError, match="no completed trial: 2 trials its training diverged"):
        tune(TuneConfig(model="cnn", trials=2, epochs=1), small_csvs["train"], tmp_path / "b")


def test_classical_settings_the_rows_cannot_fit_prune_their_trial_and_the_study_goes_on(
    tmp_path, small_csvs, monkeypatch
):
    """100 PCA components of 96 rows: scikit-learn's ValueError had ended the study in a
    traceback, and the trials finished before it were never written."""
    rows = small_csvs["train"].read_text().splitlines(True)
    few = tmp_path / "few.csv"
    few.write_text("".join(rows[:61]))  # logreg's 100 components fit none of 48 rows
    with pytest.raises(ConfigError, match="no completed trial: 2 trials could not be fitted "
                                          "with its settings on these rows"):  # fmt: skip
        tune(TuneConfig(model="logreg", trials=2), few, tmp_path / "few")
    build = tune_module.build_estimator
    fits = iter([True, False, True])

    def some_unfit(name, **params):
        estimator = build(name, **params)
        if not next(fits):
            estimator.set_params(pca__n_components=10_000)
        return estimator

    monkeypatch.setattr(tune_module, "build_estimator", some_unfit)
    result = tune(TuneConfig(model="knn", trials=3), small_csvs["train"], tmp_path / "knn")
    assert result.n_trials == 3 and result.n_pruned == 1
    assert (tmp_path / "knn" / "best_params.json").is_file()


def test_net_trials_train_with_the_settings_they_suggest(tmp_path, small_csvs, monkeypatch):
    """A trial scored on a run that ignored its suggested settings ranks nothing: the study's
    best params would not be the recipe behind its best score."""
    trained = []

    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        trained.append(config)
        on_epoch_end({"epoch": 1, "valid_accuracy": 0.9})
        return SimpleNamespace(valid_accuracy=0.9, epochs_run=1, cut_by_budget=False)

    monkeypatch.setattr(tune_module, "train", fake_train)
    result = tune(TuneConfig(model="cnn", trials=2, epochs=1), small_csvs["train"], tmp_path)
    trials = optuna.load_study(study_name=result.study_name, storage=result.storage).trials
    for config, trial in zip(trained, trials, strict=True):
        for key in ("lr", "weight_decay", "augment", "batch_size", "label_smoothing", "dropout"):
            assert getattr(config, key) == trial.params[key], key
        scale = trial.params["width_scale"]
        assert config.widths == tuple(round(width * scale) for width in (32, 64, 128))
        assert config.epochs == 1 and config.model == "cnn"
    # Trials one epoch long are not ranked against trials two long: the study is refused.
    with pytest.raises(ConfigError, match=r"run with epochs 1, not 2; give its settings"):
        tune(TuneConfig(model="cnn", trials=1, epochs=2), small_csvs["train"], tmp_path)
    assert len(trained) == 2


def test_net_trials_train_with_the_ema_amp_and_channels_last_flags(
    tmp_path, small_csvs, monkeypatch
):
    """`digits train` sets ema_decay, amp and channels_last by flag, tune had no way to: its
    trials, and the best_config.toml they chose, trained as TrainConfig's defaults."""
    trained = []

    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        trained.append((config.ema_decay, config.amp, config.channels_last))
        on_epoch_end({"epoch": 1, "valid_accuracy": 0.9})
        return SimpleNamespace(valid_accuracy=0.9, epochs_run=1, cut_by_budget=False)

    monkeypatch.setattr(tune_module, "train", fake_train)
    tune_flags = ("tune", "--train", small_csvs["train"], "--model", "mlp", "--trials", "1",
                  "--epochs", "1", "--out", tmp_path / "ema")  # fmt: skip
    flags = ("--ema-decay", "0.9", "--no-amp", "--no-channels-last")
    result = CliRunner().invoke(app, [str(arg) for arg in (*tune_flags, *flags)])
    assert result.exit_code == 0, result.output
    best = load_config(TrainConfig, tmp_path / "ema" / "best_config.toml")
    assert trained == [(0.9, False, False)] == [(best.ema_decay, best.amp, best.channels_last)]
    # Trials with an average are not ranked against trials without: the study is refused.
    result = CliRunner().invoke(app, [str(arg) for arg in (*tune_flags, "--ema-decay", "0")])
    assert result.exit_code == 1 and "run with ema_decay 0.9, not None" in result.output
    # Out of its range: refused before any data is read, in train's words.
    result = CliRunner().invoke(app, [str(arg) for arg in (*tune_flags[:-1], tmp_path / "x",
                                                           "--ema-decay", "1")])  # fmt: skip
    assert result.exit_code == 1
    assert result.output == "error: --ema-decay must be in [0, 1) (0: no average), got 1.0\n"
    assert not (tmp_path / "x").exists() and len(trained) == 1


def test_net_only_flags_given_with_a_classical_model_are_refused_naming_the_flag(tmp_path):
    """`digits tune --model knn --ema-decay 0.99` had tuned knn as if the flag were not given;
    the net-only flags at their defaults (as a script passes them all) are not refused."""
    for flags, flag in [(("--ema-decay", "0.99"), "--ema-decay"), (("--no-amp",), "--no-amp"),
                        (("--no-channels-last",), "--no-channels-last"),
                        (("--epochs", "5"), "--epochs")]:  # fmt: skip
        args = ["tune", "--train", tmp_path / "unread.csv", "--model", "knn", "--out",
                tmp_path / "out", *flags]  # fmt: skip
        result = CliRunner().invoke(app, [str(arg) for arg in args])
        assert result.exit_code == 1
        assert result.output == (f"error: {flag} applies to net trials alone; 'knn' is a "
                                 "classical model, whose trials it would not change: leave it "
                                 "out\n")  # fmt: skip
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^ema_decay applies to net trials alone; 'logreg'"):
        TuneConfig(model="logreg", ema_decay=0.99)
    defaults = TuneConfig(model="knn", epochs=3, ema_decay=None, amp=True, channels_last=True)
    assert (defaults.epochs, defaults.ema_decay, defaults.amp) == (3, None, True)
    assert TuneConfig(model="mlp", epochs=5, ema_decay=0.99, amp=False).epochs == 5


def test_classical_trials_fit_their_params_and_score_on_the_validation_split(
    tmp_path, small_csvs, monkeypatch
):
    """Each trial builds the estimator with its own params, fits the training split and is
    scored on the held-out one: scored on the rows it fit, 1-NN would win every study."""
    calls = []

    class Spy:
        def __init__(self, **params):
            calls.append({"params": params})

        def fit(self, images, labels):
            calls[-1]["fit_rows"] = len(images)
            return self

        def score(self, images, labels):
            calls[-1]["scored_rows"] = len(images)
            return 0.5

    monkeypatch.setattr(tune_module, "build_estimator", lambda model, seed, **params: Spy(**params))
    result = tune(TuneConfig(model="knn", trials=2, valid_size=0.2), small_csvs["train"], tmp_path)
    trials = optuna.load_study(study_name=result.study_name, storage=result.storage).trials
    for call, trial in zip(calls, trials, strict=True):
        assert set(trial.params) == {"n_neighbors", "n_components"}
        # 20 % of the 3,000 rows held out.
        assert call == {"params": trial.params, "fit_rows": 2400, "scored_rows": 600}


def test_a_database_of_another_optuna_version_and_a_killed_trial(tmp_path, small_csvs):
    """A study database set up by another Optuna version ended in a traceback; a trial whose
    process was killed outright stayed RUNNING for ever, counted in every later call."""
    import sqlite3

    result = tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    stale = study.ask()  # a trial begun by a process then killed: it never beats its heartbeat
    database = tmp_path / "study.db"
    with sqlite3.connect(database) as connection:
        connection.execute("insert into trial_heartbeats (trial_id, heartbeat) values "
                           "(?, datetime('now', '-10 minutes'))", (stale._trial_id,))  # fmt: skip
    assert tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path).n_trials == 3
    states = [trial.state.name for trial in optuna.load_study(
        study_name=result.study_name, storage=result.storage).trials]  # fmt: skip
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    with sqlite3.connect(database) as connection:
        connection.execute("update alembic_version set version_num = 'v1.3.0.a'")
    with pytest.raises(
        ConfigError,
        match=rf"{database}: the study's database was written by "
        r"another version of Optuna .* `optuna storage upgrade --storage sqlite",
    ):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)


def test_one_trial_draws_no_importances_and_a_split_error_names_tunes_flag(
    tmp_path, small_csvs, monkeypatch
):
    sizes = []
    split = tune_module.split_for_training

    def recording_split(data, size, seed):
        sizes.append(size)
        return split(data, size, seed)

    monkeypatch.setattr(tune_module, "split_for_training", recording_split)
    result = CliRunner().invoke(app, ["tune", "--train", str(small_csvs["train"]), "--model",
        "knn", "--trials", "1", "--valid-size", "0.25", "--out", str(tmp_path / "a")])  # fmt: skip
    assert result.exit_code == 0, result.output
    # The best score of the split that chose it, said so ("best accuracy" read as the model's).
    assert ": best validation accuracy 0." in result.output
    assert ", 1 trial (0 pruned) in " in result.output  # not "1 trials"
    assert sizes == [0.25]  # the flag reached the split
    assert {path.name for path in (tmp_path / "a").glob("*.png")} == {"optimization_history.png"}
    few = tmp_path / "few.csv"
    few.write_text("".join(small_csvs["train"].read_text().splitlines(True)[:21]))
    result = CliRunner().invoke(app, ["tune", "--train", str(few), "--model", "knn", "--trials",
                                      "1", "--out", str(tmp_path / "b")])  # fmt: skip
    assert result.exit_code == 1 and "--valid-size" in result.output
    assert not (tmp_path / "b").exists()  # refused before an empty --out was made


def _open_at_once(barrier, storage: str, failures) -> None:
    barrier.wait()
    try:
        tune_module.open_study(storage, "tune-knn", "here")
    except Exception as error:
        failures.put(repr(error))


def test_workers_started_at_once_on_a_new_study_all_open_it(tmp_path):
    """Each created the database's tables, and all but one failed ("table studies already
    exists"): 15 of 45 in a review's run of 15 rounds. Workers with --out folders of their
    own share the database's lock, beside it."""
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for round_ in range(3):
        storage = f"sqlite:///{tmp_path}/study{round_}.db"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_at_once, args=(barrier, storage, failures))
                   for _ in range(4)]  # fmt: skip
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert failures.empty(), failures.get()
        assert len(optuna.get_all_study_summaries(storage)) == 1


def test_a_killed_trials_folder_is_removed_and_pruned_trials_of_before_are_called_pruned(
    tmp_path, small_csvs
):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "trial4-x1y2z3ab" / "member").mkdir(parents=True)  # a kill's, with files
    (tmp_path / "trial4-x1y2z3ab" / LOCK_FILE).write_text(f"process {dead}\n")  # not held
    (tmp_path / "trial-notes").mkdir()  # not a trial's
    (tmp_path / "trial1-baseline").mkdir()  # named as one, but a user's: no lock was taken in it
    # Earlier versions named a trial's folder by its pid and locked none: never removed, they
    # had stayed for good. One a moment old may be another machine's live worker's.
    (tmp_path / f"trial2.{dead}-a1b2c3d4" / "member").mkdir(parents=True)
    hour_ago = time.time() - 3600
    os.utime(tmp_path / f"trial2.{dead}-a1b2c3d4", (hour_ago, hour_ago))
    (tmp_path / f"trial3.{dead}-e5f6g7h8").mkdir()
    (tmp_path / f"trial6.{os.getppid()}-i9j0k1l2").mkdir()  # a live process's, an hour old
    os.utime(tmp_path / f"trial6.{os.getppid()}-i9j0k1l2", (hour_ago, hour_ago))
    killed_write = tmp_path / f".best_params.json.{dead}-abcdefgh.tmp"
    killed_write.write_text("{")  # as a write killed outright leaves it, an hour ago
    os.utime(killed_write, (hour_ago, hour_ago))
    (tmp_path / f".best_params.json.{dead}-ijklmnop.tmp").write_text("{")  # a moment ago:
    # perhaps another machine's worker's, sharing --out, and left alone
    # Another worker's, live, whatever its pid: judged by pid, one training on another
    # machine sharing --out was taken for a killed one's and removed from under it.
    with locked_dir(tmp_path / "trial5-q9w8e7rt"):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
        # (Inside: once unlocked, the folder locked_dir made and left empty goes.)
        assert sorted(path.name for path in tmp_path.glob("trial*")) == [
            "trial-notes",
            "trial1-baseline",
            f"trial3.{dead}-e5f6g7h8",
            "trial5-q9w8e7rt",
            f"trial6.{os.getppid()}-i9j0k1l2",
        ]
    assert [path.name for path in tmp_path.glob(".*.tmp")] == [
        f".best_params.json.{dead}-ijklmnop.tmp"
    ]
    # A study an earlier version pruned did not record why: pruned, not "failed".
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/old.db")
    for _ in range(2):
        study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert tune_module.why_pruned(study) == "2 trials pruned; 1 trial failed"


def test_a_model_without_a_search_space_or_a_dropout_setting(monkeypatch, tmp_path, small_csvs):
    """A classical model without a space had been found out by the first trial, behind a
    traceback, after the study was made; a net without a dropout setting had every trial fail
    on the dropout suggested to it."""
    from digit_recognizer.models import registry
    from digit_recognizer.models.nets import CompactCNN

    monkeypatch.setitem(registry._REGISTRY, "gnb", registry.ModelSpec(
        "gnb", lambda: None, "classical", "naive Bayes"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"no search space for 'gnb'; tunable: nets, logreg"):
        TuneConfig(model="gnb")

    def without_dropout(widths: tuple[int, int, int] = (8, 16, 32)) -> CompactCNN:
        return CompactCNN(widths)

    fixed = registry.ModelSpec("cnn-fixed", without_dropout, "net", "no dropout setting")
    monkeypatch.setitem(registry._REGISTRY, "cnn-fixed", fixed)
    trial = optuna.create_study().ask()
    params = tune_module.suggest_params(trial, "cnn-fixed")
    assert "dropout" not in params and params["widths"] == tuple(
        round(width * trial.params["width_scale"]) for width in (8, 16, 32))  # fmt: skip
    load_config(TrainConfig, None, {"model": "cnn-fixed", **params})  # accepted, as trials are


def test_a_trial_the_deadline_passes_in_its_last_epoch_completes(tmp_path, small_csvs, monkeypatch):
    """Its epochs all trained, with the learning rate of its settings: its score is theirs."""
    now = [0.0]
    monkeypatch.setattr(tune_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    folders = []

    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        folders.append(run_dir)
        with pytest.raises(DigitsError, match="is in use by process"):
            check_not_in_use(run_dir)
        on_epoch_end({"epoch": 1, "valid_accuracy": 0.9})
        now[0] = 601.0
        on_epoch_end({"epoch": 2, "valid_accuracy": 0.95})
        return SimpleNamespace(valid_accuracy=0.95, epochs_run=2)

    monkeypatch.setattr(tune_module, "train", fake_train)
    config = TuneConfig(model="cnn", trials=1, epochs=2, timeout_s=600)
    result = tune(config, small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"]
    assert result.best_value == 0.95
    # It trained in --out, in a folder locked meanwhile, gone once it ended.
    assert folders[0].parent == tmp_path and not folders[0].exists()
    assert tune_module._TRIAL_FOLDER.fullmatch(folders[0].name)


def test_ctrl_c_in_the_first_trial_is_the_interruption_and_zero_trials_are_refused(
    tmp_path, small_csvs, monkeypatch
):
    """With no trial finished there is nothing to write: Ctrl-C, not "no completed trial"."""

    def interrupted(trial, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_module, "_classical_objective", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(TuneConfig(model="knn", trials=2), small_csvs["train"], tmp_path)
    study = optuna.load_study(study_name="tune-knn", storage=f"sqlite:///{tmp_path}/study.db")
    assert [trial.user_attrs.get("pruned") for trial in study.trials] == [tune_module.INTERRUPTED]
    with pytest.raises(ConfigError, match="trials must be >= 1, got 0"):
        TuneConfig(model="knn", trials=0)
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        TuneConfig(model="cnn", epochs=0)
    with pytest.raises(ConfigError, match=r"valid_size must be in \(0, 1\), got 0"):
        TuneConfig(model="knn", valid_size=0)  # no rows would score a trial


def test_results_another_study_wrote_meanwhile_are_not_replaced(tmp_path, small_csvs, monkeypatch):
    """Checked at the start only, a worker of another study writing its results into the same
    --out while this one ran had them replaced without a word."""
    objective = tune_module._classical_objective
    foreign = json.dumps({"study": "tune-svm", "model": "svm", "accuracy": 0.9, "params": {}})

    def another_worker_writes_first(trial, *args):
        (tmp_path / "best_params.json").write_text(foreign)
        return objective(trial, *args)

    monkeypatch.setattr(tune_module, "_classical_objective", another_worker_writes_first)
    with pytest.raises(ConfigError, match="holds the results of study 'tune-svm'"):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
    assert (tmp_path / "best_params.json").read_text() == foreign


def test_workers_that_open_a_study_at_once_draw_different_settings(tmp_path, small_csvs,
                                                                   monkeypatch):  # fmt: skip
    # Worker B opens the study after worker A has opened it but before A's first trial: both
    # find the same trials stored, as workers started at once on several machines do.
    config = TuneConfig(model="logreg", trials=2)
    check_same_study = tune_module.check_same_study
    other_workers = [lambda: tune(config, small_csvs["train"], tmp_path)]

    def open_another_worker_meanwhile(*args, **kwargs):
        check_same_study(*args, **kwargs)
        if other_workers:
            other_workers.pop()()

    def drawn_settings(result):
        study = optuna.load_study(study_name="tune-logreg", storage=result.storage)
        return [trial.params["C"] for trial in study.trials]

    def score_nothing(trial, config, train_set, valid_set):  # what is drawn matters, not fits
        return tune_module.suggest_params(trial, config.model)["C"]

    monkeypatch.setattr(tune_module, "_classical_objective", score_nothing)
    monkeypatch.setattr(tune_module, "write_plots", lambda *args, **kwargs: [])
    monkeypatch.setattr(tune_module, "check_same_study", open_another_worker_meanwhile)
    drawn = drawn_settings(tune(config, small_csvs["train"], tmp_path))
    assert len(drawn) == 4 and len(set(drawn)) == 4, drawn
    # One worker draws them too, by the seed and the trials' numbers, whoever ran which.
    alone = tune(TuneConfig(model="logreg", trials=4), small_csvs["train"], tmp_path / "alone")
    assert drawn_settings(alone) == drawn


def full_at_commit() -> optuna.exceptions.StorageInternalError:
    """What Optuna raises where a full disk fails its commit: its own error, from SQLAlchemy's."""
    full = sqlalchemy.exc.OperationalError(
        "INSERT INTO trials", {}, sqlite3.OperationalError("database or disk is full")
    )
    at_commit = optuna.exceptions.StorageInternalError("An exception is raised during the commit")
    at_commit.__cause__ = full
    return at_commit


def test_a_full_disk_is_told_in_one_short_line_naming_the_database(tmp_path, monkeypatch):
    """SQLAlchemy's message carries the SQL statement that failed (CREATE TABLE ..., cut at 200
    characters), which had filled the one line of the error."""
    database = tmp_path / "study.db"
    statement = "CREATE TABLE trial_intermediate_values (trial_intermediate_value_id INTEGER)"
    full = sqlalchemy.exc.OperationalError(
        statement, {}, sqlite3.OperationalError("database or disk is full")
    )
    said = f"{database}: cannot open the study's database (database or disk is full)"
    # Full at the study's row, Optuna's commit raises its own error, from SQLAlchemy's: it had
    # ended in a traceback.
    for raised in (full, full_at_commit()):
        monkeypatch.setattr(tune_module.optuna, "create_study", Mock(side_effect=raised))
        with pytest.raises(ConfigError) as refused:
            tune_module.open_study(f"sqlite:///{database}", "tune-knn", str(database))
        assert str(refused.value) == said


def test_a_disk_filling_up_under_the_trials_is_told_in_one_line(tmp_path, small_csvs, monkeypatch):
    """Optuna's StorageInternalError, at a trial's row, had ended in a traceback."""
    monkeypatch.setattr(optuna.Study, "optimize", Mock(side_effect=full_at_commit()))
    with pytest.raises(OutputError) as failed:
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
    said = f"{tmp_path / 'study.db'}: cannot record the study's trials (database or disk is full)"
    assert str(failed.value) == said


def test_a_first_call_on_a_full_disk_leaves_no_database_nor_out_behind(
    tmp_path, small_csvs, monkeypatch
):
    """The database file, tables half made, had stayed in the --out made for it, with its
    lock file; a database that was there stays."""
    full = sqlalchemy.exc.OperationalError(
        "INSERT INTO studies", {}, sqlite3.OperationalError("database or disk is full")
    )
    monkeypatch.setattr(tune_module.optuna, "create_study", Mock(side_effect=full))
    with pytest.raises(ConfigError, match="cannot open the study's database"):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []
    database = tmp_path / "study.db"
    database.touch()
    with pytest.raises(ConfigError, match="cannot open the study's database"):
        tune_module.open_study(f"sqlite:///{database}", "tune-knn", str(database))
    assert database.is_file()


def test_a_first_call_failing_hands_the_database_lock_to_one_worker_at_a_time(
    tmp_path, small_csvs, monkeypatch
):
    """A first call failing on a full disk removed study.db.lock after letting go of it: a
    worker waiting then held the lock of a file no longer there, while one starting next made
    the file anew and locked that, and both created the study's tables at once."""
    out_dir = tmp_path / "out"
    storage = f"sqlite:///{out_dir / 'study.db'}"
    holders, most_at_once = [], []
    worker_is_waiting = threading.Event()

    def hold_the_lock(name: str) -> None:
        with tune_module._creation_lock(storage, "here"):
            holders.append(name)
            most_at_once.append(len(holders))
            time.sleep(0.5)
            holders.remove(name)

    def announcing_flock(handle, operation: int) -> None:
        if threading.current_thread() is waiting_worker:
            worker_is_waiting.set()  # its lock file open, as a worker started meanwhile has it
        fcntl.flock(handle, operation)

    def create_while_a_worker_waits(**_options):
        waiting_worker.start()
        assert worker_is_waiting.wait(10)
        raise sqlalchemy.exc.OperationalError(
            "INSERT INTO studies", {}, sqlite3.OperationalError("database or disk is full")
        )

    waiting_worker = threading.Thread(target=hold_the_lock, args=("waiting",))
    monkeypatch.setattr(tune_module, "fcntl", SimpleNamespace(flock=announcing_flock,
                                                              LOCK_EX=fcntl.LOCK_EX))  # fmt: skip
    monkeypatch.setattr(tune_module.optuna, "create_study", create_while_a_worker_waits)
    with pytest.raises(ConfigError, match="cannot open the study's database"):
        tune(TuneConfig(model="knn", trials=1), small_csvs["train"], out_dir)
    out_dir.mkdir(exist_ok=True)  # as the next call's tune() makes its --out
    hold_the_lock("next")
    waiting_worker.join(10)
    assert len(most_at_once) == 2 and max(most_at_once) == 1


def test_a_database_that_is_a_folder_is_refused_leaving_no_lock_beside_it(tmp_path):
    """SQLite's "unable to open database file" had named no folder, and left folder.lock."""
    folder = tmp_path / "studies"
    folder.mkdir()
    where = f"--storage sqlite:///{folder}"
    with pytest.raises(ConfigError) as refused:
        tune_module.open_study(f"sqlite:///{folder}", "tune-knn", where)
    said = f"{where}: a folder, where the study's SQLite database file belongs; move it, or"
    assert str(refused.value).startswith(said)
    assert [path.name for path in tmp_path.iterdir()] == ["studies"]


def test_the_best_settings_and_their_config_are_written_together(tmp_path, monkeypatch):
    """Written one after another, a full disk at best_config.toml had left the new best's
    best_params.json beside an older best's config, which `digits train --config` reads."""

    def study_with_best(lr: float) -> SimpleNamespace:
        best_trial = SimpleNamespace(user_attrs={"train_overrides": {"lr": lr}})
        return SimpleNamespace(study_name="tune-cnn", best_value=0.99, best_params={"lr": lr},
                               best_trial=best_trial)  # fmt: skip

    monkeypatch.setattr(tune_module, "write_plots", lambda *args, **kwargs: [])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tune_module.write_results(study_with_best(0.01), storage, TuneConfig(), tmp_path, True)
    earlier = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    write_text = Path.write_text

    def full_at_the_config(path: Path, *args, **kwargs) -> int:
        if path.name.startswith(f".{tune_module.BEST_CONFIG_FILE}."):  # its temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_the_config)
    with pytest.raises(OutputError, match=r"best_config\.toml: cannot be written: no space"):
        tune_module.write_results(study_with_best(0.05), storage, TuneConfig(), tmp_path, True)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier


def test_an_out_made_for_a_study_at_storage_that_is_refused_is_not_left_behind(
    tmp_path, small_csvs
):
    """Made before the study at --storage was opened and checked, it had stayed, empty, with
    the folders made above it."""
    storage = f"sqlite:///{tmp_path}/shared.db"
    tune(TuneConfig(model="knn", trials=1, storage=storage), small_csvs["train"], tmp_path / "a")
    for config in (TuneConfig(model="knn", trials=1, seed=1, storage=storage),  # other settings
                   TuneConfig(model="knn", trials=1, storage="foo://bar")):  # fmt: skip
        with pytest.raises(ConfigError, match=r"give its settings|cannot open the study's"):
            tune(config, small_csvs["train"], tmp_path / "new" / "out")
        assert not (tmp_path / "new").exists()
    # Nor is a study made at --storage for an --out that cannot be one.
    (tmp_path / "a-file").touch()
    config = TuneConfig(model="logreg", trials=1, storage=storage)
    with pytest.raises(OutputError, match="a-file"):
        tune(config, small_csvs["train"], tmp_path / "a-file")
    assert optuna.get_all_study_names(storage) == ["tune-knn"]


def test_results_of_a_study_of_the_same_name_in_another_storage_are_not_replaced(
    tmp_path, small_csvs
):
    """Matched by name alone, tune-knn at another --storage wrote over the results of the
    tune-knn in OUT/study.db without a word; the same study, moved or named by its URL, is
    still accepted."""
    out = tmp_path / "out"
    tune(TuneConfig(model="knn", trials=1), small_csvs["train"], out)
    elsewhere = TuneConfig(model="knn", trials=1, storage=f"sqlite:///{tmp_path}/other.db")
    with pytest.raises(ConfigError) as refused:
        tune(elsewhere, small_csvs["train"], out)
    assert f"results of study 'tune-knn' in {out / 'study.db'} (" in str(refused.value)
    assert "(--study-name tune-knn without --storage adds trials" in str(refused.value)
    assert json.loads((out / "best_params.json").read_text())["storage"] is None
    moved = out.rename(tmp_path / "moved")
    by_url = TuneConfig(model="knn", trials=1, storage=f"sqlite:///{moved}/study.db")
    assert tune(by_url, small_csvs["train"], moved).n_trials == 2
    assert not (tmp_path / "other.db").exists()  # refused before it was opened


def _fail_as_stale(trial, database) -> None:
    """What another worker starting a trial does to ``trial`` once its heartbeat is two minutes
    old (this process suspended meanwhile): marks it failed."""
    import sqlite3

    with sqlite3.connect(database) as connection:
        connection.execute("update trial_heartbeats set heartbeat = datetime('now', '-10 minutes') "
                           "where trial_id = ?", (trial._trial_id,))  # fmt: skip
    storage = optuna.storages.RDBStorage(f"sqlite:///{database}", heartbeat_interval=60,
                                         grace_period=120)  # fmt: skip
    other = optuna.load_study(study_name=trial.study.study_name, storage=storage)
    optuna.storages.fail_stale_trials(other)
    assert other.trials[trial.number].state == optuna.trial.TrialState.FAIL


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the heartbeat's
def test_a_trial_failed_by_another_worker_for_its_lapsed_heartbeat_ends_in_one_line(
    tmp_path, small_csvs, monkeypatch, capfd, caplog
):
    """Optuna could not record a trial failed meanwhile and ended in its traceback ("Cannot tell
    a FAIL trial", then "Should not reach"); the trials finished are written all the same."""
    objective = tune_module._classical_objective

    def lapsed_second(trial, *args):
        value = objective(trial, *args)
        if trial.number == 1:
            _fail_as_stale(trial, tmp_path / "knn" / "study.db")
        return value

    monkeypatch.setattr(tune_module, "_classical_objective", lapsed_second)
    with pytest.raises(DigitsError, match=r"trial 1 was marked failed by another worker .* its "
                                          "heartbeat had stopped"):  # fmt: skip
        tune(TuneConfig(model="knn", trials=3), small_csvs["train"], tmp_path / "knn")
    assert json.loads((tmp_path / "knn" / "best_params.json").read_text())["accuracy"] > 0.8

    # A net's report fails.
    def fake_train(config, train_set, valid_set, run_dir, on_epoch_end, rows_name):
        on_epoch_end({"epoch": 1, "valid_accuracy": 0.9})
        _fail_as_stale(fake_train.trial, tmp_path / "cnn" / "study.db")
        on_epoch_end({"epoch": 2, "valid_accuracy": 0.95})

    suggest_params = tune_module.suggest_params

    def remembered_trial(trial, model):
        fake_train.trial = trial
        return suggest_params(trial, model)

    monkeypatch.setattr(tune_module, "train", fake_train)
    monkeypatch.setattr(tune_module, "suggest_params", remembered_trial)
    with pytest.raises(DigitsError, match="trial 0 was marked failed by another worker"):
        tune(TuneConfig(model="cnn", trials=2, epochs=2), small_csvs["train"], tmp_path / "cnn")
    assert "Traceback" not in capfd.readouterr().err
    assert not [record for record in caplog.records if record.exc_info]


def _tune_at_once(seed: int, out, csv, results) -> None:
    try:
        tune(TuneConfig(model="knn", trials=1, seed=seed), csv, out)
        results.put((seed, "tuned"))
    except Exception as error:
        results.put((seed, repr(error)))


def test_workers_creating_a_new_study_at_once_with_other_seeds_do_not_both_join_it(
    tmp_path, small_csvs, monkeypatch
):
    """Each found no settings recorded and took the study for its own, so its trials mixed two
    seeds' splits. Held here at the moment they differ: the creator about to record its
    settings, the other reading them (before, also about to record its own)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    held = []

    def hold_once():
        if not held:
            held.append(True)
            barrier.wait(30)

    set_user_attr = optuna.Study.set_user_attr
    monkeypatch.setattr(optuna.Study, "set_user_attr",
                        lambda *args: hold_once() or set_user_attr(*args))  # fmt: skip
    wait_for_settings = getattr(tune_module, "wait_for_settings", None)
    monkeypatch.setattr(tune_module, "wait_for_settings",
                        lambda study: hold_once() or wait_for_settings(study),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(tune_module, "_classical_objective", lambda *args: 0.5)  # no fit
    monkeypatch.setattr(tune_module, "write_plots", lambda *args, **kwargs: [])
    results = context.Queue()
    workers = [context.Process(target=_tune_at_once,
                               args=(seed, tmp_path, small_csvs["train"], results))
               for seed in (0, 1)]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = sorted(results.get(timeout=1)[1] for _ in workers)
    assert (
        outcomes[0].startswith("ConfigError(\"study 'tune-knn'") and "run with seed" in outcomes[0]
    )
    assert outcomes[1] == "tuned"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_study_in_memory_runs_without_the_heartbeats_traceback(tmp_path, small_csvs):
    """The heartbeat's thread, with a connection of its own to a SQLite database in memory,
    found another one there, empty, and printed its traceback ("no such table")."""
    result = tune(TuneConfig(model="knn", trials=1, storage="sqlite://"), small_csvs["train"],
                  tmp_path)  # fmt: skip
    assert result.n_trials == 1 and (tmp_path / "best_params.json").is_file()


@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_rows_lacking_digits_are_warned_of_once_for_all_trials(
    tmp_path, small_train, caplog, model
):
    """Every trial's train() had said it again, of "the training rows", not the file; a
    classical study (no train()) had said nothing."""
    low = small_train.labels < 5
    write_kaggle_csv(tmp_path / "low.csv", small_train.images[low][:300],
                     small_train.labels[low][:300])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
        epochs = {"epochs": 1} if model == "mlp" else {}  # refused for a classical model
        tune(TuneConfig(model=model, trials=2, **epochs), tmp_path / "low.csv", tmp_path / "out")
    said = f"{tmp_path / 'low.csv'}: its training rows hold no 5, 6, 7, 8, 9 (5 of the 10 digits)"
    assert caplog.text.count(said) == 1


@pytest.mark.parametrize("storage", ["", "  "])
def test_tune_refuses_an_empty_storage(tmp_path, small_csvs, storage):
    """tune --storage "" had been taken for OUT/study.db without OUT made: "unable to open
    database file", naming a database the user never gave. Blanks alone are as empty."""
    flags = ("tune", "--train", small_csvs["train"], "--model", "logreg", "--storage", storage,
             "--out", tmp_path / "tune")  # fmt: skip
    result = CliRunner().invoke(app, [str(flag) for flag in flags])
    assert result.exit_code == 1
    assert result.output.startswith("error: --storage is empty; give an Optuna URL")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("study_name", ["", "  "])
def test_tune_refuses_an_empty_study_name(tmp_path, small_csvs, study_name):
    """tune --study-name "" had quietly tuned the study tune-MODEL, one the user never named."""
    flags = ("tune", "--train", small_csvs["train"], "--model", "logreg", "--study-name",
             study_name, "--out", tmp_path / "tune")  # fmt: skip
    result = CliRunner().invoke(app, [str(flag) for flag in flags])
    assert result.exit_code == 1
    assert result.output.startswith("error: --study-name is empty; give the study's name")
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
