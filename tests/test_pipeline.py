import json
import logging
import os
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from digit_recognizer import pipeline
from digit_recognizer import predict as predict_module
from digit_recognizer.checkpoint import (
    check_out_dir,
)
from digit_recognizer.config import save_config
from digit_recognizer.data import shards as shards_module
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.shards import shard_csv
from digit_recognizer.errors import ConfigError, DataError, DigitsError, ModelFileError, OutputError
from digit_recognizer.evaluate import score_submission
from digit_recognizer.fileio import locked_dir, sha256_file
from digit_recognizer.models import build
from digit_recognizer.models.storage import read_meta, save_net, write_ensemble
from digit_recognizer.pipeline import (
    TrainJobResult,
    default_jobs,
    run_job,
    train_distributed,
    train_job,
    train_jobs,
    train_member,
)
from digit_recognizer.predict import Predictor
from digit_recognizer.presets import get_preset, job_configs
from digit_recognizer.report import write_run_report
from digit_recognizer.serve import run_server
from digit_recognizer.train import TrainConfig, TrainResult

from .conftest import TINY_RECIPE


def test_main_job_on_the_replica_scores_its_submission(tmp_path, caplog):
    """`digits run` with no data arguments: replica build, train, predict 28,000, score."""
    # A second of training: this checks the plumbing; accuracy is tested on small slices.
    config = TrainConfig(epochs=1, time_budget_s=1, batch_size=64, lr=0.02)
    summary = run_job(config, run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    assert "its 1 s of budget trained under one epoch, far too little" in caplog.text
    assert summary.n_members == 1 and summary.parallel == 1
    solution = tmp_path / "cache" / "replica-seed0" / "solution.csv"
    assert summary.test_accuracy == score_submission(solution, summary.submission)
    lines = summary.submission.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 28001
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == summary.test_accuracy
    assert metrics["test_csv"] == str(tmp_path / "cache" / "replica-seed0" / "test.csv")
    # Resumed with nothing left to train, its weights and so their test score stay; trained on
    # (`digits train --resume`), the run's metrics no longer claim that score.
    train_csv = Path(metrics["train_csv"])
    caplog.clear()
    train_job(replace(config, resume=True), train_csv, summary.run_dir)
    assert "far too little" not in caplog.text  # nothing trained this time: said once, above
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == summary.test_accuracy
    # One second more than it used: a busy machine's first steps can take more than the 1 s given.
    more_time = replace(config, resume=True, time_budget_s=metrics["train_seconds"] + 1)
    train_job(more_time, train_csv, summary.run_dir)
    assert "test_accuracy" not in json.loads((summary.run_dir / "metrics.json").read_text())


def test_ensemble_directory_predicts_the_members_average(tmp_path, small_csvs, small_test):
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed}) for seed in (1, 2)]
    jobs = train_jobs(configs, small_csvs["train"], tmp_path)
    assert [job.run_dir.name for job in jobs] == ["member-1", "member-2"]
    ensemble_metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert ensemble_metrics["train_csv"] == str(small_csvs["train"].resolve())
    assert ensemble_metrics["train_sha256"] == sha256_file(small_csvs["train"])
    members_metrics = ensemble_metrics["members"]
    assert [member["run_dir"] for member in members_metrics] == ["member-1", "member-2"]
    # Each member's own validation accuracy (on its own split), as its run directory records it.
    recorded = [json.loads((job.run_dir / "metrics.json").read_text())["validation"]["accuracy"]
                for job in jobs]  # fmt: skip
    assert [member["valid_accuracy"] for member in members_metrics] == recorded
    assert recorded[0] != recorded[1]  # else a mix-up of members could not show here
    images = small_test.images[:200]
    ensemble = Predictor.load([tmp_path]).predict_proba(images)
    members = [Predictor.load([job.run_dir]).predict_proba(images) for job in jobs]
    np.testing.assert_allclose(ensemble, (members[0] + members[1]) / 2, atol=1e-6)
    assert not np.allclose(members[0], members[1])  # different seeds, different models
    # Neither kind of run is trained over by the other, nor a run's record replaced by a refused
    # torchrun launch.
    with pytest.raises(ConfigError, match="holds an ensemble"):
        train_job(configs[0], small_csvs["train"], tmp_path)
    with pytest.raises(ConfigError, match="holds a single model's run"):
        train_jobs(configs, small_csvs["train"], jobs[0].run_dir)
    # The same command again without --resume is refused before it records any member's settings.
    members_recorded = [(job.run_dir / "config.toml").read_text() for job in jobs]
    with pytest.raises(ConfigError, match=r"member-1 already holds a training run"):
        train_jobs([replace(c, epochs=9) for c in configs], small_csvs["train"], tmp_path)
    assert [(job.run_dir / "config.toml").read_text() for job in jobs] == members_recorded
    recorded = (jobs[0].run_dir / "config.toml").read_text()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train_distributed(2, replace(configs[0], epochs=9), small_csvs["train"], jobs[0].run_dir)
    assert (jobs[0].run_dir / "config.toml").read_text() == recorded
    with pytest.raises(ConfigError, match="must be divisible by the 2 processes"):
        train_distributed(
            2, replace(configs[0], batch_size=3), small_csvs["train"], tmp_path / "new"
        )
    assert not (tmp_path / "new" / "config.toml").exists()  # checked before torchrun starts
    # Commands that take one model say so, before a server announces anything.
    announced = []
    for one_model_only in (
        read_meta,
        write_run_report,
        lambda run: run_server(run, None, announced.append),
    ):
        with pytest.raises(ModelFileError, match=r"is an ensemble .* such as .*member-1"):
            one_model_only(tmp_path)
    assert announced == []


