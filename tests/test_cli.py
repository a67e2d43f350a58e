"""End to end through the real `digits` commands (typer's CliRunner), on small real slices."""

import errno
import functools
import importlib.metadata
import inspect
import io
import json
import logging
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.logging import RichHandler
from typer.main import get_command
from typer.testing import CliRunner

from digit_recognizer.cli import app, one_line, predict_config
from digit_recognizer.data.kaggle_csv import write_kaggle_csv
from digit_recognizer.data.replica import replica_files
from digit_recognizer.errors import DigitsError, counted, first_line
from digit_recognizer.evaluate import compute_metrics
from digit_recognizer.fileio import locked_dir
from digit_recognizer.interrupts import Terminated, interruption_behind, stop_signals_interrupt
from digit_recognizer.logs import hushed, log_handler
from digit_recognizer.models.registry import available
from digit_recognizer.predict import PredictConfig, Predictor, conform_rows, predict_csv

from .test_images import frame_filling

runner = CliRunner()
SMALL_RECIPE = ["--epochs", "2", "--lr", "0.02", "--batch-size", "64"]


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def test_version_is_the_installed_distributions():
    """One version, in __init__.py; pyproject.toml reads it from there for the metadata."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"digit-recognizer {importlib.metadata.version('digit-recognizer')}\n"


# A pipe's output as rich writes it without a terminal: no colour or width forced.
FORCING = ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
PLAIN_PIPE = {key: value for key, value in os.environ.items() if key not in FORCING}


def test_a_path_the_output_cannot_encode_is_printed_escaped(tmp_path, small_csvs):
    """Under PYTHONIOENCODING=ascii (or a latin-1 locale) a finished command had failed with a
    traceback when it printed a path holding 'ä' or '✓'."""
    csv = tmp_path / "dätä" / "train ✓.csv"
    csv.parent.mkdir()
    csv.write_bytes(small_csvs["train"].read_bytes())
    done = subprocess.run([sys.executable, "-m", "digit_recognizer", "data", "check", str(csv)],
                          env=PLAIN_PIPE | {"PYTHONIOENCODING": "ascii"}, capture_output=True,
                          text=True, encoding="ascii")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{tmp_path}/d\\xe4t\\xe4/train \\u2713.csv: ")


def test_a_long_path_is_printed_whole_in_a_pipe(tmp_path, small_csvs):
    """In a pipe rich wraps at 80 columns: a path longer than that, in "wrote PATH", had been
    broken in two, and could not be copied or grepped."""
    out = tmp_path / ("a" * 80) / "preview.png"
    done = subprocess.run([sys.executable, "-m", "digit_recognizer", "augment-preview",
                           str(small_csvs["train"]), "--n", "1", "--out", str(out)], env=PLAIN_PIPE,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}\n"


@pytest.mark.parametrize("forcing", [{}, {"FORCE_COLOR": "1"}])
def test_the_log_in_a_pipe_is_a_line_a_record(tmp_path, small_csvs, forcing):
    """Rich's log handler wraps and pads records to 80 columns where there is no terminal: a
    shard's path in "wrote PATH" had been split across lines in a log file. Also where CI
    forces colour, which rich takes for a terminal."""
    out = tmp_path / ("s" * 80)
    done = subprocess.run([sys.executable, "-m", "digit_recognizer", "data", "shard",
                           str(small_csvs["train"]), str(out), "--parts", "2"],
                          env=PLAIN_PIPE | forcing,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = [line for line in done.stderr.splitlines() if "wrote" in line]
    assert written == [f"INFO     wrote {out / name} (1,500 rows)" for name in
                       ("part-00000.csv", "part-00001.csv")]  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress_record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": message, "levelno": logging.INFO, "levelname": "INFO"})


def test_the_log_on_a_terminal_is_riches_in_the_records_format():
    """On a terminal rich's columns stay, a side-by-side member's prefix in each record; a
    closed stream is no terminal (stderr closed under a test's runner)."""
    console = Console(file=_Terminal(), width=200, color_system=None)
    handler = log_handler(console, "member 2: %(message)s")
    assert isinstance(handler, RichHandler)
    handler.handle(progress_record("epoch done"))
    assert "member 2: epoch done" in console.file.getvalue()
    closed = io.StringIO()
    closed.close()
    assert not isinstance(log_handler(Console(file=closed)), RichHandler)


def test_the_log_on_a_terminal_shows_the_level_and_message_alone():
    """No time column (the progress bars time the work) and no column naming the module's
    file and line, which mean nothing to a user."""
    console = Console(file=_Terminal(), width=200, color_system=None)
    record = logging.LogRecord("digit_recognizer.train", logging.INFO, "/src/train.py", 12,
                               "epoch done", None, None)  # fmt: skip
    log_handler(console).handle(record)
    assert console.file.getvalue().split() == ["INFO", "epoch", "done"]


def test_the_log_in_a_pipe_follows_stderr_and_keeps_the_records_format(monkeypatch):
    """A record goes to stderr as it is when written, not as it was when the handler was made:
    a test's runner swaps stderr and closes its own, and a later record written there had
    failed with a traceback. A side-by-side member's prefix follows the level."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = log_handler(Console(stderr=True), "member 2: %(message)s")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    handler.handle(progress_record("epoch done"))
    assert second.getvalue() == "INFO     member 2: epoch done\n"


def test_hushed_keeps_the_errors_of_its_logger_alone_and_restores_its_level():
    """An ensemble's later members hush the warnings the first gave: that logger's errors still
    show, the package's other loggers are untouched, and the level comes back after the block,
    also where it ends in an exception."""
    module = logging.getLogger("digit_recognizer.hushed_by_a_test")
    package_level = logging.getLogger("digit_recognizer").level
    module.setLevel(logging.INFO)
    try:
        with pytest.raises(ValueError), hushed(module.name):
            assert not module.isEnabledFor(logging.WARNING) and module.isEnabledFor(logging.ERROR)
            assert logging.getLogger("digit_recognizer").level == package_level
            raise ValueError
        assert module.level == logging.INFO
    finally:
        module.setLevel(logging.NOTSET)


def test_the_interruption_behind_an_error_is_this_calls_and_found_through_a_loop():
    """An error raised while handling Ctrl-C is that interruption's; one handled by the
    caller's callers is not this call's, and contexts looped by hand end the search."""
    interrupt, failure = KeyboardInterrupt(), OSError(errno.EIO, "Input/output error")
    failure.__context__ = interrupt
    assert interruption_behind(failure) is interrupt
    assert interruption_behind(failure, outer=interrupt) is None
    first, second = ValueError(), ValueError()
    first.__context__, second.__context__ = second, first
    assert interruption_behind(first) is None


def test_sighup_stops_a_command_as_ctrl_c_does_unless_nohup_ignores_it(monkeypatch):
    """A closed terminal or ssh session (SIGHUP) had killed a command where it stood, its
    temporary files and `.lock` left behind; under nohup (SIGHUP ignored) it must go on. A
    closed terminal also fails the cleanup's writes to it (EIO): still the interruption."""
    from digit_recognizer.models import registry

    def hung_up(closed_terminal: bool):
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1)  # the handler runs at the next bytecode, well before this ends
        finally:
            if closed_terminal:  # a progress bar stopped, writing to it
                raise OSError(errno.EIO, "Input/output error")
        return []

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal, not nohup
    try:
        for closed_terminal in (False, True):
            monkeypatch.setattr(registry, "available", functools.partial(hung_up, closed_terminal))
            result = invoke("models")
            assert result.exit_code == 128 + signal.SIGHUP, result.output
            assert "interrupted" in result.output and "Input/output" not in result.output
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        monkeypatch.setattr(registry, "available", functools.partial(hung_up, False))
        assert invoke("models").exit_code == 0  # the SIGHUP sent is ignored
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sigterm_stops_the_block_as_ctrl_c_does_and_its_handler_comes_back():
    """`kill`, `timeout` and job schedulers send SIGTERM: within the block it raises the
    interruption, naming the signal (the exit status is 128 + it); outside, the handler that
    was there before runs again."""
    before = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: before.append(signum))
    try:
        with pytest.raises(Terminated) as raised, stop_signals_interrupt():
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode, well before this ends
        assert raised.value.signum == signal.SIGTERM and not before
        assert isinstance(raised.value, KeyboardInterrupt)
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0)
        assert before == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_trains_predicts_and_writes_a_run_directory(tmp_path, small_csvs):
    run_dir = tmp_path / "run"
    result = invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"],
                    "--out", run_dir, *SMALL_RECIPE)  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("config.toml", "metrics.json", "history.csv", "model.safetensors", "model.json",
                 "learning_curves.png", "confusion_matrix.png", "submission.csv"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] > 0.85 and metrics["epochs_run"] == 2
    assert metrics["torch_threads"] == torch.get_num_threads()  # a CPU run repeats on as many

    scored = invoke("score", small_csvs["solution"], run_dir / "submission.csv")
    assert scored.exit_code == 0
    assert float(scored.output.split()[-1]) > 0.85  # chance is 0.10

    # The default preset predicts with test-time augmentation; metrics.json says so, and
    # `digits predict --tta` reproduces the submission.
    assert metrics["test_tta"] is True and "│ test-time augmentation │ 5 views" in result.output
    again = tmp_path / "again.csv"
    assert invoke("predict", run_dir, small_csvs["test"], "--out", again, "--tta").exit_code == 0
    assert again.read_bytes() == (run_dir / "submission.csv").read_bytes()

    # The same command again would train over the run: refused; --resume continues it (here it
    # had finished: nothing left to train) and writes the same submission.
    submission = (run_dir / "submission.csv").read_bytes()
    again_args = ("run", "--train", small_csvs["train"], "--test", small_csvs["test"], "--out",
                  run_dir, *SMALL_RECIPE)  # fmt: skip
    refused = invoke(*again_args)
    assert refused.exit_code == 1
    assert f"{run_dir} already holds a training run (checkpoint.pt)" in refused.output
    assert (run_dir / "submission.csv").read_bytes() == submission
    resumed = invoke(*again_args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (run_dir / "submission.csv").read_bytes() == submission

    plain_dir = tmp_path / "plain"
    result = invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"],
                    "--out", plain_dir, *SMALL_RECIPE, "--epochs", "1", "--no-tta")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((plain_dir / "metrics.json").read_text())["test_tta"] is False
    assert invoke("predict", plain_dir, small_csvs["test"], "--out", again).exit_code == 0
    assert again.read_bytes() == (plain_dir / "submission.csv").read_bytes()


