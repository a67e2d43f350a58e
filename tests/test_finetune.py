"""Fine-tuning a trained run on other writers' digits: `digits train --init-from RUN`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from digit_recognizer.cli import app
from digit_recognizer.config import read_toml
from digit_recognizer.data.images import in_mnist_format
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.mnist import MNIST_TRAIN_ROWS
from digit_recognizer.data.shards import shard_csv
from digit_recognizer.errors import ConfigError, ModelFileError
from digit_recognizer.evaluate import evaluate_run
from digit_recognizer.models.storage import load_net
from digit_recognizer.pipeline import train_job, training_data
from digit_recognizer.predict import Predictor
from digit_recognizer.train import TrainConfig, train

from .conftest import TINY_RECIPE

SOURCE_WIDTHS = (8, 16, 32)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory, small_train: DigitSet) -> Path:
    """A `cnn-tiny` of its own widths, trained briefly: the run fine-tuning starts from."""
    run_dir = tmp_path_factory.mktemp("source_run")
    config = TrainConfig(**TINY_RECIPE | {"model": "cnn-tiny", "widths": SOURCE_WIDTHS})
    train(config, small_train, None, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def other_writers_csv(tmp_path_factory: pytest.TempPathFactory, small_test: DigitSet) -> Path:
    """200 digits as another collection holds them: dark ink on light paper."""
    path = tmp_path_factory.mktemp("other") / "other.csv"
    write_kaggle_csv(path, 255 - small_test.images[:200], small_test.labels[:200])
    return path


def test_fine_tuning_trains_the_runs_net_from_its_weights(source_run, small_train, tmp_path):
    config = TrainConfig(init_from=str(source_run), epochs=1, lr=1e-9, augment=0.0, seed=3)
    assert (config.model, config.widths) == ("cnn-tiny", SOURCE_WIDTHS)  # whatever model says
    result = train(config, DigitSet(small_train.images[:256], small_train.labels[:256]), None,
                   tmp_path / "tuned")  # fmt: skip
    before = load_net(source_run)[0].state_dict()
    after = result.model.state_dict()
    convolutions = [key for key, value in before.items() if value.ndim == 4]
    assert convolutions
    for key in convolutions:  # an lr of 1e-9 leaves them where the source run left them
        np.testing.assert_allclose(after[key].float(), before[key], atol=1e-6)
    assert read_toml(tmp_path / "tuned" / "config.toml")["init_from"] == str(source_run)


def test_fine_tuning_refuses_other_widths_and_a_run_that_is_not_there(source_run, tmp_path):
    with pytest.raises(ConfigError, match=r"widths \(4, 8, 16\): fine-tuning trains the net of"):
        TrainConfig(init_from=str(source_run), widths=(4, 8, 16))
    TrainConfig(init_from=str(source_run), widths=SOURCE_WIDTHS)  # its own: fine
    with pytest.raises(ModelFileError, match=r"nowhere/model\.json: not found"):
        TrainConfig(init_from=str(tmp_path / "nowhere"))
    assert TrainConfig(init_from="none").init_from is None  # as config.toml records no run
    with pytest.raises(ConfigError, match="replay must be >= 0"):
        TrainConfig(init_from=str(source_run), replay=-1.0)


def test_fine_tuning_data_is_conformed_replayed_and_validated_on_the_files_own_rows(
    source_run, other_writers_csv, mnist, tmp_path
):
    config = TrainConfig(init_from=str(source_run), replay=2.0, valid_size=0.1)
    train_set, valid_set, *_ = training_data(config, other_writers_csv)
    # The file's own 180 training rows first, then twice as many of MNIST's training images.
    assert (len(train_set), len(valid_set)) == (180 + 360, 20)
    assert in_mnist_format(train_set.images[:180]).all() and in_mnist_format(valid_set.images).all()
    mnist_train = {image.tobytes() for image in mnist.images[:MNIST_TRAIN_ROWS]}
    replayed = train_set.images[180:]
    assert all(image.tobytes() in mnist_train for image in replayed)
    assert len({image.tobytes() for image in replayed}) == 360  # drawn without repeats
    again, *_ = training_data(config, other_writers_csv)
    np.testing.assert_array_equal(again.images, train_set.images)  # the seed draws them
    alone, *_ = training_data(replace(config, replay=0.0), other_writers_csv)
    assert len(alone) == 180
    # Streamed rows stay on disk: no replay to mix into them.
    shard_csv(other_writers_csv, tmp_path / "shards", parts=3)
    with pytest.raises(ConfigError, match="--replay 0 fine-tunes on them alone"):
        training_data(replace(config, max_memory_gb=0), tmp_path / "shards")


def test_train_init_from_takes_the_finetune_preset(source_run, other_writers_csv, tmp_path):
    out = tmp_path / "tuned"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--train",
            str(other_writers_csv),
            "--init-from",
            str(source_run),
            "--replay",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    recorded = read_toml(out / "config.toml")
    assert (recorded["epochs"], recorded["lr"], recorded["replay"]) == (5, 0.01, 1.0)
    assert (recorded["model"], recorded["widths"]) == ("cnn-tiny", list(SOURCE_WIDTHS))


def test_a_report_rebuilds_the_validation_rows_as_fine_tuning_read_them(
    source_run, other_writers_csv, tmp_path
):
    """`digits report RUN` without --data rebuilds the split from the file trained on: from
    its rows conformed, as training read them, not from the dark-on-light rows as written."""
    from digit_recognizer.report import _labelled_data

    config = TrainConfig(init_from=str(source_run), epochs=1, valid_size=0.1)
    train_job(config, other_writers_csv, tmp_path / "tuned")
    recorded = read_toml(tmp_path / "tuned" / "config.toml")
    predictor = Predictor.load([tmp_path / "tuned"])
    rebuilt, *_ = _labelled_data(tmp_path / "tuned", recorded, None, predictor, conform=True)
    _, valid_set, *_ = training_data(config, other_writers_csv)
    np.testing.assert_array_equal(rebuilt.images, valid_set.images)
    np.testing.assert_array_equal(rebuilt.labels, valid_set.labels)


def test_evaluate_warns_of_rows_that_fine_tuning_replayed(
    source_run, other_writers_csv, small_train, small_test, tmp_path, caplog
):
    """A fine-tuned run has seen MNIST's training images, which a Kaggle replica's test set
    holds: its score on them would not be an honest one, and evaluate says so."""
    seen, unseen = tmp_path / "seen.csv", tmp_path / "unseen.csv"
    write_kaggle_csv(seen, small_train.images[:50], small_train.labels[:50])  # MNIST's training
    write_kaggle_csv(unseen, small_test.images[:50], small_test.labels[:50])  # its test images
    for replay in (1.0, 0.0):
        config = TrainConfig(init_from=str(source_run), epochs=1, replay=replay)
        train_job(config, other_writers_csv, tmp_path / f"tuned{replay}")
    warning = "50 of its rows are MNIST training images, which"
    for run, data, warned in [("tuned1.0", seen, True), ("tuned1.0", unseen, False),
                              ("tuned0.0", seen, False)]:  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            evaluate_run([tmp_path / run], data, tmp_path / "eval")
        assert (warning in caplog.text) == warned, (run, data)