def test_too_few_rows_for_the_processes_are_refused_before_torchrun_starts(
    tmp_path, small_train, monkeypatch
):
    """`digits train --nproc 4` on 3 rows had launched torchrun, each process refusing alone,
    where `digits predict --nproc 4` refuses once, before the launch, in these words."""
    write_kaggle_csv(tmp_path / "train.csv", small_train.images[:3], small_train.labels[:3])
    monkeypatch.setattr(pipeline, "run_torchrun", lambda *args: pytest.fail("launched"))
    refusal = "train.csv: 3 rows for 4 processes, each of which needs one at least; give --nproc 3"
    with pytest.raises(ConfigError, match=rf"{refusal} or fewer$"):
        train_distributed(4, TrainConfig(batch_size=64), tmp_path / "train.csv", tmp_path / "run")


def test_resumed_ensemble_keeps_finished_members_and_trains_unstarted_ones(
    tmp_path, small_csvs, small_test, caplog
):
    """Interrupted after member 1: --resume re-reads it and trains member 2, without warning
    that member 2 had nothing to resume (an --out with no ensemble at all still warns)."""
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed, "resume": True}) for seed in (1, 2)]
    with caplog.at_level("INFO"):
        first = train_jobs(configs[:1], small_csvs["train"], tmp_path / "member-1")
    assert "no checkpoint" in caplog.text  # nothing at all to resume: said
    images = small_test.images[:100]
    finished = Predictor.load([first[0].run_dir]).predict_proba(images)
    caplog.clear()
    with caplog.at_level("INFO"):
        jobs = train_jobs(configs, small_csvs["train"], tmp_path)
    assert "member 2 had not started" in caplog.text and "no checkpoint" not in caplog.text
    np.testing.assert_array_equal(Predictor.load([jobs[0].run_dir]).predict_proba(images), finished)
    assert (jobs[1].run_dir / "model.safetensors").is_file()


def test_a_resumed_ensemble_keeps_each_started_members_own_settings(tmp_path):
    """`digits train --preset best --resume`: members that started go on with what their
    config.toml recorded (flags over it, but not --seed); the others as the preset makes them."""
    started = get_preset("best").configs(None, {"epochs": 1, "seed": 10})  # seeds 11-15
    for number, config in enumerate(started[:2], start=1):
        save_config(config, tmp_path / f"member-{number}" / "config.toml")
    flags = {"epochs": None, "seed": 10, "resume": True}  # the same command, --resume added
    resumed = job_configs("best", None, flags, resumed_run=tmp_path)
    assert resumed[:2] == [replace(config, resume=True) for config in started[:2]]
    assert [config.seed for config in resumed] == [11, 12, 13, 14, 15]
    assert [config.epochs for config in resumed] == [1, 1, 20, 20, 20]  # epochs not repeated
    longer = job_configs("best", None, {"epochs": 3, "seed": 99, "resume": True}, tmp_path)
    assert [(config.epochs, config.seed) for config in longer[:2]] == [(3, 11), (3, 12)]
    # train_jobs records every member's settings before any trains: the README's plain
    # `--resume`, flags not repeated, then rebuilds the unstarted ones as they were begun.
    configs = get_preset("best").configs(None, {"epochs": 1, "seed": 10})
    with pytest.raises(DataError):  # stops before member 1 trains, as a Ctrl-C might
        train_jobs(configs, tmp_path / "missing.csv", tmp_path / "begun")
    plain = job_configs("best", None, {"seed": None, "resume": True}, tmp_path / "begun")
    assert plain == [replace(config, resume=True) for config in configs]
    # Without --preset best, --resume would train one model in among the members.
    with pytest.raises(ConfigError, match=r"holds an ensemble or its first members; .* --resume"):
        check_out_dir(tmp_path / "begun", resume=True, ensemble=False)