def test_an_ensembles_summary_gives_its_members_mean_accuracy_and_each_ones_epochs(
    tmp_path, small_csvs, monkeypatch
):
    """Each member validates on its own split: their mean, under "cnn x 5", had read as the
    ensemble's own validation accuracy."""
    from digit_recognizer import pipeline
    from digit_recognizer.pipeline import RunSummary

    def summary(configs, *args, **kwargs):
        return RunSummary(tmp_path, tmp_path / "submission.csv", n_members=len(configs),
                          parallel=1, train_seconds=1.0, wall_seconds=1.0,
                          epochs_run=(3, 2.5, 3, 3, 3)[: len(configs)], valid_accuracy=0.99,
                          test_accuracy=None)  # fmt: skip

    monkeypatch.setattr(pipeline, "run_job", summary)
    for preset, label in (("best", "validation accuracy, members' mean"),
                          ("fast", "validation accuracy ")):  # fmt: skip
        result = invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"],
                        "--preset", preset, "--out", tmp_path / preset)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert label in result.output and "0.9900" in result.output
        assert ("members' mean" in result.output) == (preset == "best")
        # Patience or a time budget stops members apart: the first one's epochs were all shown.
        each_ones = "epochs, each member's" in result.output and "3, 2.5, 3, 3, 3" in result.output
        assert each_ones == (preset == "best")


def test_the_main_job_predicts_rows_as_they_are_with_as_is(tmp_path, small_csvs, monkeypatch):
    """Training on rows not in MNIST's layout warns to predict them with --as-is, which `digits
    run` lacked: it predicted its test rows redone as MNIST's, whatever the net had seen."""
    from digit_recognizer import pipeline

    conformed = []
    monkeypatch.setattr(pipeline, "run_job", lambda *args, predict_config, **kwargs:
                        conformed.append(predict_config.conform))  # fmt: skip
    for flags in ((), ("--as-is",)):
        invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"], *flags)
    assert conformed == [True, False]


def test_the_main_job_predicts_on_the_device_it_trains_on(tmp_path, small_csvs, monkeypatch):
    """`digits run --device cpu` (or a --config's device and amp) had trained as asked and then
    predicted the test rows on the default device, auto: the GPU, where there was one."""
    from digit_recognizer import pipeline

    predicted_with = []

    def run_job(*args, predict_config, **kwargs):
        predicted_with.append((predict_config.device, predict_config.amp))

    monkeypatch.setattr(pipeline, "run_job", run_job)
    toml = tmp_path / "recipe.toml"
    toml.write_text("amp = false\n")
    for flags in ((), ("--device", "cpu"), ("--config", toml)):
        invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"], *flags)
    assert predicted_with == [("auto", True), ("cpu", True), ("auto", False)]


def test_train_then_evaluate(tmp_path, small_csvs):
    run_dir = tmp_path / "trained"
    trained = invoke("train", "--train", small_csvs["train"], "--out", run_dir, *SMALL_RECIPE,
                     "--elastic", "1.5", "--stroke", "0.5", "--styles", "0.5")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "validation accuracy" in trained.output
    config = (run_dir / "config.toml").read_text()
    assert "elastic = 1.5" in config and "stroke = 0.5" in config and "styles = 0.5" in config
    result = invoke("evaluate", run_dir, small_csvs["train"])
    assert result.exit_code == 0, result.output
    assert "macro F1" in result.output and "ROC-AUC" in result.output
    assert (run_dir / "eval_metrics.json").is_file()
    # Two runs' average is neither's: its figures go to --out, not into the first run.
    (run_dir / "eval_metrics.json").unlink()
    twin = shutil.copytree(run_dir, tmp_path / "twin")  # one run twice is refused: weighs double
    pair = invoke("evaluate", run_dir, twin, small_csvs["train"], "--out", tmp_path / "pair")
    assert pair.exit_code == 0 and (tmp_path / "pair" / "eval_metrics.json").is_file()
    assert not (run_dir / "eval_metrics.json").exists()


@pytest.fixture
def frame_filling_csvs(tmp_path, small_test):
    """120 test digits laid out as another collection's (which predict conforms by default):
    unlabelled and labelled CSVs, and the images and labels themselves."""
    images = np.stack([frame_filling(image) for image in small_test.images[:120]])
    labels = small_test.labels[:120]
    unlabelled, labelled = tmp_path / "filled.csv", tmp_path / "filled-labelled.csv"
    write_kaggle_csv(unlabelled, images)
    write_kaggle_csv(labelled, images, labels)
    return unlabelled, labelled, images, labels


def test_predict_as_is_predicts_rows_unconformed(tmp_path, tiny_run, frame_filling_csvs):
    test_csv = frame_filling_csvs[0]
    as_is, conformed = tmp_path / "as-is.csv", tmp_path / "conformed.csv"
    as_is_labels = predict_csv([tiny_run], test_csv, as_is, PredictConfig(conform=False))
    conformed_labels = predict_csv([tiny_run], test_csv, conformed, PredictConfig())
    assert (as_is_labels != conformed_labels).any()  # else the flag could not be seen here
    for flags, expected in (((), conformed), (("--as-is",), as_is)):
        out = tmp_path / f"submission{''.join(flags)}.csv"
        result = invoke("predict", tiny_run, test_csv, "--out", out, *flags)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == expected.read_bytes(), flags