def test_run_job_argument_errors(tmp_path, small_csvs):
    with pytest.raises(ConfigError, match="give both --train and --test"):
        run_job(TrainConfig(), train_csv=small_csvs["train"], run_dir=tmp_path)
    # In Python too: the replica's seed beside one's own files had been ignored.
    with pytest.raises(ConfigError, match="give one or the other"):
        run_job(TrainConfig(), small_csvs["train"], small_csvs["test"], tmp_path, replica_seed=3)
    # A test file that cannot be read stops the job before it trains, not an hour later.
    bad_test = tmp_path / "test.csv"
    lines = small_csvs["test"].read_text().splitlines(keepends=True)
    bad_test.write_text("".join([*lines[:3], lines[3].replace("0", "256", 1), *lines[4:]]))
    with pytest.raises(DataError, match=f"{bad_test}, line 4, column pixel"):
        run_job(TrainConfig(), small_csvs["train"], bad_test, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # --jobs 0 had trained the ensemble's members one after another, without a word.
    with pytest.raises(ConfigError, match="--jobs must be >= 1, got 0"):
        pipeline.members_at_once([TrainConfig(seed=1), TrainConfig(seed=2)], 0)


def test_the_test_rows_are_checked_before_training_and_not_held_through_it(
    tmp_path, small_csvs, small_test, monkeypatch
):
    """`digits run --test big.csv` had held the test file's images through training, read
    early to catch a bad file: checked a piece at a time, and read again to predict."""
    import gc

    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, small_test.images[:37])

    class TrainingReachedError(Exception):
        pass

    def train_jobs(*args, **kwargs):
        held = [o for o in gc.get_objects() if isinstance(o, DigitSet) and len(o) == 37]
        assert held == []
        raise TrainingReachedError

    monkeypatch.setattr(pipeline, "train_jobs", train_jobs)
    with pytest.raises(TrainingReachedError):
        run_job(TrainConfig(), small_csvs["train"], test_csv, run_dir=tmp_path / "run")