def test_evaluate_scores_with_tta_and_as_is(tmp_path, tiny_run, frame_filling_csvs):
    _, labelled, images, labels = frame_filling_csvs

    def scores_line(config):
        predictor = Predictor.load([tiny_run], config)
        images_seen = conform_rows(images, config, "", predictor.layout_judge)
        probas = predictor.predict_proba(images_seen)
        metrics = compute_metrics(labels, probas)
        return (f"accuracy {metrics.accuracy:.4f}  macro F1 {metrics.macro_f1:.4f}  "
                f"ROC-AUC (one-vs-rest) {metrics.roc_auc_ovr:.5f}")  # fmt: skip

    # Both flags at once: the scores differ from those of either flag dropped, or both.
    expected = scores_line(PredictConfig(tta=True, conform=False))
    for config in (PredictConfig(), PredictConfig(tta=True), PredictConfig(conform=False)):
        assert scores_line(config) != expected
    result = invoke("evaluate", tiny_run, labelled, "--tta", "--as-is", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert expected in result.output, result.output


def test_user_errors_are_one_line_without_traceback(tmp_path, small_csvs):
    bad = tmp_path / "bad.csv"
    lines = small_csvs["train"].read_text().splitlines()[:4]
    cells = lines[2].split(",")
    cells[-1] = "abc"
    lines[2] = ",".join(cells)
    bad.write_text("\n".join(lines) + "\n")
    for args in (("data", "check", bad), ("train", "--train", bad, "--out", tmp_path / "r")):
        result = invoke(*args)
        assert result.exit_code == 1
        assert "line 3, column pixel783: 'abc' is not an integer" in result.output
        assert "Traceback" not in result.output
    unknown = invoke("train", "--train", small_csvs["train"], "--model", "cnnn")
    assert unknown.exit_code == 1 and "Did you mean 'cnn'" in unknown.output
    one_model = invoke("train", "--train", small_csvs["train"], "--jobs", "2")
    assert one_model.exit_code == 1 and "one model trains in one process" in one_model.output
    both = invoke("run", "--train", small_csvs["train"], "--test", small_csvs["test"],
                  "--replica-seed", "5")  # fmt: skip
    assert both.exit_code == 1 and "give one or the other" in both.output  # not silently ignored
    no_csv = invoke("predict", small_csvs["test"])
    assert no_csv.exit_code == 2 and "at least one run directory and then a CSV" in no_csv.output
    # Nothing to continue: a new runs/<time>-<model> would have trained from scratch.
    no_run = invoke("train", "--train", bad, "--resume", "--epochs", "1", "--time-budget", "1")
    assert no_run.exit_code == 2 and "--resume needs --out RUN_DIR" in no_run.output
    resuming = tmp_path / "resume.toml"
    resuming.write_text("resume = true\n")
    no_out = invoke("train", "--train", bad, "--config", resuming, "--epochs", "1")
    assert no_out.exit_code == 2 and (
        f"{resuming} sets resume = true, which needs --out RUN_DIR (the run to continue); give "
        "it, or --no-resume"
    ) in " ".join(no_out.output.replace("│", " ").split()), no_out.output


def test_brackets_in_paths_and_cells_are_printed_as_they_are(tmp_path, small_csvs):
    """Rich read them as markup: "[/]" in a cell crashed the one-line error with a traceback,
    and a file named bad[red].csv was reported as bad.csv."""
    lines = small_csvs["train"].read_text().splitlines()[:4]
    lines[2] = lines[2].rsplit(",", 1)[0] + ",[/]"
    bad = tmp_path / "bad[red].csv"
    bad.write_text("\n".join(lines) + "\n")
    result = invoke("data", "check", bad)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad[red].csv, line 3, column pixel783: '[/]' is not an integer" in result.output
    good = tmp_path / "[test].csv"
    good.write_text("\n".join(lines[:2]) + "\n")
    assert f"{good}: 1 row," in " ".join(invoke("data", "check", good).output.split())


def test_augment_preview_shows_the_default_presets_stroke():
    """In the command and in the function it calls alike."""
    from digit_recognizer.cli import augment_preview
    from digit_recognizer.eda import augment_preview as preview
    from digit_recognizer.presets import get_preset

    for function in (augment_preview, preview):
        default = inspect.signature(function).parameters["stroke"].default
        assert default == get_preset("default").overrides["stroke"]


@pytest.mark.parametrize("seed", [2**32, -1])
def test_every_seed_flag_refuses_what_numpy_and_sklearn_refuse(tmp_path, seed):
    """augment-preview and data kaggle took seeds past 2**32 - 1 (torch failed at 2**64 with a
    traceback), and run --replica-seed built such a replica, where every other command refuses.
    One check says it of both ends: -1 had been typer's usage error (exit 2), in other words."""
    csv = tmp_path / "train.csv"
    for command, flag in [(("augment-preview", csv, "--out", tmp_path / "p.png"), "--seed"),
                          (("data", "kaggle", tmp_path / "replica"), "--seed"),
                          (("data", "expand", csv, tmp_path / "x", "--copies", 1, "--parts", 1),
                           "--seed"),
                          (("run", "--out", tmp_path / "run"), "--replica-seed"),
                          (("compare", "--train", csv, "--models", "knn", "--out",
                            tmp_path / "compare"), "--seed"),
                          (("tune", "--train", csv, "--out", tmp_path / "tune"), "--seed"),
                          # Its own words had left out the seed given.
                          (("train", "--train", csv), "--seed")]:  # fmt: skip
        result = invoke(*command, flag, seed)
        assert result.exit_code == 1, command
        assert f"error: {flag} must be from 0 to 2**32 - 1, got {seed}\n" in result.output, command
    assert list(tmp_path.iterdir()) == []  # refused before anything was read or written


def test_the_stroke_range_is_stated_and_held_by_the_flag(tmp_path):
    """Training's stroke change stops at a full dilation or erosion (1): --help says so, and a
    larger --stroke is refused, naming the flag, in training's words, before any file is read
    (train's had said "flags: stroke must be in [0, 1]", augment-preview's not even that, then
    both typer's usage error, where --elastic 30 was training's error)."""
    csv = tmp_path / "train.csv"
    for command in (("augment-preview", csv), ("train", "--train", csv), ("run",)):
        for flag, value, problem in (("--stroke", 1.5, "must be in [0, 1]"),
                                     ("--elastic", 30, "must be in [0, 28]")):  # fmt: skip
            result = invoke(*command, flag, value)
            assert result.exit_code == 1 and f"error: {flag} {problem}" in result.output, command
        stated = " ".join(invoke(command[0], "--help").output.split("--stroke")[1].split())
        assert "in [0, 1]" in stated, command
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "key", "value", "problem"),
    [
        ("--augment", "augment", -1, "must be >= 0"),
        ("--elastic", "elastic", -1, "must be in [0, 28] (pixels: the image's size)"),
        ("--stroke", "stroke", 1.5, "must be in [0, 1]"),
        ("--styles", "styles", -0.5, "must be in [0, 1]"),
        ("--time-budget", "time_budget_s", -1, "must be >= 0 (0: no budget)"),
        ("--max-memory", "max_memory_gb", -1, "must be >= 0 (0: always stream)"),
    ],
)
def test_a_training_setting_out_of_range_is_refused_alike_as_a_flag_or_a_toml_key(
    tmp_path, flag, key, value, problem
):
    """TrainConfig checks the range, whichever gave the value: --stroke 1.5 had been typer's
    usage error (exit 2, in its own words), stroke = 1.5 in a --config a ConfigError (exit 1)."""
    toml = tmp_path / "recipe.toml"
    toml.write_text(f"{key} = {float(value)}\n")
    for command in (("train", "--train", tmp_path / "train.csv"), ("run",)):
        as_flag = invoke(*command, flag, value)
        refused = f"{problem}, got {float(value)}\n"  # the value given, as typer had said it
        assert (as_flag.exit_code, as_flag.output) == (1, f"error: {flag} {refused}"), command
        in_toml = invoke(*command, "--config", toml)
        assert (in_toml.exit_code, in_toml.output) == (1, f"error: {toml}: {key} {refused}")
    assert [path.name for path in tmp_path.iterdir()] == ["recipe.toml"]  # nothing read


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [("train", "--nproc", 0), ("run", "--nproc", -2), ("predict", "--nproc", 0),
     ("train", "--jobs", 0), ("run", "--jobs", -1)],
)  # fmt: skip
def test_a_count_out_of_range_is_the_commands_error_naming_its_flag(tmp_path, command, flag, value):
    """--nproc and --patience had kept typer's minimum, a usage error (exit 2) in its words
    ("Invalid value for '--nproc': 0 is not in the range x>=1") where every other range is the
    command's error, naming the flag, "must be ..., got X"; before any file is read."""
    before = {"train": ("--train", tmp_path / "train.csv"), "run": (),
              "predict": (tmp_path / "run", tmp_path / "test.csv")}[command]  # fmt: skip
    result = invoke(command, *before, flag, value)
    # The error alone: --jobs had been refused once the progress bar had started, a blank line.
    assert (result.exit_code, result.output) == (1, f"error: {flag} must be >= 1, got {value}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_data_commands_count_out_of_range_is_its_own_error_naming_the_flag(tmp_path, small_csvs):
    """`data shard --parts 0` and `data expand --copies 0` had been typer's usage error, where
    `--parts 5000` (past the rows) was the command's, in other words."""
    csv = small_csvs["train"]
    for args, problem in [
        (("shard", csv, tmp_path / "s", "--parts", "0"),
         "--parts must be from 1 to the number of rows to shard (3,000), got 0"),
        (("expand", csv, tmp_path / "e", "--copies", "0", "--parts", "1"),
         "--copies must be >= 1, got 0"),
        (("expand", csv, tmp_path / "e", "--copies", "1", "--parts", "-1", "--valid-size", "0"),
         "--parts must be from 1 to the number of rows to shard (3,000: the 3,000 rows, times "
         "--copies 1), got -1"),
    ]:  # fmt: skip
        result = invoke("data", *args)
        assert (result.exit_code, result.output) == (1, f"error: {problem}\n"), args
    assert list(tmp_path.iterdir()) == []


def test_augment_preview_draws_at_most_40_augmentations_an_image(tmp_path):
    """--n 300 had taken minutes to draw a PNG 33,000 pixels wide; past 40 it is refused
    before the file is read, as the other ranges are (typer's usage error had said it)."""
    for n in (41, 0):
        result = invoke("augment-preview", tmp_path / "train.csv", "--n", n)
        refused = f"error: --n must be from 1 to 40, got {n}\n"
        assert (result.exit_code, result.output) == (1, refused)
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_cannot_be_written_is_one_line_too(tmp_path, tiny_run, small_csvs):
    """An --out naming a directory, a path through a file, or files of others: said, no
    traceback."""
    for args, message in [
        (("predict", tiny_run, small_csvs["test"], "--out", tmp_path),
         "a folder, where a file is to be written"),
        (("augment-preview", small_csvs["train"], "--out", small_csvs["train"] / "x.png"),
         "cannot be written"),
        (("data", "kaggle", small_csvs["train"]), "not a directory"),
        (("data", "kaggle", small_csvs["train"].parent), "is not a replica's"),  # kept
        (("train", "--train", small_csvs["train"], "--out", small_csvs["test"]),
         "a file, where the run directory would go"),
        (("data", "shard", small_csvs["train"], small_csvs["test"], "--parts", "2"),
         "cannot be made a directory"),
        (("tune", "--train", small_csvs["train"], "--model", "knn", "--out", small_csvs["test"]),
         "test.csv is a file, not a folder"),
        (("eda", small_csvs["train"], "--out", small_csvs["test"]), "cannot be made a directory"),
        (("predict", tiny_run, small_csvs["test"], "--out", small_csvs["test"]),
         "is the CSV to predict"),
        (("predict", tiny_run, f"{small_csvs['test'].parent}/*.csv", "--out",
          small_csvs["test"].parent / "submission.csv"), "matches it, and would read the "
         "submission as rows next time"),  # a second run had read it as a shard
        (("train", "--train", tmp_path / "missing.csv", "--nproc", "2", "--out", tmp_path / "d"),
         "missing.csv"),  # checked before torchrun starts
        (("predict", tmp_path / "no-run", small_csvs["test"], "--nproc", "2"),
         "no-run/model.json: not found"),
    ]:  # fmt: skip
        result = invoke(*args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and "torchrun" not in result.output
    # Nor does a submission go over a file that is none: a run's model.json, a training CSV.
    model_json = tmp_path / "model.json"
    model_json.write_text('{"model": "cnn"}\n')
    result = invoke("predict", tiny_run, small_csvs["test"], "--out", model_json)
    assert result.exit_code == 1 and "exists and is no submission" in result.output
    assert model_json.read_text() == '{"model": "cnn"}\n'
    # The refused writes leave no temporary file behind (the first one was written in full).
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))
    # Numbers out of range are refused before anything runs, the command's own error.
    assert invoke("data", "kaggle", tmp_path / "k", "--seed", "-3").exit_code == 1
    assert not (tmp_path / "k").exists()


def test_data_check_summarises(small_csvs):
    result = invoke("data", "check", small_csvs["train"])
    assert result.exit_code == 0 and "3,000 rows" in result.output


def test_data_check_checks_a_submission_against_its_test_file(tmp_path, small_csvs):
    n_test = len(small_csvs["test"].read_text().splitlines()) - 1
    submission = tmp_path / "submission.csv"
    submission.write_text("ImageId,Label\n" + "".join(f"{i},7\n" for i in range(1, n_test + 1)))
    result = invoke("data", "check", submission, "--test", small_csvs["test"])
    assert result.exit_code == 0
    assert " ".join(result.output.split()) == (
        f"{submission}: {n_test:,} rows, labels of ImageIds 1 to {n_test}; "
        f"class counts 0:0 1:0 2:0 3:0 4:0 5:0 6:0 7:{n_test} 8:0 9:0"
    )
    submission.write_text("ImageId,Label\n" + "".join(f"{i},7\n" for i in range(1, n_test)))
    short = invoke("data", "check", submission, "--test", small_csvs["test"])
    assert short.exit_code == 1
    missing = f"ImageId {n_test} is missing; expected {n_test:,} rows"
    assert missing in " ".join(short.output.split())
    # A blank line ending the test file is its own error, not one row more of it.
    broken_test = tmp_path / "test.csv"
    broken_test.write_text(small_csvs["test"].read_text() + "\n")
    broken = invoke("data", "check", submission, "--test", broken_test)
    assert broken.exit_code == 1
    assert f"{broken_test}, line {n_test + 2}: empty line" in " ".join(broken.output.split())