def test_a_test_glob_matching_the_runs_submission_is_refused_before_training(
    tmp_path, small_csvs, monkeypatch
):
    """`digits run --test 'DIR/*.csv' --out DIR`, whose submission.csv the glob would read as
    rows the next time, had been refused once the models were trained."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(small_csvs["test"], run_dir / "test.csv")
    monkeypatch.setattr(pipeline, "train_jobs", lambda *args: pytest.fail("trained"))
    with pytest.raises(OutputError, match="matches it, and would read the submission as rows"):
        run_job(TrainConfig(), small_csvs["train"], str(run_dir / "*.csv"), run_dir=run_dir)


def test_a_test_csv_past_stream_file_bytes_is_predicted_in_pieces_after_training(
    tmp_path, tiny_run, small_csvs, monkeypatch
):
    """`digits run --test big.csv` had read the test file whole to predict it once trained (3 GB
    of memory for a 562 MB file), where `digits predict` streams it: now it streams too, and
    writes the submission `digits predict` writes."""
    predict_module.predict_csv([tiny_run], small_csvs["test"], tmp_path / "whole.csv")

    def train_jobs(configs, train_csv, run_dir, *args):
        shutil.copytree(tiny_run, run_dir)
        result = TrainResult(run_dir, None, [], None, train_seconds=1.0, epochs_run=1.0)
        return [TrainJobResult(run_dir, result, None)]

    def refused(source):
        raise AssertionError(f"{source} was read whole")

    monkeypatch.setattr(pipeline, "train_jobs", train_jobs)
    assert small_csvs["test"].stat().st_size > 1_000_000
    monkeypatch.setattr(shards_module, "STREAM_FILE_BYTES", 1_000_000)
    monkeypatch.setattr(predict_module, "read_data_source", refused)
    summary = run_job(TrainConfig(), small_csvs["train"], small_csvs["test"], tmp_path / "run")
    assert summary.submission.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_shards_beyond_the_memory_budget_are_streamed(tmp_path, small_csvs, caplog):
    from digit_recognizer.pipeline import train_job

    shard_csv(small_csvs["train"], tmp_path / "shards", parts=3)
    config = TrainConfig(**TINY_RECIPE, max_memory_gb=1e-6)
    with caplog.at_level("INFO"):
        job = train_job(config, tmp_path / "shards", tmp_path / "run")
    assert "streaming from the files" in caplog.text
    assert job.valid_metrics.n_samples == 1000  # the last shard validates
    assert "33 % of the rows where --valid-size asks" in caplog.text  # and said to, as rows lost
    assert job.valid_metrics.accuracy > 0.8
    steps = job.train.history[-1]["step"]
    assert steps == 2 * 32  # 2,000 streamed rows in batches of 64, every row once per epoch
    # Resumed with room for the shards in memory, it would train on other batches: refused,
    # and the message names the setting, not only "training rows".
    more_memory = replace(config, resume=True, epochs=3, max_memory_gb=2.0)
    with pytest.raises(ConfigError, match=r"training rows \(or whether they stream: max_memory_gb"):
        train_job(more_memory, tmp_path / "shards", tmp_path / "run")


def test_a_huge_memory_budget_reads_the_data_in_memory(small_csvs):
    """--max-memory 1e300: more bytes than a float holds, where turning them into a whole
    number had raised OverflowError from `digits train` (inf itself is refused)."""
    from digit_recognizer.pipeline import training_data

    config = TrainConfig(**TINY_RECIPE, max_memory_gb=1e300)
    train_set, valid_set, *_ = training_data(config, small_csvs["train"])
    assert isinstance(train_set, DigitSet) and len(train_set) + len(valid_set) == 3000


def test_validation_images_that_also_train_are_warned_of(tmp_path, small_csvs, caplog):
    """A glob matching a CSV and its own shards reads every row twice, and the validation split
    then scored copies of training images, without a word."""
    from digit_recognizer.pipeline import training_data

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_bytes(small_csvs["train"].read_bytes())
    shard_csv(folder / "train.csv", folder, parts=2)
    config = TrainConfig(**TINY_RECIPE)
    with caplog.at_level(logging.WARNING):
        training_data(config, folder / "train.csv")
        assert "pixel for pixel" not in caplog.text
        training_data(config, Path(f"{folder}/*.csv"))
    assert re.search(r"\*\.csv's validation split: [\d,]+ of its 300 images are also among "
                     "those trained on, pixel for pixel", caplog.text)  # fmt: skip


def test_members_trained_side_by_side_are_the_members_trained_in_turn(tmp_path, small_csvs):
    """--jobs 2: each member in a process of its own, with its share of the threads; the same
    member, bit for bit, as one trained in this process with that many threads."""
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed, "epochs": 1}) for seed in (1, 2)]
    side_by_side = train_jobs(configs, small_csvs["train"], tmp_path / "parallel", parallel=2)
    metrics = json.loads((tmp_path / "parallel" / "metrics.json").read_text())
    assert metrics["parallel"] == 2 and metrics["wall_seconds"] > 0
    assert [job.run_dir.name for job in side_by_side] == ["member-1", "member-2"]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, previous_threads // 2))
    try:  # the second member: its seed and its place in the ensemble both count
        in_turn = train_job(configs[1], small_csvs["train"], tmp_path / "serial")
    finally:
        torch.set_num_threads(previous_threads)
    assert side_by_side[1].valid_metrics.accuracy == in_turn.valid_metrics.accuracy
    parallel_weights = load_file(side_by_side[1].run_dir / "model.safetensors")
    serial_weights = load_file(in_turn.run_dir / "model.safetensors")
    assert parallel_weights.keys() == serial_weights.keys()
    for name, weight in parallel_weights.items():
        torch.testing.assert_close(weight, serial_weights[name], rtol=0, atol=0)
    # The parent holds each member's model, read back from its run directory.
    torch.testing.assert_close(
        side_by_side[1].train.model.state_dict(), in_turn.train.model.state_dict()
    )
    with pytest.raises(ConfigError, match="one model trains in one process"):
        train_jobs(configs[:1], small_csvs["train"], tmp_path / "single", parallel=2)


def test_an_ensembles_rows_lacking_digits_are_warned_of_once(tmp_path, small_train, caplog):
    """Each member had said it again, of "the training rows", not the file, and each had said
    again that the rows are faint; a member after the first, in a process of its own (--jobs),
    says nothing of the rows the first warned of."""
    low = small_train.labels < 5
    train_csv = tmp_path / "low.csv"
    binarised = (small_train.images[low][:300] > 128).astype(np.uint8)
    write_kaggle_csv(train_csv, binarised, small_train.labels[low][:300])
    # An mlp, and valid_size 0 (no report to write): seconds less each.
    configs = [TrainConfig(**TINY_RECIPE | {"model": "mlp", "seed": seed, "epochs": 1,
                                            "valid_size": 0}) for seed in (1, 2)]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
        train_jobs(configs, train_csv, tmp_path / "ensemble")
    said = f"{train_csv}: its training rows hold no 5, 6, 7, 8, 9 (5 of the 10 digits)"
    assert caplog.text.count(said) == 1
    assert caplog.text.count("pixels all under 32") == 1
    caplog.clear()
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
            train_member(2, configs[1], train_csv, tmp_path / "member-2", threads,
                         logging.WARNING)  # fmt: skip
            assert logging.getLogger("digit_recognizer").level == logging.WARNING  # as it was
    finally:
        torch.set_num_threads(threads)
    assert "hold no" not in caplog.text and "faint" not in caplog.text


@pytest.mark.parametrize(("device", "expected"), [("cuda", 5), ("mps", 1), ("cpu", 1)])
def test_an_ensemble_trains_side_by_side_by_default_on_a_cuda_gpu_only(
    monkeypatch, device, expected
):
    monkeypatch.setattr(pipeline, "resolve_device", lambda name: torch.device(device))
    best = get_preset("best").configs()
    assert default_jobs(best) == expected
    assert default_jobs(get_preset("default").configs()) == 1
    # Under torchrun each rank is already one process of a job: it spawns no others.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert default_jobs(best) == 1


def test_a_member_sees_only_the_gpu_it_is_given(monkeypatch, tmp_path, small_csvs):
    # A member's process is given the GPU members.member_gpu chose for it (here, this process,
    # and the CPU trains it).
    config = TrainConfig(**TINY_RECIPE | {"epochs": 1, "device": "cpu"})
    threads = torch.get_num_threads()
    try:
        job = train_member(2, config, small_csvs["train"], tmp_path / "member-2", threads,
                           logging.WARNING, gpu="7")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert job.train.model is None and (job.run_dir / "model.safetensors").is_file()


def killed_member(number: int, *args: object) -> TrainJobResult:
    """Member 2's process killed as it starts (by the system, for memory, say); others train."""
    if number == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return pipeline.train_member(number, *args)