def test_models_lists_the_registry():
    result = invoke("models")
    assert result.exit_code == 0
    rows = (line.split("│") for line in result.output.splitlines())
    listed = {cells[1].strip() for cells in rows if len(cells) > 2}
    assert set(available()) <= listed


def test_second_train_into_a_busy_run_directory_refuses(tmp_path, small_csvs):
    run_dir = tmp_path / "busy"
    with locked_dir(run_dir):  # as a first `digits train` holds it while training
        result = invoke("train", "--train", small_csvs["train"], "--out", run_dir, *SMALL_RECIPE)
        # --nproc: refused before torchrun starts (its ranks had taken 30 s and two errors).
        launched = invoke("train", "--train", small_csvs["train"], "--out", run_dir, "--nproc",
                          "2", *SMALL_RECIPE)  # fmt: skip
    assert result.exit_code == launched.exit_code == 1
    assert f"{run_dir} is in use by process {os.getpid()}" in result.output
    assert f"{run_dir} is in use by process {os.getpid()}" in launched.output
    assert "torchrun" not in launched.output
    assert not (run_dir / "config.toml").exists()  # nothing of the first run was touched


def test_python_dash_m_runs_the_digits_command(tmp_path):
    # Where no entry point is installed (a source tree on a GPU machine): `python -m`.
    done = subprocess.run([sys.executable, "-m", "digit_recognizer", "score", "--help"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: digits score" in done.stdout
    # The modules are no entry points: run so, they say what to run instead of doing nothing.
    done = subprocess.run([sys.executable, "-m", "digit_recognizer.train", "--train", "x.csv"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and "run `python -m digit_recognizer train ...`" in done.stderr


@pytest.mark.parametrize("command", ["run", "train", "evaluate", "serve", "export", "tune"])
def test_help_shows_the_defaults_written_into_it(command):
    """Options whose default depends on the preset or the run say it in their help text, in
    brackets that rich would otherwise take for markup and drop."""
    output = invoke(command, "--help").output
    assert "default:" in output
    assert all(before.endswith(("[", "(")) for before in output.split("default:")[:-1]), output


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_tta_help_says_it_is_off_unless_asked(command):
    """`digits run` predicts with TTA, predict and evaluate only when asked: their --tta says
    so (it had named no default, where run's names the preset's)."""
    options = {param.name: param for param in get_command(app).commands[command].params}
    help_text = options["tta"].help.replace("\\[", "[")  # the escape rich's markup needs
    assert help_text.endswith("[default: the --config's tta, else no-tta]")


@pytest.mark.parametrize("command, default", [
    ("predict", "the --config's conform, else conform"),
    ("evaluate", "the --config's conform, else conform"),
    ("run", "conform"), ("report", "conform"), ("explain", "conform"),
])  # fmt: skip
def test_as_is_help_names_the_default_of_its_own_command(command, default):
    """run, report and explain take no PredictConfig: their --as-is had named predict's and
    evaluate's default, "the --config's conform", beside run's --config of TrainConfig keys."""
    options = {param.name: param for param in get_command(app).commands[command].params}
    assert options["as_is"].help.replace("\\[", "[").endswith(f"[default: {default}]")


def test_every_option_says_what_it_is_besides_its_default():
    """export --out, tune --out and --study-name had shown a default alone."""
    bare = []
    groups = [("", get_command(app))]
    while groups:
        prefix, group = groups.pop()
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                groups.append((f"{prefix}{name} ", command))
                continue
            for param in command.params:
                said = re.sub(r"\\\[default: [^]]*\]", "", getattr(param, "help", None) or "")
                if not said.strip():
                    bare.append(f"{prefix}{name} {param.name}")
    assert not bare


def test_models_table_shows_each_kind_and_description():
    """Not only the names: the kind and a description of each, which is what one reads it for."""
    from digit_recognizer.models import get_spec

    result = invoke("models")
    assert result.exit_code == 0 and "classical" in result.output and "net" in result.output
    words = " ".join(result.output.split())
    assert get_spec("knn").description.split()[0] in words


def test_data_kaggle_and_serve_pass_their_options_on(tmp_path, monkeypatch):
    """--seed and --force reach the replica builder, --host the server's config; both
    stubbed here, as the options are the CLI's part (the builder writes 70,000 rows)."""
    calls = {}

    def build_replica(out_dir, **options):
        calls["replica"] = options
        return replica_files(out_dir)

    def run_server(_run_dir, config, **_announce):
        calls["serve"] = config

    monkeypatch.setattr("digit_recognizer.data.replica.build_replica", build_replica)
    monkeypatch.setattr("digit_recognizer.serve.run_server", run_server)
    result = invoke("data", "kaggle", tmp_path / "k", "--seed", "7", "--force")
    assert result.exit_code == 0 and calls["replica"] == {"seed": 7, "overwrite": True}
    result = invoke("serve", tmp_path, "--host", "0.0.0.0", "--port", "8123")
    assert result.exit_code == 0, result.output
    assert (calls["serve"].host, calls["serve"].port) == ("0.0.0.0", 8123)


def test_an_os_error_is_one_line_too(tmp_path, tiny_run):
    """A name too long (or a folder without permission, which root does not meet) had ended
    in a traceback from pathlib."""
    result = invoke("predict", tiny_run, tmp_path / ("a" * 300 + ".csv"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "File name too long" in result.output and result.output.count("\n") <= 2


def test_os_errors_name_both_paths_or_at_least_their_kind():
    """A failed rename had named its source only; an OSError without arguments printed
    "error: " and nothing."""
    rename = OSError(18, "Invalid cross-device link", "/a", None, "/b")
    assert one_line(rename) == "/a -> /b: Invalid cross-device link"
    assert one_line(TimeoutError()) == "TimeoutError"


def test_counts_are_plural_unless_one_and_thousands_separated():
    assert [counted(n, "row") for n in (0, 1, 2, 42_000)] == [
        "0 rows", "1 row", "2 rows", "42,000 rows"
    ]  # fmt: skip


def test_a_quoted_error_is_one_line_of_200_characters_at_most():
    """torch's messages run to pages and over lines; one without a message is named by type."""
    assert first_line(RuntimeError("shapes\n  cannot be\tmultiplied ")) == (
        "shapes cannot be multiplied"
    )
    assert first_line(ValueError("x" * 200)) == "x" * 200
    assert first_line(ValueError("x" * 201)) == "x" * 200 + "..."
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError(" \n ")) == "ValueError"


def test_an_error_names_its_rank_only_among_several(monkeypatch):
    """Under torchrun two ranks may fail on one line; a process alone has no rank to name."""
    error = DigitsError("train.csv, line 3: bad")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert one_line(error) == "train.csv, line 3: bad"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert one_line(error) == "rank 1: train.csv, line 3: bad"


def test_evaluate_takes_solution_and_config_on_the_command_line(tmp_path, tiny_run, small_csvs):
    toml = tmp_path / "predict.toml"
    toml.write_text("batch_sise = 33\n")
    args = ("evaluate", tiny_run, small_csvs["test"], "--solution", small_csvs["solution"],
            "--config", toml, "--out", tmp_path / "e")  # fmt: skip
    refused = invoke(*args)
    assert refused.exit_code == 1 and "did you mean 'batch_size'?" in refused.output
    toml.write_text("batch_size = 33\n")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "eval_metrics.json").is_file()


def test_a_tomls_switch_is_turned_off_by_its_flag(tmp_path, small_csvs):
    """`compile = true` in a TOML had no flag to undo it: --compile alone, no --no-compile."""
    toml = tmp_path / "recipe.toml"
    toml.write_text('compile = true\nmodel = "cnn-tiny"\nepochs = 1\nbatch_size = 64\n')
    result = invoke("train", "--train", small_csvs["train"], "--config", toml, "--no-compile",
                    "--valid-size", "0", "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "compile = false" in (tmp_path / "run" / "config.toml").read_text()


def trained_settings(monkeypatch: pytest.MonkeyPatch, *keys: str) -> list:
    """The ``keys`` settings (a tuple of several) of each training the commands then start,
    which train none."""
    from digit_recognizer import pipeline

    settings = []

    def train_jobs(configs, *args, **kwargs):
        settings.append(operator.attrgetter(*keys)(configs[0]))
        return []

    monkeypatch.setattr(pipeline, "train_jobs", train_jobs)
    return settings


def test_a_tomls_resume_is_turned_off_by_its_flag(tmp_path, small_csvs, monkeypatch):
    """`resume = true` in a TOML had no flag to undo it: --no-resume, shown in the help, was
    read as no flag at all, and the run in --out was continued."""
    resumed = trained_settings(monkeypatch, "resume")
    toml = tmp_path / "recipe.toml"
    toml.write_text("resume = true\n")
    for flags in ((), ("--no-resume",), ("--resume",)):
        invoke("train", "--train", small_csvs["train"], "--config", toml,
               "--out", tmp_path / "run", *flags)  # fmt: skip
    assert resumed == [True, False, True]


def test_a_tomls_or_presets_patience_is_turned_off_by_patience_0(tmp_path, small_csvs, monkeypatch):
    """`patience = 3` in a TOML (or the seed preset's 5) had no flag to undo it: --patience
    took only a number of epochs, and 0 was refused."""
    patiences = trained_settings(monkeypatch, "patience")
    toml = tmp_path / "recipe.toml"
    toml.write_text("patience = 3\n")
    for flags in ((), ("--patience", "0"), ("--patience", "2"), ("--preset", "seed"),
                  ("--preset", "seed", "--patience", "0")):  # fmt: skip
        result = invoke("train", "--train", small_csvs["train"], "--config", toml,
                        "--out", tmp_path / "run", *flags)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert patiences == [3, None, 2, 3, None]
    # Below 0, refused as TrainConfig refuses it in a TOML (typer's usage error had said it).
    refused = "patience must be >= 0 (0: no early stopping), got -1\n"
    result = invoke("train", "--train", small_csvs["train"], "--patience", "-1")
    assert (result.exit_code, result.output) == (1, f"error: --{refused}")
    toml.write_text("patience = -1\n")
    result = invoke("train", "--train", small_csvs["train"], "--config", toml)
    assert (result.exit_code, result.output) == (1, f"error: {toml}: {refused}")
    assert len(patiences) == 5  # nothing trained for the refused


def test_settings_once_only_in_a_toml_have_flags_checked_as_the_tomls(
    tmp_path, small_csvs, monkeypatch
):
    """amp, channels_last, ema_decay, widths and dropout could be set only in a --config TOML:
    no flag undid the default preset's EMA, or a TOML's widths."""
    keys = ("amp", "channels_last", "ema_decay", "widths", "dropout")
    settings = trained_settings(monkeypatch, *keys)
    toml = tmp_path / "recipe.toml"
    toml.write_text('model = "mlp"\nwidths = [64]\ndropout = 0.3\n')
    flags = ("--no-amp", "--no-channels-last", "--ema-decay", "0.99", "--widths", "32,16",
             "--dropout", "0.1")  # fmt: skip
    csvs = ("--train", small_csvs["train"], "--test", small_csvs["test"])
    invoke("train", *csvs[:2], "--config", toml, "--out", tmp_path / "run", *flags)
    invoke("run", *csvs, "--config", toml, "--out", tmp_path / "run", *flags)  # trains nothing
    invoke("train", *csvs[:2], "--config", toml, "--ema-decay", "0", "--widths", "none")
    assert settings == [(False, False, 0.99, (32, 16), 0.1)] * 2 + [(True, True, None, None, 0.3)]
    # Refused in the TOML's words, naming the flag.
    for flags, message in [(("--ema-decay", "1"), "--ema-decay must be in [0, 1) (0: no average)"),
                           (("--dropout", "-0.5"), "--dropout must be in [0, 1)"),
                           (("--widths", "8"), "--widths [8]: the compact CNN has 3 stages"),
                           (("--preset", "seed", "--widths", "8,16,32"),
                            "--widths: model 'seed-cnn' has no 'widths' setting")]:  # fmt: skip
        result = invoke("train", *csvs[:2], *flags)
        assert result.exit_code == 1 and f"error: {message}" in result.output, flags
    result = invoke("train", *csvs[:2], "--widths", "8,x")
    assert result.exit_code == 2 and "Invalid value for '--widths'" in result.output
    assert len(settings) == 3  # nothing trained for the refused


def test_a_tomls_lr_is_turned_back_to_the_optimizers_by_lr_none(tmp_path, small_csvs, monkeypatch):
    """tune's best_config.toml sets an lr tuned for SGD: `--config it --optimizer adam` had no
    flag to give Adam its own, and trained it at SGD's."""
    settings = trained_settings(monkeypatch, "optimizer", "lr")
    toml = tmp_path / "best_config.toml"
    toml.write_text("lr = 0.2\n")
    for flags in ((), ("--optimizer", "adam", "--lr", "none"), ("--lr", "0.01")):
        result = invoke("train", "--train", small_csvs["train"], "--config", toml, *flags)
        assert result.exit_code == 0, result.output
    assert settings == [("sgd", 0.2), ("adam", None), ("sgd", 0.01)]
    result = invoke("train", "--train", small_csvs["train"], "--lr", "fast")
    assert result.exit_code == 2 and "'fast': give a number (0.05), or none" in result.output


def test_a_predict_tomls_conform_is_turned_back_on_by_its_flag(tmp_path, small_csvs, monkeypatch):
    """`conform = false` in a predict --config had no flag to undo it: --as-is only turns
    it off."""
    from digit_recognizer import predict as predict_module

    conforms = []

    def predict_source(run_dirs, source, out, config):
        conforms.append(config.conform)
        return 0

    monkeypatch.setattr(predict_module, "predict_source", predict_source)
    toml = tmp_path / "predict.toml"
    toml.write_text("conform = false\n")
    for flags in ((), ("--conform",), ("--as-is",)):
        result = invoke("predict", tmp_path, small_csvs["test"], "--config", toml, *flags)
        assert result.exit_code == 0, result.output
    assert conforms == [False, True, False]


def test_a_predict_tomls_tta_is_turned_off_by_its_flag(tmp_path, tiny_run, small_csvs):
    """`tta = true` in a predict --config had no flag to undo it, as compile had none."""
    toml = tmp_path / "predict.toml"
    toml.write_text("tta = true\n")
    assert predict_config(toml, None, False, None).tta is True  # a flag left off keeps it
    assert predict_config(toml, False, False, None).tta is False
    result = invoke("predict", tiny_run, small_csvs["test"], "--config", toml, "--no-tta",
                    "--out", tmp_path / "submission.csv")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_the_command_logs_our_progress_and_only_other_libraries_warnings(
    tmp_path, tiny_run, small_csvs, monkeypatch
):
    from digit_recognizer import predict as predict_module

    def chatty_predict(*args, **kwargs):
        logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
        logging.getLogger("matplotlib").warning("a library's warning")
        logging.getLogger("digit_recognizer.predict").info("our progress")
        return 0

    monkeypatch.setattr(predict_module, "predict_source", chatty_predict)
    result = invoke("predict", tiny_run, small_csvs["test"], "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "our progress" in result.output and "a library's warning" in result.output
    assert "fontManager" not in result.output


def test_compare_resume_fits_only_the_models_not_scored_before(tmp_path, small_csvs, monkeypatch):
    """`digits compare --resume` passes its flag on: the models compare.json shows scored are
    kept, not fitted again (a night's nets, after a Ctrl-C in the last one)."""
    from digit_recognizer import compare as compare_module

    fitted = []

    def scored(name, *args):
        fitted.append(name)
        return {"model": name, "accuracy": 0.9, "macro_f1": 0.9, "fit_seconds": 1.0,
                "predict_seconds": 1.0, "parameters": 10}  # fmt: skip

    monkeypatch.setattr(compare_module, "_score_model", scored)
    command = ["compare", "--train", small_csvs["train"], "--out", tmp_path / "board"]
    first = invoke(*command, "--models", "knn")
    assert first.exit_code == 0, first.output
    resumed = invoke(*command, "--models", "knn,logreg", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert fitted == ["knn", "logreg"]
    assert "logreg" in resumed.output and "knn" in resumed.output


def test_a_classical_run_is_refused_naming_every_command_that_takes_it(tmp_path, small_train,
                                                                        small_csvs):  # fmt: skip
    """report, explain and export had said "`digits predict` takes both", though evaluate,
    predict-image and serve take a classical model's run too; each command named takes it."""
    from PIL import Image

    from digit_recognizer.estimator import build_estimator, save_estimator
    from digit_recognizer.serve import ServeConfig
    from digit_recognizer.serve.app import load_served_model

    run = tmp_path / "logreg"
    logreg = build_estimator("logreg", n_components=20)
    save_estimator(logreg.fit(small_train.images[:300], small_train.labels[:300]), run, "logreg")
    for command in (["report", run], ["explain", run, small_csvs["train"], "--index", "0"],
                    ["export", run], ["train", "--train", small_csvs["train"], "--model",
                                      "logreg"]):  # fmt: skip
        result = invoke(*command)
        assert result.exit_code == 1
        assert ("`digits predict`, `predict-image`, `evaluate` and `serve` take"
                in " ".join(result.output.split()))  # fmt: skip
    Image.fromarray(255 - small_train.images[0]).save(tmp_path / "digit.png")
    assert invoke("predict", run, small_csvs["test"], "--out", tmp_path / "sub.csv").exit_code == 0
    assert invoke("predict-image", run, tmp_path / "digit.png").exit_code == 0
    assert invoke("evaluate", run, small_csvs["train"]).exit_code == 0
    assert load_served_model(run, ServeConfig()).backend == "scikit-learn"


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [("--patience", -1, "must be >= 0 (0: no early stopping)"),
     ("--ema-decay", -1.0, "must be in [0, 1) (0: no average)")],
)  # fmt: skip
def test_a_flag_whose_0_is_off_says_so_when_refused(tmp_path, flag, value, problem):
    """--patience -1 had said "must be >= 1", --ema-decay -1 "must be in (0, 1)": their 0, off,
    was left out of what they take. Refused before any file is read."""
    for command in (("train", "--train", tmp_path / "train.csv"), ("run",)):
        result = invoke(*command, flag, value)
        assert (result.exit_code, result.output) == (1, f"error: {flag} {problem}, got {value}\n")
    assert list(tmp_path.iterdir()) == []