def test_a_killed_member_is_named_at_once_and_no_other_starts(tmp_path, small_csvs, monkeypatch,
                                                              caplog):  # fmt: skip
    """The pool had named whichever member's future it read first (a member never started),
    and only once another member had finished."""
    monkeypatch.setattr(pipeline, "train_member", killed_member)  # the spawned child imports it
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed, "epochs": 1}) for seed in (1, 2, 3)]
    with pytest.raises(DigitsError, match=r"^ensemble member 2's process killed by SIGKILL .* "
                                          r"the same command with --resume finishes"):  # fmt: skip
        train_jobs(configs, small_csvs["train"], tmp_path, parallel=2)
    said = (
        "member 2's process killed by SIGKILL (by the system for memory, say) before it "
        "finished; the members training go on to their end"
    )
    assert said in caplog.text
    assert (tmp_path / "member-1" / "model.safetensors").is_file()  # went on to its end
    assert not (tmp_path / "member-3" / "checkpoint.pt").exists()  # never started


def failing_member(number: int, *args: object) -> TrainJobResult:
    raise RuntimeError("could not create a primitive")  # oneDNN out of memory, say


def test_a_member_failing_with_a_bug_is_one_line_naming_it(tmp_path, small_csvs, monkeypatch):
    monkeypatch.setattr(pipeline, "train_member", failing_member)
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed}) for seed in (1, 2)]
    named = r"^ensemble member [12]: RuntimeError: could not create a primitive; ensemble member"
    with pytest.raises(DigitsError, match=named):
        train_jobs(configs, small_csvs["train"], tmp_path, parallel=2)


def test_a_second_command_on_a_training_ensemble_is_refused_before_it_writes(tmp_path, small_csvs):
    """It had rewritten the members' config.toml, which the first command's --resume then
    trained with, before a member's lock refused it."""
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed}) for seed in (1, 2)]
    with (
        locked_dir(tmp_path / "ensemble"),  # the first command, training
        pytest.raises(DigitsError, match=r"ensemble is in use by process \d+; wait"),
    ):
        train_jobs(configs, small_csvs["train"], tmp_path / "ensemble")
    assert not list((tmp_path / "ensemble").glob("member-*"))


def test_training_reads_faint_and_dark_on_light_files_as_predict_does(
    tmp_path, small_train, caplog, monkeypatch
):
    """0/1 pixels train as full ink (as near-black digits the run had learned nothing, and its
    report crashed), streamed too; dark-on-light rows in memory are conformed as predict
    conforms them, so the net learns the digits predict will show it; streamed, they train as
    they are, and a warning says that predict would conform its test rows."""
    from digit_recognizer.data.images import in_mnist_format
    from digit_recognizer.data.shards import shard_csv
    from digit_recognizer.pipeline import train_job, training_data

    images, labels = small_train.images, small_train.labels
    binarised, inverted = tmp_path / "binarised.csv", tmp_path / "inverted.csv"
    write_kaggle_csv(binarised, (images > 128).astype(np.uint8), labels)
    write_kaggle_csv(inverted, 255 - images, labels)
    config = TrainConfig(**TINY_RECIPE | {"model": "mlp", "valid_size": 0.1})
    with caplog.at_level(logging.WARNING):
        job = train_job(config, binarised, tmp_path / "run")
    assert "pixels all under 32" in caplog.text and "not laid out" not in caplog.text
    assert job.valid_metrics.accuracy > 0.8  # as near-black digits: 0.17
    (tmp_path / "run" / "report.html").unlink()
    write_run_report(tmp_path / "run")  # its validation split rebuilt from the file, as trained
    assert (tmp_path / "run" / "report.html").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="digit_recognizer"):
        train_set, valid_set, *_ = training_data(config, inverted)
    assert "100 % of its digits are not laid out as MNIST's" in caplog.text
    assert "trained on as `digits predict`" in caplog.text and "--as-is" not in caplog.text
    assert in_mnist_format(train_set.images).all() and in_mnist_format(valid_set.images).all()
    np.testing.assert_array_equal(np.sort(np.concatenate([train_set.labels, valid_set.labels])),
                                  np.sort(labels))  # fmt: skip
    shard_csv(inverted, tmp_path / "inverted", parts=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, streamed_valid, *_ = training_data(replace(config, max_memory_gb=0),
                                              tmp_path / "inverted")  # fmt: skip
    assert "streamed rows are trained on as they are" in caplog.text and "--as-is" in caplog.text
    assert not in_mnist_format(streamed_valid.images).any()  # as its training rows stream
    # Streamed, batch by batch, as in memory; one file to stream with a validation split is
    # read in memory, over the budget, with a warning (a shard directory is the way to stream).
    shard_csv(binarised, tmp_path / "shards", parts=3)
    streamed = train_job(replace(config, max_memory_gb=0), tmp_path / "shards", tmp_path / "s")
    assert streamed.valid_metrics.accuracy > 0.8
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train_set, *_ = training_data(replace(config, max_memory_gb=0), binarised)
    assert isinstance(train_set, DigitSet)
    assert "read in memory, over the --max-memory" in caplog.text
    # Unless it would not fit half the memory free: then the error says what to do.
    monkeypatch.setattr(pipeline, "memory_bytes", lambda free: 1_000_000)
    with pytest.raises(DataError, match="split it with `digits data shard`, or train with --val"):
        training_data(replace(config, max_memory_gb=0), binarised)


def test_a_last_shard_validating_over_twice_valid_size_is_warned_of_and_a_held_out_one_not(
    tmp_path, small_csvs, caplog
):
    from digit_recognizer.data.shards import expand, shard_csv
    from digit_recognizer.pipeline import training_data

    shard_csv(small_csvs["train"], tmp_path / "shards", parts=3)  # the last: 33 % of the rows
    streamed = TrainConfig(max_memory_gb=1e-6, augment=0)
    for valid_size, warned in ((0.1, True), (0.2, False)):  # 33 % > 2 x 10 %, < 2 x 20 %
        caplog.clear()
        with caplog.at_level("INFO"):
            training_data(replace(streamed, valid_size=valid_size), tmp_path / "shards")
        assert ("those rows do not train" in caplog.text) == warned, caplog.text
    expand(small_csvs["train"], tmp_path / "expanded", copies=1, parts=1, valid_size=0.5)
    caplog.clear()
    with caplog.at_level("INFO"):
        training_data(streamed, tmp_path / "expanded")  # held out: half the rows, on purpose
    assert "those rows do not train" not in caplog.text


def test_a_validation_shard_lacking_digits_is_warned_of_and_named_in_the_report(
    tmp_path, small_csvs, caplog
):
    """Rows in label order, sharded, left the 9s alone in the validating last shard: it scored
    them only, those rows never trained, and the report called it a validation split."""
    from digit_recognizer.data.shards import shard_csv
    from digit_recognizer.pipeline import training_data

    header, *rows = small_csvs["train"].read_text().splitlines(keepends=True)
    ordered = tmp_path / "ordered.csv"
    ordered.write_text(header + "".join(sorted(rows, key=lambda row: int(row.split(",")[0]))))
    last = shard_csv(ordered, tmp_path / "ordered", parts=10).shards[-1].path
    config = TrainConfig(**TINY_RECIPE | {"epochs": 1, "max_memory_gb": 1e-6})
    with caplog.at_level("INFO", logger="digit_recognizer"):
        _, valid_set, valid_source, _ = training_data(config, tmp_path / "ordered")
    missing = sorted(set(range(10)) - set(valid_set.labels.tolist()))
    assert missing and valid_source == f"last shard, {last}"
    assert f"holds no {', '.join(map(str, missing))}: rows in label order?" in caplog.text
    train_job(config, tmp_path / "ordered", tmp_path / "run")
    report = (tmp_path / "run" / "report.html").read_text()
    assert f"last shard, {last}: {len(valid_set)} images" in report
    # Its captions' rows are the shard's own, which `digits explain SHARD --index` reads.
    assert f"row of {last}, counted from 0: digits explain {tmp_path / 'run'} {last}" in report
    caplog.clear()
    shard_csv(small_csvs["train"], tmp_path / "shuffled", parts=10)
    with caplog.at_level("INFO", logger="digit_recognizer"):
        training_data(config, tmp_path / "shuffled")
    assert "validation: the last shard" in caplog.text and "holds no" not in caplog.text


def test_a_digit_the_source_lacks_is_not_blamed_on_the_order_of_its_rows(
    tmp_path, small_train, caplog
):
    """A source with no 9 at all had been asked of its validation shard's missing 9s "rows in
    label order?", and told to shuffle them: training warns of a digit no row holds, and the
    hint names the digits the training shards hold, streamed or (an expansion's) in memory."""
    from digit_recognizer.data.shards import expand
    from digit_recognizer.pipeline import training_data

    some = small_train.take(slice(1000))
    kept = some.labels != 9
    order = np.argsort(some.labels[kept], kind="stable")
    streamed = TrainConfig(**TINY_RECIPE | {"max_memory_gb": 1e-6})
    for name, rows in (("shuffled", slice(None)), ("ordered", order)):
        csv = tmp_path / f"{name}.csv"
        write_kaggle_csv(csv, some.images[kept][rows], some.labels[kept][rows])
        shard_csv(csv, tmp_path / name, parts=10)
        caplog.clear()
        with caplog.at_level("INFO", logger="digit_recognizer"):
            valid_set = training_data(streamed, tmp_path / name).valid
        lacking = sorted(set(range(8)) - set(valid_set.labels.tolist()))
        assert 9 not in valid_set.labels and bool(lacking) == (name == "ordered")
        hint = f"holds no {', '.join(map(str, lacking))}: rows in label order?"
        assert ("holds no" in caplog.text, hint in caplog.text) == (bool(lacking),) * 2, name
    expand(tmp_path / "shuffled.csv", tmp_path / "expanded", copies=1, parts=1, valid_size=0.1)
    caplog.clear()
    with caplog.at_level("INFO", logger="digit_recognizer"):
        training_data(TrainConfig(**TINY_RECIPE | {"augment": 0}), tmp_path / "expanded")
    assert "validation: the last shard" in caplog.text and "holds no" not in caplog.text


def test_a_resumed_ensemble_no_longer_claims_its_earlier_test_score(tmp_path, small_csvs):
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed, "epochs": 1}) for seed in (1, 2)]
    train_jobs(configs, small_csvs["train"], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps(metrics | {"test_accuracy": 0.5}))
    train_jobs([replace(config, resume=True) for config in configs], small_csvs["train"], tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == 0.5  # as was
    resumed = [replace(config, resume=True, epochs=2) for config in configs]
    train_jobs(resumed, small_csvs["train"], tmp_path)
    assert "test_accuracy" not in json.loads((tmp_path / "metrics.json").read_text())


def test_an_ensemble_whose_member_trains_on_alone_no_longer_claims_its_test_score(
    tmp_path, small_csvs, monkeypatch
):
    # `digits train --out OUT/member-1 --resume` left OUT's metrics.json claiming the test score
    # of the weights the member had.
    config = TrainConfig(**TINY_RECIPE | {"epochs": 1, "valid_size": 0, "model": "mlp"})  # fast
    member = tmp_path / "member-1"
    train_jobs([config], small_csvs["train"], member)
    write_ensemble(tmp_path, [member])
    trained = {"train_seconds": 1.0}
    scored = trained | {"test_accuracy": 0.5, "test_csv": "test.csv", "test_tta": False}
    (tmp_path / "metrics.json").write_text(json.dumps(scored))
    train_jobs([replace(config, resume=True)], small_csvs["train"], member)  # nothing left
    assert json.loads((tmp_path / "metrics.json").read_text()) == scored
    # Under --nproc (torchrun's processes as one, here), read back as trained, it lost it too.
    monkeypatch.setattr(pipeline, "run_torchrun", lambda _nproc, _module, _args, resumed:
                        train_job(resumed, small_csvs["train"], member))  # fmt: skip
    train_jobs([replace(config, resume=True)], small_csvs["train"], member, nproc=2)
    assert json.loads((tmp_path / "metrics.json").read_text()) == scored
    train_jobs([replace(config, resume=True, epochs=2)], small_csvs["train"], member)
    assert json.loads((tmp_path / "metrics.json").read_text()) == trained


def test_the_validating_last_shard_is_checked_as_the_training_shards_are(tmp_path, small_csvs):
    """The last shard had been read as any CSV: swapped for one without labels, it validated
    with no labels at all."""
    from digit_recognizer.data.shards import shard_csv
    from digit_recognizer.pipeline import training_data

    manifest = shard_csv(small_csvs["train"], tmp_path / "shards", parts=3)
    last = manifest.shards[-1].path
    unlabelled = [line.split(",", 1)[1] for line in last.read_text().splitlines(keepends=True)]
    last.write_text("".join(unlabelled))
    with pytest.raises(DataError, match=str(last)):
        training_data(TrainConfig(max_memory_gb=1e-6), tmp_path / "shards")


def test_more_jobs_than_members_share_the_threads_between_the_members(
    tmp_path, small_csvs, monkeypatch
):
    # --jobs 8 for 2 members gave each of the 2 processes 1/8 of the threads, and metrics.json
    # and `digits run`'s table said "8 at once".
    started = {}

    def untrained(train, members, parallel):  # each member's run as its process leaves it
        started.update(threads={member[3] for member in members}, parallel=parallel)
        for _, _, member_dir, *_ in members:
            save_net(member_dir, build("cnn-tiny"), "cnn-tiny", {})
        return [TrainJobResult(member_dir, TrainResult(member_dir, None, [], None, 1.0, 1.0), None)
                for _, _, member_dir, *_ in members]  # fmt: skip

    monkeypatch.setattr(pipeline, "run_side_by_side", untrained)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    configs = [TrainConfig(**TINY_RECIPE | {"seed": seed}) for seed in (1, 2)]
    summary = run_job(configs, small_csvs["train"], small_csvs["test"], tmp_path, parallel=8)
    assert started == {"threads": {4}, "parallel": 2}
    assert summary.parallel == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["parallel"] == 2


def test_an_expansions_held_out_shard_lacking_a_digit_its_copies_hold_is_warned_of(
    tmp_path, small_train, caplog
):
    """An expansion's copies are read in memory, their digits counted from their rows: a
    held-out shard without the source's lone 9 (which trains) is warned of as a streamed
    source's last shard is, the 9 being a digit the training rows hold."""
    from digit_recognizer.data.shards import expand
    from digit_recognizer.pipeline import training_data

    some = small_train.take(slice(300))
    nines = np.flatnonzero(some.labels == 9)
    kept = np.setdiff1d(np.arange(len(some)), nines[1:])
    csv = tmp_path / "one-nine.csv"
    write_kaggle_csv(csv, some.images[kept], some.labels[kept])
    expand(csv, tmp_path / "expanded", copies=1, parts=1, valid_size=0.1)
    with caplog.at_level("INFO", logger="digit_recognizer"):
        data = training_data(TrainConfig(**TINY_RECIPE | {"augment": 0}), tmp_path / "expanded")
    assert 9 in data.train.labels and 9 not in data.valid.labels
    assert "holds no 9: rows in label order?" in caplog.text


@pytest.mark.parametrize(
    ("counts", "refused"),
    [
        ({"nproc": 0}, "--nproc must be >= 1, got 0"),
        ({"parallel": 0}, "--jobs must be >= 1, got 0"),
    ],
)
def test_run_job_refuses_a_count_out_of_range_before_building_a_replica(
    tmp_path, monkeypatch, counts, refused
):
    """A replica takes a minute to build the first time: `digits run --nproc 0` had built it,
    then been refused by training."""

    def built(*_args: object) -> None:
        raise AssertionError("a replica was built")

    monkeypatch.setattr(pipeline, "cached_replica", built)
    with pytest.raises(ConfigError) as error:
        run_job([TrainConfig(), TrainConfig(seed=1)], cache_dir=tmp_path / "cache", **counts)
    assert str(error.value) == refused
