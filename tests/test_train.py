import csv
import itertools
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import digit_recognizer.train as train_module
from digit_recognizer.checkpoint import (
    load_checkpoint,
    read_history,
    rows_fingerprint,
    write_history,
)
from digit_recognizer.data.augment import Augmentation, augment_batch
from digit_recognizer.data.kaggle_csv import DigitSet, count_classes, write_kaggle_csv
from digit_recognizer.data.shards import read_manifest, shard_csv
from digit_recognizer.data.splits import warn_missing_digits
from digit_recognizer.distributed import Distributed
from digit_recognizer.errors import ConfigError, DivergedError, ModelFileError
from digit_recognizer.models.registry import build
from digit_recognizer.models.runtime import autocast_dtype
from digit_recognizer.models.storage import load_net, read_meta
from digit_recognizer.pipeline import train_job
from digit_recognizer.predict import Predictor
from digit_recognizer.presets import get_preset
from digit_recognizer.train import (
    TrainConfig,
    build_optimizer,
    divergence_advice,
    evaluate_split,
    get_lr,
    row_sampler,
    train,
    warmed_up_ema,
)

from .conftest import accuracy


def test_tiny_run_learns_and_writes_its_directory(tiny_run, small_test):
    for name in ("config.toml", "history.csv", "checkpoint.pt", "model.safetensors", "model.json"):
        assert (tiny_run / name).is_file(), name
    with open(tiny_run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    predicted = Predictor.load([tiny_run]).predict(small_test.images[300:])
    assert accuracy(predicted, small_test.labels[300:]) > 0.85  # chance is 0.10


@pytest.mark.parametrize("time_budget_s", [None, 0])  # 0: no budget, as --time-budget 0 says
def test_same_seed_same_weights(tmp_path, small_train, time_budget_s):
    subset = DigitSet(small_train.images[:512], small_train.labels[:512])
    config = TrainConfig(epochs=1, batch_size=64, valid_size=0, seed=3, time_budget_s=time_budget_s)
    first = train(config, subset, None, tmp_path / "a").model.state_dict()
    second = train(config, subset, None, tmp_path / "b").model.state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]


def test_killed_run_resumes_to_the_same_result(tmp_path, small_csvs):
    """SIGKILL `digits train` during epoch 2, resume it, and match an uninterrupted run."""
    run_dir = tmp_path / "killed"
    flags = ["--train", str(small_csvs["train"]), "--out", str(run_dir), "--epochs", "3",
             "--lr", "0.02", "--batch-size", "64", "--valid-size", "0.1"]  # fmt: skip
    command = [sys.executable, "-c", "from digit_recognizer.cli import app; app()", "train"]
    process = subprocess.Popen([*command, *flags], stderr=subprocess.DEVNULL)
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 120
    while not (history.exists() and history.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before epoch 1"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2: its checkpoint is epoch 1's
    process.wait()
    subprocess.run([*command, *flags, "--resume"], check=True, stderr=subprocess.DEVNULL)

    # What `digits train` runs: the default preset under the flags.
    flag_values = {"epochs": 3, "lr": 0.02, "batch_size": 64, "valid_size": 0.1}
    config = get_preset("default").configs(flags=flag_values)[0]
    straight = train_job(config, small_csvs["train"], tmp_path / "straight")
    resumed = load_checkpoint(run_dir, torch.device("cpu"))
    assert without_timing(resumed["history"]) == without_timing(straight.train.history)
    a, _ = load_net(tmp_path / "straight")
    b, _ = load_net(run_dir)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)


def test_one_cycle_keeps_its_last_epoch(tiny_run):
    # The schedule anneals to zero at the end: the model kept is the last epoch's, whichever
    # epoch validated best, and its metadata gives that epoch's validation accuracy.
    last = load_checkpoint(tiny_run, torch.device("cpu"))
    kept, meta = load_net(tiny_run)
    for key, value in last["model"].items():
        torch.testing.assert_close(kept.state_dict()[key], value, rtol=0, atol=0)
    assert meta["valid_accuracy"] == last["history"][-1]["valid_accuracy"]


def test_early_stopping_restores_the_best_epoch(tmp_path, small_train, small_test):
    subset = DigitSet(small_train.images[:512], small_train.labels[:512])
    valid = DigitSet(small_test.images[:200], small_test.labels[:200])
    # A constant, too high learning rate makes validation accuracy stall or fall quickly; not so
    # high that it diverges (5.0 overflowed batch norm's statistics by epoch 3 with some
    # augmentation draws, which stops a run as diverged; 1.0 to 3.0 stall).
    config = TrainConfig(epochs=8, lr=2.0, schedule="constant", patience=1, batch_size=64)
    result = train(config, subset, valid, tmp_path)
    assert result.stopped_early and result.epochs_run < 8
    best = max(row["valid_accuracy"] for row in result.history)
    assert result.valid_accuracy == best > result.history[-1]["valid_accuracy"]
    # The model returned and saved is the best epoch's, scored again here, not the last one's.
    amp = autocast_dtype(torch.device("cpu"), config.amp)
    images, labels = torch.as_tensor(valid.images), torch.as_tensor(valid.labels)
    for model in (result.model, load_net(tmp_path)[0]):
        assert evaluate_split(model, images, labels, amp)[1] == best
    # Resumed, a run that stopped stays stopped: no more epochs, the same model.
    resumed = train(replace(config, resume=True), subset, valid, tmp_path)
    assert resumed.history == result.history and resumed.stopped_early
    torch.testing.assert_close(resumed.model.state_dict(), result.model.state_dict())
    # Without a validation set there is nothing to stop on: said, not silently ignored.
    with pytest.raises(ConfigError, match="act on validation accuracy"):
        train(config, subset, None, tmp_path / "no-valid")


def test_plateau_cuts_the_lr_after_each_epoch_without_progress_and_epochs_reshuffle(
    tmp_path, small_train, small_test, monkeypatch
):
    subset = DigitSet(small_train.images[:512], small_train.labels[:512])
    valid = DigitSet(small_test.images[:200], small_test.labels[:200])
    batches = []  # the labels of each batch, in the order training draws them

    def recording_augment(x, augmentation, generator, labels):
        batches.append(labels.tolist())
        return augment_batch(x, augmentation, generator, labels)

    monkeypatch.setattr(train_module, "augment_batch", recording_augment)
    # A constant, too high learning rate makes validation accuracy stall or fall quickly (5.0
    # overflowed batch norm's statistics by epoch 3, which now stops the run as diverged).
    config = TrainConfig(epochs=4, lr=2.0, schedule="plateau", plateau_patience=1, batch_size=64)
    history = train(config, subset, valid, tmp_path).history
    expected_lr, best = config.lr, (-1.0, 0.0)
    for row in history:
        assert row["lr"] == pytest.approx(expected_lr)
        score = (row["valid_accuracy"], -row["valid_loss"])
        if score > best:
            best = score
        else:
            expected_lr *= config.plateau_factor
    assert expected_lr < config.lr  # the run stalled at least once: the rule was exercised
    # Each epoch draws the rows in a new order.
    epochs = [[label for batch in batches[epoch * 8 : (epoch + 1) * 8] for label in batch]
              for epoch in range(4)]  # fmt: skip
    assert len(batches) == 32 and all(sorted(order) == sorted(epochs[0]) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 4


def test_plateau_cuts_stack_while_validation_stays_stalled(
    tmp_path, small_train, small_test, monkeypatch
):
    # Validation scores the same every epoch: the first sets the best, each later one stalls,
    # so the lr is cut after epochs 2 and 3, and the second cut applies on top of the first.
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: (1.0, 0.5))
    subset = DigitSet(small_train.images[:128], small_train.labels[:128])
    valid = DigitSet(small_test.images[:64], small_test.labels[:64])
    config = TrainConfig(epochs=4, lr=0.02, schedule="plateau", plateau_factor=0.5,
                         plateau_patience=1, batch_size=64)  # fmt: skip
    lrs = [row["lr"] for row in train(config, subset, valid, tmp_path).history]
    assert lrs == pytest.approx([0.02, 0.02, 0.01, 0.005])


def test_each_epoch_draws_new_augmentations_in_the_configs_ranges(
    tmp_path, small_train, monkeypatch
):
    # The augmentation generator is seeded by (seed, epoch, rank): were the epoch left out,
    # every epoch would shift, turn and thicken each image exactly as the first did.
    seeds, ranges = [], set()

    def recording_augment(x, augmentation, generator, labels):
        seeds.append(generator.initial_seed())
        ranges.add(augmentation)
        return augment_batch(x, augmentation, generator, labels)

    monkeypatch.setattr(train_module, "augment_batch", recording_augment)
    subset = DigitSet(small_train.images[:128], small_train.labels[:128])
    config = TrainConfig(epochs=3, batch_size=64, valid_size=0, augment=0.5, elastic=1.0,
                         stroke=0.4, styles=0.2)  # fmt: skip
    train(config, subset, None, tmp_path)
    assert len(seeds) == 6 and seeds[0] == seeds[1] and len(set(seeds)) == 3  # one per epoch
    assert ranges == {Augmentation(elastic_px=1.0, stroke=0.4, styles=0.2).scaled(0.5)}


def test_target_accuracy_stops_the_run_and_label_smoothing_reaches_the_loss(
    tmp_path, small_train, small_test, monkeypatch
):
    smoothing = []
    cross_entropy = torch.nn.functional.cross_entropy

    def spying_cross_entropy(*args, **kwargs):
        smoothing.append(kwargs.get("label_smoothing"))
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spying_cross_entropy)
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    valid = DigitSet(small_test.images[:100], small_test.labels[:100])
    config = TrainConfig(epochs=5, target_accuracy=0.05, label_smoothing=0.2, batch_size=64)
    result = train(config, subset, valid, tmp_path)
    assert result.stopped_early and result.epochs_run == 1 and len(result.history) == 1
    assert {value for value in smoothing if value is not None} == {0.2}  # None: validation
    resumed = train(replace(config, resume=True), subset, valid, tmp_path)
    assert resumed.stopped_early and resumed.history == result.history


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 5), None),  # T4 (Kaggle's, Colab's): torch.cuda.is_bf16_supported() says yes, emulated
    ((8, 0), torch.bfloat16),  # A100 and later
])  # fmt: skip
def test_gpus_autocast_to_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(torch.device("cuda"), enabled=True) is expected
    assert autocast_dtype(torch.device("cuda"), enabled=False) is None


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "cnn"), (False, "cnn-tiny")])
def test_auto_model_follows_the_hardware(monkeypatch, native_bf16, expected):
    def fake_autocast_dtype(device, enabled):
        return torch.bfloat16 if native_bf16 and enabled else None

    monkeypatch.setattr(train_module, "autocast_dtype", fake_autocast_dtype)
    assert TrainConfig(model="auto", device="cpu").model == expected  # config.toml names it
    assert TrainConfig(model="auto", device="cpu", amp=False).model == "cnn-tiny"  # fp32


def test_ensemble_members_do_not_share_a_row_order_an_epoch_apart():
    # Members train with seeds n, n + 1, ...; the sampler shuffles with seed + epoch, so seeds
    # taken as they are gave member 2's first epoch member 1's second (with --valid-size 0,
    # the same rows: the same batches).
    def order(seed: int, epoch: int) -> list[int]:
        sampler = row_sampler(1000, Distributed(), seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(1, 1)
    assert all(order(1, epoch + 1) != order(2, epoch) for epoch in range(3))
    assert order(1, 4) != order(5, 0)


@pytest.mark.parametrize(("name", "optimizer_class", "lr"),
                         [("sgd", torch.optim.SGD, 0.05), ("adam", torch.optim.Adam, 1e-3),
                          ("adamw", torch.optim.AdamW, 1e-3)])  # fmt: skip
def test_each_optimizer_trains_as_named_at_the_lr_its_help_gives(name, optimizer_class, lr):
    """--lr's help: "default: 0.05 for sgd, 1e-3 for adam(w)"; Adam and AdamW differ in how
    they decay the weights (coupled to the gradient, or decoupled)."""
    config = TrainConfig(model="mlp", optimizer=name)
    optimizer = build_optimizer(build("mlp"), config)
    assert type(optimizer) is optimizer_class
    assert [group["lr"] for group in optimizer.param_groups] == [lr, lr]


def test_sgd_without_momentum_trains_as_plain_sgd():
    """momentum = 0 passed the config's check and ended training in torch's ValueError
    ("Nesterov momentum requires a momentum")."""
    model = build("mlp")
    optimizer = build_optimizer(model, TrainConfig(model="mlp", momentum=0.0))
    assert optimizer.defaults["momentum"] == 0 and not optimizer.defaults["nesterov"]
    before = [parameter.detach().clone() for parameter in model.parameters()]
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    after = list(model.parameters())
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert build_optimizer(model, TrainConfig(model="mlp")).defaults["nesterov"]


@pytest.mark.parametrize("schedule", ["onecycle", "exponential", "constant", "plateau"])
def test_schedules_start_and_end_sensibly(schedule):
    config = TrainConfig(schedule=schedule)
    peak_lr = config.peak_lr()
    assert get_lr(config, 0.0, 0.0, 1.0) <= peak_lr
    if schedule == "onecycle":  # up from 0 over the warm-up, linearly
        assert get_lr(config, 0.0, 0.0, 1.0) == 0
        assert get_lr(config, config.warmup / 2, 0.5, 1.0) == pytest.approx(peak_lr / 2)
        assert get_lr(config, config.warmup, 1.0, 1.0) == pytest.approx(peak_lr)
        assert get_lr(config, 1.0, 15.0, 1.0) == 0
    if schedule == "exponential":
        assert get_lr(config, 0.5, 2.0, 1.0) == pytest.approx(peak_lr * config.lr_decay**2)
    if schedule == "plateau":
        assert get_lr(config, 0.5, 2.0, 0.25) == pytest.approx(peak_lr * 0.25)


def test_fewer_rows_than_a_batch_train_one_step_an_epoch_and_say_so(tmp_path, small_train, caplog):
    """Accepted without a word, a --batch-size above the rows trained them all in one step."""
    few = DigitSet(small_train.images[:40], small_train.labels[:40])
    config = TrainConfig(model="cnn-tiny", epochs=2, valid_size=0, batch_size=64, lr=0.02)
    with caplog.at_level(logging.WARNING, logger="digit_recognizer.train"):
        result = train(config, few, None, tmp_path)
    assert [row["step"] for row in result.history] == [1, 2]
    assert "40 training rows, fewer than a batch (64): each step trains on all" in caplog.text


def test_the_log_counts_one_cpu_thread_in_the_singular(tmp_path, small_train, monkeypatch, caplog):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    few = DigitSet(small_train.images[:64], small_train.labels[:64])
    config = TrainConfig(model="cnn-tiny", epochs=1, valid_size=0, batch_size=64)
    with caplog.at_level(logging.INFO, logger="digit_recognizer.train"):
        train(config, few, None, tmp_path)
    assert "device cpu (1 thread), " in caplog.text


def test_time_budget_stops_training_and_says_so(tmp_path, small_train, caplog):
    config = TrainConfig(epochs=50, time_budget_s=1.0, valid_size=0, batch_size=64)
    with caplog.at_level(logging.INFO, logger="digit_recognizer.train"):
        result = train(config, small_train, None, tmp_path)
    assert result.epochs_run < 50 and result.train_seconds < 5
    # Epochs of data trained, a fraction when the budget ends one part-way: the log's figure.
    # (Under load the second may end within a tenth of the first epoch: three decimals then.)
    steps_per_epoch = len(small_train) // 64
    fraction = result.history[-1]["step"] / steps_per_epoch
    assert result.epochs_run == (round(fraction, 1) or round(fraction, 3))
    assert f"reached after {result.epochs_run:g} of 50 epochs" in caplog.text
    assert "time budget of 1 s reached after" in caplog.text and "of 50 epochs" in caplog.text
    # A budget spent within a tenth of the first epoch is not reported as 0 epochs.
    first_steps = train(replace(config, time_budget_s=1e-3), small_train, None, tmp_path / "short")
    steps = first_steps.history[-1]["step"]
    assert 0 < first_steps.epochs_run == round(steps / steps_per_epoch, 3) < 0.1


def test_widths_and_dropout_shape_the_net_and_are_saved_with_it(tmp_path, small_train, small_test):
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    valid = DigitSet(small_test.images[:100], small_test.labels[:100])
    config = TrainConfig(epochs=1, batch_size=64, widths=(8, 16, 24), dropout=0.3)
    result = train(config, subset, valid, tmp_path)
    loaded, meta = load_net(tmp_path)
    assert meta["params"] == {"widths": [8, 16, 24], "dropout": 0.3}
    assert loaded[-1].in_features == 24 and loaded[-2].p == 0.3
    torch.testing.assert_close(
        Predictor.from_models([loaded]).predict_proba(valid.images),
        Predictor.from_models([result.model]).predict_proba(valid.images),
    )


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": "seed-cnn", "widths": (8, 16, 24)}, "model 'seed-cnn' has no 'widths' setting"),
    ({"model": "cnn", "widths": (8, 16)}, r"widths \[8, 16\]: the compact CNN has 3 stages"),
])  # fmt: skip
def test_widths_a_model_cannot_take_are_refused(tmp_path, small_train, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(epochs=1, **overrides), small_train, None, tmp_path)


class StopError(Exception):
    """Stops a run from its on_epoch_end hook, after the epoch's checkpoint, as a kill would."""


def stop_after(last_epoch: int, seen: list[float] | None = None):
    """An on_epoch_end hook that records the epochs it sees and stops after ``last_epoch``."""

    def hook(row: dict[str, float]) -> None:
        if seen is not None:
            seen.append(row["epoch"])
        if row["epoch"] == last_epoch:
            raise StopError

    return hook


def test_on_epoch_end_sees_every_epoch_and_can_stop_the_run(tmp_path, small_train, small_test):
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    valid = DigitSet(small_test.images[:100], small_test.labels[:100])
    seen = []
    with pytest.raises(StopError):
        train(TrainConfig(epochs=5, batch_size=64), subset, valid, tmp_path,
              on_epoch_end=stop_after(2, seen))  # fmt: skip
    assert seen == [1, 2]
    assert load_checkpoint(tmp_path, torch.device("cpu"))["epoch"] == 2  # resumable from there


def test_ema_forgets_the_initial_weights_at_once_then_decays_at_the_set_rate():
    net = torch.nn.BatchNorm1d(1)
    average = torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=warmed_up_ema(0.999), use_buffers=True
    )
    average.update_parameters(net)  # the first update copies the weights: all zero
    with torch.no_grad():
        net.bias.fill_(1.0)
    for _ in range(10):
        average.update_parameters(net)
        net.num_batches_tracked += 1
    # A fixed 0.999 would still hold 99 % of the initial weights after 10 updates.
    assert average.module.bias.item() > 0.999
    assert average.module.num_batches_tracked.item() == 9  # integer buffers are copied
    weights, target = [torch.zeros(1)], [torch.ones(1)]
    warmed_up_ema(0.999)(weights, target, torch.tensor(100_000))  # long after the ramp
    torch.testing.assert_close(weights[0], torch.tensor([0.001]))


def test_the_weight_average_kept_follows_the_steps_trained(tmp_path, small_train):
    """With ema_decay the model saved is the average of the weights each step reached: near
    the last ones after the ramp's first steps, far from the initial (random) ones."""
    subset = DigitSet(small_train.images[:128], small_train.labels[:128])
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0, ema_decay=0.9)
    averaged = train(config, subset, None, tmp_path).model.state_dict()
    last = load_checkpoint(tmp_path, torch.device("cpu"))["model"]
    torch.manual_seed(config.seed)  # as train() draws the initial weights
    initial = build(config.model).state_dict()
    distances = {  # over kernels, matrices and batch-norm gains, which every step moves
        name: sum(
            (averaged[key] - weights[key]).norm() for key in averaged if key.endswith("weight")
        )
        for name, weights in (("initial", initial), ("last", last))
    }
    assert distances["last"] < 0.5 * distances["initial"]


def test_ema_run_stopped_and_resumed_matches_a_straight_run(
    tmp_path, small_train, small_test, caplog
):
    subset = DigitSet(small_train.images[:512], small_train.labels[:512])
    valid = DigitSet(small_test.images[:100], small_test.labels[:100])
    config = TrainConfig(epochs=3, batch_size=64, ema_decay=0.9)
    straight = train(config, subset, valid, tmp_path / "straight")
    with pytest.raises(StopError):
        train(config, subset, valid, tmp_path / "resumed", on_epoch_end=stop_after(1))
    resumed = train(replace(config, resume=True), subset, valid, tmp_path / "resumed")
    assert without_timing(resumed.history) == without_timing(straight.history)
    saved, _ = load_net(tmp_path / "resumed")
    last = load_checkpoint(tmp_path / "resumed", torch.device("cpu"))["model"]
    for key, value in saved.state_dict().items():  # the average is saved, not the last weights
        torch.testing.assert_close(value, straight.model.state_dict()[key], rtol=0, atol=0)
    assert any(not torch.equal(last[key], value) for key, value in saved.state_dict().items())
    # A resume whose settings do not fit the checkpoint is refused before it touches the record.
    recorded = (tmp_path / "resumed" / "config.toml").read_text()
    for mismatch in ({"ema_decay": None},):
        with pytest.raises(ModelFileError, match="does not fit this model"):
            train(replace(config, resume=True, **mismatch), subset, valid, tmp_path / "resumed")
        assert (tmp_path / "resumed" / "config.toml").read_text() == recorded
    # So is one on other rows or draws (another seed or validation size splits the data anew)
    # or batches, or of another net (load_state_dict's list of tensors, ending "or delete it").
    other_rows = DigitSet(small_train.images[1:513], small_train.labels[1:513])
    for mismatch, rows, message in (
        ({"model": "cnn-tiny"}, subset, "model"),
        ({"widths": (8, 16, 32)}, subset, "widths"),
        ({"seed": 1}, subset, "seed"),
        ({"valid_size": 0.2}, subset, "valid_size"),
        ({"batch_size": 128}, subset, "batch_size"),  # its steps count batches of 64
        ({"optimizer": "adam"}, subset, "optimizer"),  # SGD's momentum is no Adam state
        ({}, other_rows, "training rows"),
    ):
        with pytest.raises(ConfigError, match=f"resuming would change the run's {message}; "):
            train(replace(config, resume=True, **mismatch), rows, valid, tmp_path / "resumed")
        assert (tmp_path / "resumed" / "config.toml").read_text() == recorded
    # The record holds settings, not the --resume that continued it: --config on it retrains.
    assert "resume = false" in recorded
    # A finished run resumed with other flags trains nothing, and keeps the record of what it
    # ran with; the changed settings are named.
    with caplog.at_level(logging.WARNING, logger="digit_recognizer.train"):
        again = train(replace(config, resume=True, epochs=2, augment=0.5), subset, valid,
                      tmp_path / "resumed")  # fmt: skip
    assert without_timing(again.history) == without_timing(straight.history)
    assert (tmp_path / "resumed" / "config.toml").read_text() == recorded
    assert "epochs 3 -> 2, augment 1.0 -> 0.5" in caplog.text


def test_a_resumed_run_takes_new_optimizer_settings_and_names_a_new_process_count(
    tmp_path, small_train, monkeypatch, caplog
):
    """config.toml records the resumed run's weight decay and momentum: they must be the ones
    its steps take, not the checkpoint's (which load_state_dict brings back)."""
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    config = TrainConfig(epochs=2, batch_size=64, valid_size=0)
    with pytest.raises(StopError):
        train(config, subset, None, tmp_path, on_epoch_end=stop_after(1))
    used = set()
    sgd_step = torch.optim.SGD.step

    def recording_step(optimizer, *args, **kwargs):
        used.update((group["weight_decay"], group["momentum"], group["nesterov"])
                    for group in optimizer.param_groups)  # fmt: skip
        return sgd_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    # As if the epoch so far had run in 2 processes (torchrun): resuming in 1 is allowed, said.
    checkpoint = load_checkpoint(tmp_path, torch.device("cpu"))
    assert checkpoint["world_size"] == 1
    torch.save(checkpoint | {"world_size": 2}, tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="digit_recognizer.train"):
        train(replace(config, resume=True, weight_decay=0.05, momentum=0.5), subset, None, tmp_path)
    # Batch-norm and bias parameters: no decay. Nesterov momentum: the recipe's (TrainConfig).
    assert used == {(0.05, 0.5, True), (0.0, 0.5, True)}
    assert "trained in 2 processes so far, resumed in 1" in caplog.text
    # Finished, nothing is left to train: no "epochs from here" to warn of.
    finished = load_checkpoint(tmp_path, torch.device("cpu"))
    torch.save(finished | {"world_size": 2}, tmp_path / "checkpoint.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="digit_recognizer.train"):
        train(replace(config, resume=True), subset, None, tmp_path)
    assert "processes so far" not in caplog.text


def test_a_run_cut_by_its_budget_and_resumed_with_more_time_anneals_to_the_end(
    tmp_path, small_train, caplog
):
    """The budget ends epoch 1 part-way; resumed without one, the run trains the steps it lacks
    (not just the epochs), so one-cycle ends at a learning rate of zero, as a straight run."""
    subset = DigitSet(small_train.images[:640], small_train.labels[:640])
    config = TrainConfig(epochs=2, batch_size=64, valid_size=0, time_budget_s=1e-3)
    with caplog.at_level(logging.INFO, logger="digit_recognizer.train"):
        cut = train(config, subset, None, tmp_path)
        train(replace(config, resume=True), subset, None, tmp_path)  # the same budget: spent
    assert cut.cut_by_budget and cut.history[-1]["step"] < 10
    assert f"finished already ({cut.epochs_run:g} epochs, its time budget spent" in caplog.text
    assert caplog.text.count("time budget of") == 1  # the resume that trained nothing: not again
    resumed = train(replace(config, resume=True, time_budget_s=0), subset, None, tmp_path)
    straight = train(replace(config, time_budget_s=0), subset, None, tmp_path / "straight")
    assert not resumed.cut_by_budget and resumed.history[-1]["step"] == 2 * 10
    assert resumed.history[-1]["lr"] == straight.history[-1]["lr"] < 0.1 * config.peak_lr()


def test_one_cycle_anneals_to_the_time_budget_not_to_the_epochs(tmp_path, small_train, monkeypatch):
    """The presets' budgets: a run its budget ends after 5 of 40 steps must have annealed by
    then, not still be near the peak lr that a schedule by steps gives its 5th step."""
    clock = itertools.count()  # 1 s a step, whatever the machine: each step reads it once
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    subset = DigitSet(small_train.images[:640], small_train.labels[:640])
    config = TrainConfig(model="cnn-tiny", epochs=4, batch_size=64, valid_size=0,
                         time_budget_s=5)  # fmt: skip
    result = train(config, subset, None, tmp_path)
    assert result.cut_by_budget and result.history[-1]["step"] == 5
    # Step 5 trains at 4 s of 5: progress 0.8, under a quarter of the peak lr (by steps, 5 of 40
    # would still be warming up).
    assert result.history[-1]["lr"] == pytest.approx(config.peak_lr() * 0.2 / (1 - config.warmup))
    # A run that trains all its steps within its budget was not cut by it.
    finished = train(replace(config, epochs=1, time_budget_s=1000), subset, None, tmp_path / "all")
    assert not finished.cut_by_budget and finished.history[-1]["step"] == 10


def test_checkpoint_keeps_the_time_spent_for_a_budgeted_resume(tiny_run):
    # A resumed run's time budget and lr schedule go on from the checkpoint's clock: a zero
    # there would give a resumed run its whole budget again.
    checkpoint = load_checkpoint(tiny_run, torch.device("cpu"))
    assert checkpoint["elapsed_s"] == checkpoint["history"][-1]["elapsed_s"] > 0
    assert checkpoint["history"][0]["elapsed_s"] < checkpoint["elapsed_s"]


def test_a_run_without_validation_claims_no_validation_accuracy(tmp_path, small_train):
    # No validation set, or an empty one (--valid-size 0): nothing was validated, so neither the
    # result, model.json nor history.csv may carry a validation figure.
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    empty = DigitSet(small_train.images[:0], small_train.labels[:0])
    config = TrainConfig(epochs=1, batch_size=64)
    for name, valid in (("none", None), ("empty", empty)):
        result = train(config, subset, valid, tmp_path / name)
        assert result.valid_accuracy is None
        assert "valid_accuracy" not in read_meta(tmp_path / name)
        assert not any(key.startswith("valid_") for key in result.history[0])


def test_train_checks_a_callers_arrays_and_run_directory(tmp_path, tiny_run, small_train):
    """train() from Python: 0-1 floats had trained on near-black digits (validation 0.06),
    labels 1-10 failed in cross_entropy, and a run directory holding a run was overwritten."""
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64)
    images, labels = small_train.images[:64], small_train.labels[:64]
    for digits, message in [(DigitSet(images / 255, labels), r"look scaled: pass \(X \* 255\)"),
                            (DigitSet(images, labels + 1), "got labels from 1 to 10"),
                            (DigitSet(images, None), "needs a label per image")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            train(config, digits, None, tmp_path / "run")
    with pytest.raises(ValueError, match="one label per image: 63 labels for 64 images"):
        train(config, DigitSet(images, labels), DigitSet(images, labels[:63]), tmp_path / "run")
    weights = (tiny_run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(config, DigitSet(images, labels), None, tiny_run)
    assert (tiny_run / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("resume", [False, True])
def test_training_never_replaces_a_saved_classical_model(tmp_path, small_train, small_csvs,
                                                         resume):  # fmt: skip
    """A logreg saved by save_estimator has no checkpoint.pt: `digits train --out` there (with
    --resume too, "no checkpoint, starting from scratch") had trained a net over it."""
    from digit_recognizer.estimator import NetClassifier, build_estimator, save_estimator

    logreg = build_estimator("logreg", n_components=20)
    saved = tmp_path / "logreg"
    save_estimator(logreg.fit(small_train.images[:300], small_train.labels[:300]), saved, "logreg")
    files = {path.name: path.read_bytes() for path in saved.iterdir()}
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, resume=resume)
    message = r"logreg holds a saved model \(model\.json\) that no training made there"
    with pytest.raises(ConfigError, match=message):
        train_job(config, small_csvs["train"], saved)
    with pytest.raises(ConfigError, match=message):
        NetClassifier("cnn-tiny", epochs=1, run_dir=saved).fit(small_train.images[:64],
                                                               small_train.labels[:64])  # fmt: skip
    assert {path.name: path.read_bytes() for path in saved.iterdir()} == files


def test_training_and_loading_leave_the_callers_random_stream_alone(
    tmp_path, tiny_run, small_train
):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0)
    train(config, DigitSet(small_train.images[:128], small_train.labels[:128]), None, tmp_path)
    Predictor.load(tiny_run)  # builds a net, drawing initial weights, before loading its own
    assert torch.equal(torch.rand(3), expected)


def stopped_after_epoch_1(run_dir, small_train, small_test, config, **checkpoint_changes):
    """64 training and 32 validation rows, trained for epoch 1 of ``config`` and stopped as a
    kill would; the checkpoint then says ``checkpoint_changes`` (as if the run had got there)."""
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    with pytest.raises(StopError):
        train(config, subset, valid, run_dir, on_epoch_end=stop_after(1))
    checkpoint = load_checkpoint(run_dir, torch.device("cpu"))
    torch.save(checkpoint | checkpoint_changes, run_dir / "checkpoint.pt")
    return subset, valid


def test_a_run_with_dropout_resumed_matches_a_straight_run(tmp_path, small_train, small_test):
    """Dropout draws from the global generator, reseeded each epoch: a resumed epoch drops
    the units an uninterrupted run's would (cnn-wide and seed-cnn have dropout)."""
    config = TrainConfig(model="cnn-tiny", epochs=2, batch_size=64, lr=0.02, dropout=0.5)
    subset, valid = stopped_after_epoch_1(tmp_path / "resumed", small_train, small_test, config)
    resumed = train(replace(config, resume=True), subset, valid, tmp_path / "resumed")
    straight = train(config, subset, valid, tmp_path / "straight")
    torch.testing.assert_close(resumed.model.state_dict(), straight.model.state_dict(),
                               rtol=0, atol=0)  # fmt: skip


def test_resume_goes_on_from_the_checkpoints_clock(tmp_path, small_train, small_test):
    """A resumed run whose clock started at zero again got its whole time budget once more."""
    config = TrainConfig(model="cnn-tiny", epochs=3, batch_size=64, time_budget_s=1000)
    subset, valid = stopped_after_epoch_1(tmp_path, small_train, small_test, config,
                                          elapsed_s=1000.0)  # fmt: skip
    resumed = train(replace(config, resume=True), subset, valid, tmp_path)
    assert len(resumed.history) == 1  # the budget was spent before the kill: nothing trains
    more_time = train(replace(config, resume=True, time_budget_s=0), subset, valid, tmp_path)
    assert len(more_time.history) == 3 and more_time.history[-1]["elapsed_s"] > 1000


def test_resume_keeps_the_plateau_cuts_so_far(tmp_path, small_train, small_test):
    """A resumed plateau run must go on at the lr its cuts so far reached, not the peak lr."""
    config = TrainConfig(model="cnn-tiny", epochs=2, batch_size=64, lr=0.02, schedule="plateau")
    subset, valid = stopped_after_epoch_1(tmp_path, small_train, small_test, config,
                                          lr_scale=0.25)  # fmt: skip
    resumed = train(replace(config, resume=True), subset, valid, tmp_path)
    assert resumed.history[1]["lr"] == pytest.approx(0.02 * 0.25)


def test_resume_keeps_the_epochs_without_progress_so_far(tmp_path, small_train, small_test):
    """Early stopping counts the stalled epochs before a kill too, against the best so far."""
    config = TrainConfig(model="cnn-tiny", epochs=4, batch_size=64, lr=0.02, schedule="constant",
                         patience=2)  # fmt: skip
    # Epoch 1 was already one without progress, on a best no epoch can beat.
    subset, valid = stopped_after_epoch_1(tmp_path, small_train, small_test, config,
                                          epochs_since_best=1, best_accuracy=1.0,
                                          best_loss=0.0)  # fmt: skip
    resumed = train(replace(config, resume=True), subset, valid, tmp_path)
    assert resumed.stopped_early and len(resumed.history) == 2


def test_one_cycle_keeps_its_last_epoch_when_an_earlier_one_validated_better(
    tmp_path, small_train, small_test, monkeypatch
):
    """One-cycle keeps the epoch its schedule anneals to, not the best-validating one (which
    test_one_cycle_keeps_its_last_epoch cannot tell apart when the last epoch is the best)."""
    scores = iter([(0.1, 0.9), (1.0, 0.5)])  # (loss, accuracy): epoch 1 validates best
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: next(scores))
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    config = TrainConfig(model="cnn-tiny", epochs=2, batch_size=64, lr=0.02)
    result = train(config, subset, valid, tmp_path)
    last = load_checkpoint(tmp_path, torch.device("cpu"))["model"]
    kept, meta = load_net(tmp_path)
    for key, value in last.items():
        torch.testing.assert_close(kept.state_dict()[key], value, rtol=0, atol=0)
    assert meta["valid_accuracy"] == result.valid_accuracy == 0.5


def test_one_cycle_with_patience_keeps_its_best_epoch(tmp_path, small_train, small_test,
                                                     monkeypatch):  # fmt: skip
    """Early stopping keeps the best epoch whatever the schedule, one-cycle's too: --patience
    on the default schedule would otherwise keep the last, worse, epoch."""
    scores = iter([(0.1, 0.9), (1.0, 0.5), (1.0, 0.4)])  # (loss, accuracy): epoch 1 best
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: next(scores))
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    config = TrainConfig(model="cnn-tiny", epochs=3, batch_size=64, lr=0.02, patience=5)
    result = train(config, subset, valid, tmp_path)
    last = load_checkpoint(tmp_path, torch.device("cpu"))["model"]
    kept, meta = load_net(tmp_path)
    assert any(not torch.equal(kept.state_dict()[key], value) for key, value in last.items())
    assert meta["valid_accuracy"] == result.valid_accuracy == 0.9


def one_cycle_run(tmp_path, small_train, small_test, monkeypatch, accuracies, epochs):
    """A one-cycle cnn-tiny run of ``epochs`` whose epochs validate at ``accuracies`` in turn
    (epoch 1 best, its loss the lowest; the rest for epochs resumed); its (config, rows,
    validation rows)."""
    scores = iter([(0.1 if epoch == 0 else 1.0, accuracy) for epoch, accuracy in
                   enumerate(accuracies)])  # fmt: skip
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: next(scores))
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    config = TrainConfig(model="cnn-tiny", epochs=epochs, batch_size=64, lr=0.02)
    train(config, subset, valid, tmp_path)
    return config, subset, valid


def test_a_one_cycle_run_resumed_with_patience_keeps_its_best_epoch(
    tmp_path, small_train, small_test, monkeypatch
):
    """One-cycle keeps its last epoch, yet remembers its best: resumed with --patience (which
    keeps the best epoch), the weights saved are the best epoch's, as model.json says."""
    config, subset, valid = one_cycle_run(tmp_path, small_train, small_test, monkeypatch,
                                          accuracies=[0.9, 0.5, 0.4], epochs=1)  # fmt: skip
    best = load_checkpoint(tmp_path, torch.device("cpu"))["model"]
    resumed = train(replace(config, epochs=3, resume=True, schedule="constant", patience=5),
                    subset, valid, tmp_path)  # fmt: skip
    kept, meta = load_net(tmp_path)
    for key, value in best.items():
        torch.testing.assert_close(kept.state_dict()[key], value, rtol=0, atol=0)
    assert meta["valid_accuracy"] == resumed.valid_accuracy == 0.9


def test_a_finished_run_resumed_with_patience_keeps_the_epoch_it_kept(
    tmp_path, small_train, small_test, monkeypatch
):
    """Nothing trains, so nothing changes: its config.toml keeps one-cycle's last epoch, and so
    must its weights, which had become the best epoch's (and model.json's figure that one's)."""
    config, subset, valid = one_cycle_run(tmp_path, small_train, small_test, monkeypatch,
                                          accuracies=[0.9, 0.5], epochs=2)  # fmt: skip
    last = load_checkpoint(tmp_path, torch.device("cpu"))["model"]
    for changed in ({"patience": 5}, {"schedule": "constant"}):
        resumed = train(replace(config, resume=True, **changed), subset, valid, tmp_path)
        kept, meta = load_net(tmp_path)
        for key, value in last.items():
            torch.testing.assert_close(kept.state_dict()[key], value, rtol=0, atol=0)
        assert meta["valid_accuracy"] == resumed.valid_accuracy == 0.5
        # What it reports ran with the settings its epochs had (the curves' labels, the
        # estimator's config_), and trained nothing now.
        assert resumed.config["patience"] is None and resumed.config["schedule"] == "onecycle"
        assert not resumed.trained


def test_batches_no_process_can_train_on_are_refused_before_training(
    tmp_path, small_train, monkeypatch
):
    """Fewer training rows than processes had given each an epoch of no batches, ending in an
    IndexError's traceback; a batch of one row, with an MLP (BatchNorm1d), in torch's
    ValueError's (--batch-size 1, or one row a process)."""
    run_dir = tmp_path / "run"

    def refused(config: TrainConfig, n_rows: int, streamed: bool = False) -> str:
        rows = DigitSet(small_train.images[:n_rows], small_train.labels[:n_rows])
        if streamed:  # from CSV shards, as data larger than --max-memory trains
            write_kaggle_csv(tmp_path / "train.csv", rows.images, rows.labels)
            rows = shard_csv(tmp_path / "train.csv", tmp_path / f"shards-{n_rows}", parts=1)
        with pytest.raises(ConfigError) as raised:
            train(config, rows, None, run_dir)
        assert not run_dir.exists()
        return str(raised.value)

    mlp = TrainConfig(model="mlp", epochs=1, valid_size=0)
    assert refused(replace(mlp, batch_size=1), 64) == (
        "'mlp' normalises over each batch's rows (batch norm) and cannot train on batches of "
        "one row: give --batch-size 2 or more"
    )
    assert refused(mlp, 0) == "no training rows: give some"  # an IndexError, as below
    # As one of two torchrun processes (each the same, and refused alike).
    two_processes = (Distributed(rank=0, local_rank=0, world_size=2), torch.device("cpu"))
    monkeypatch.setattr(train_module, "init_distributed", lambda *args: two_processes)
    assert refused(replace(mlp, batch_size=2), 64).endswith("give --batch-size 4 or more")
    for streamed in (False, True):  # streamed: a ValueError on one rank, a gloo error on the other
        assert refused(mlp, 3, streamed).endswith(
            "a process gets one of the 3 training rows: give more rows or train with fewer "
            "processes (--nproc)"
        )
        # In the words `digits predict --nproc` refuses in (check_rows_per_process).
        assert refused(replace(mlp, model="cnn-tiny"), 1, streamed) == (
            "1 training row for 2 processes, each of which needs one at least; give --nproc 1 "
            "or fewer"
        )


def test_a_diverging_run_stops_with_the_way_out_before_its_checkpoint(tmp_path, small_train):
    """A NaN loss had trained on and saved NaN weights, which predicted digit 0 everywhere."""
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    config = TrainConfig(model="cnn-tiny", epochs=2, batch_size=64, valid_size=0, lr=1e12,
                         schedule="constant")  # fmt: skip
    with pytest.raises(DivergedError, match=r"diverged in epoch 1 .* a lower --lr than 1e\+12"):
        train(config, subset, None, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_run_diverged_by_its_weight_decay_names_the_weight_decay(tmp_path, small_train):
    """weight_decay 1e6 had diverged with 'a lower --lr than 0.05 trains', the lr blamed."""
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0,
                         weight_decay=1e6, schedule="constant")  # fmt: skip
    with pytest.raises(DivergedError) as raised:
        train(config, subset, None, tmp_path)
    assert str(raised.value).endswith(
        "(its weights are not all numbers) with sgd at lr 0.05, momentum 0.9, weight_decay 1e+06: "
        "each step's decay, lr x weight_decay = 5e+04, throws the weights past zero; give a "
        "weight_decay below 20 (1 / lr) in the --config file; what it saved is from the epochs "
        "before"
    )


def test_divergence_advice_names_a_momentum_near_one_and_else_the_lr():
    near_one = TrainConfig(model="cnn-tiny", momentum=0.999, lr=0.1)
    assert divergence_advice(near_one) == (
        "with sgd at lr 0.1, momentum 0.999, weight_decay 0.0005: the momentum sums up to "
        "1 / (1 - momentum) = 1e+03 steps into each; give a lower momentum in the --config file, "
        "or a lower --lr"
    )
    adam = TrainConfig(model="cnn-tiny", optimizer="adam", lr=10.0, weight_decay=1.0)
    assert divergence_advice(adam) == (
        "with adam at lr 10, weight_decay 1: a lower --lr than 10 trains"
    )


def test_a_net_whose_weights_overflow_under_a_finite_loss_stops_as_diverged(tmp_path, small_train):
    """At lr 1e4 batch norm's running variances overflowed while the loss stayed finite
    (2.6e16): the run finished and saved a model that `digits predict` refused as damaged."""
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0, lr=1e4,
                         schedule="constant", augment=0)  # fmt: skip
    with pytest.raises(DivergedError, match=r"epoch 1 \(its weights are not all numbers\)"):
        train(config, subset, None, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "model.safetensors").exists()


def test_weights_broken_by_an_epochs_last_step_stop_the_run_too(tmp_path, small_train, monkeypatch):
    """Each loss is taken before its step: weights the last step of the last epoch made NaN
    had been saved (one-cycle keeps its last epoch) and refused only at prediction."""
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])  # one step an epoch
    sgd_step = torch.optim.SGD.step

    def breaking_step(self, closure=None):
        sgd_step(self, closure)
        self.param_groups[0]["params"][0].data.fill_(float("nan"))

    monkeypatch.setattr(torch.optim.SGD, "step", breaking_step)
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0)
    with pytest.raises(DivergedError, match=r"epoch 1 \(its weights are not all numbers\)"):
        train(config, subset, None, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_the_model_returned_predicts_rather_than_trains(tmp_path, small_train):
    """result.model(x) in a notebook must use the running batch-norm statistics."""
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0)
    assert not train(config, subset, None, tmp_path).model.training


def test_a_budget_cut_run_resumed_follows_the_exponential_schedule_by_steps(tmp_path, small_train):
    """The pass a budget cut short is not a whole epoch: resumed, the exponential lr is where
    an uninterrupted run's is after as many steps."""
    subset = DigitSet(small_train.images[:640], small_train.labels[:640])
    config = TrainConfig(epochs=2, batch_size=64, valid_size=0, schedule="exponential",
                         lr_decay=0.5, time_budget_s=1e-3)  # fmt: skip
    assert train(config, subset, None, tmp_path).cut_by_budget
    resumed = train(replace(config, resume=True, time_budget_s=0), subset, None, tmp_path)
    straight = train(replace(config, time_budget_s=0), subset, None, tmp_path / "straight")
    assert resumed.history[-1]["step"] == straight.history[-1]["step"] == 20
    assert resumed.history[-1]["lr"] == pytest.approx(straight.history[-1]["lr"])


def test_plateau_patience_cuts_once_per_that_many_stalled_epochs(
    tmp_path, small_train, small_test, monkeypatch
):
    """plateau_patience=2 cuts after the 2nd and 4th stalled epochs, not after each from the
    2nd on (nor after each, as patience 1 does)."""
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: (1.0, 0.5))
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    config = TrainConfig(model="cnn-tiny", epochs=6, lr=0.02, schedule="plateau",
                         plateau_factor=0.5, plateau_patience=2, batch_size=64)  # fmt: skip
    lrs = [row["lr"] for row in train(config, subset, valid, tmp_path).history]
    assert lrs == pytest.approx([0.02, 0.02, 0.02, 0.01, 0.01, 0.005])


def test_as_accurate_with_a_lower_loss_is_progress_and_a_target_reached_exactly_stops(
    tmp_path, small_train, small_test, monkeypatch
):
    """Ties in accuracy are common on a validation split of a few thousand images: a lower
    loss then counts as progress, for the plateau schedule and the best epoch alike. And a
    target accuracy is reached when met, so target_accuracy = 1.0 can stop a run."""
    scores = iter([(0.5, 0.9), (0.3, 0.9), (0.2, 0.9), (0.1, 1.0), (0.1, 1.0)])  # (loss, accuracy)
    monkeypatch.setattr(train_module, "evaluate_split", lambda *args: next(scores))
    subset = DigitSet(small_train.images[:64], small_train.labels[:64])
    valid = DigitSet(small_test.images[:32], small_test.labels[:32])
    config = TrainConfig(model="cnn-tiny", epochs=5, lr=0.02, schedule="plateau",
                         plateau_patience=1, target_accuracy=1.0, batch_size=64)  # fmt: skip
    result = train(config, subset, valid, tmp_path)
    assert [row["lr"] for row in result.history] == [0.02] * 4  # never cut
    assert result.stopped_early and len(result.history) == 4


def test_rows_fingerprint_tells_other_labels_and_other_images_apart(small_train):
    """A resume on the same images relabelled (another label column, a fixed-up train.csv)
    must be refused as other training rows: the fingerprint covers the labels too."""
    images, labels = small_train.images[:64], small_train.labels[:64]
    fingerprint = rows_fingerprint(DigitSet(images, labels))
    assert rows_fingerprint(DigitSet(images.copy(), labels.copy())) == fingerprint
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert rows_fingerprint(DigitSet(images, relabelled)) != fingerprint
    retouched = images.copy()
    retouched[0, 0, 0] ^= 1
    assert rows_fingerprint(DigitSet(retouched, labels)) != fingerprint


def test_a_finished_run_resumed_says_so_without_a_budget_it_never_had(tmp_path, small_train,
                                                                      caplog):  # fmt: skip
    subset = DigitSet(small_train.images[:128], small_train.labels[:128])
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, valid_size=0)
    train(config, subset, None, tmp_path)
    with caplog.at_level(logging.INFO, logger="digit_recognizer.train"):
        train(replace(config, resume=True), subset, None, tmp_path)
    assert f"{tmp_path}: finished already (1 epoch); nothing left to train" in caplog.text
    assert "other settings" not in caplog.text  # --resume itself is no change of settings


def test_a_budget_cut_run_resumed_with_other_settings_names_its_epochs_by_steps(
    tmp_path, small_train, caplog
):
    subset = DigitSet(small_train.images[:640], small_train.labels[:640])
    config = TrainConfig(epochs=2, batch_size=64, valid_size=0, time_budget_s=1e-3)
    cut = train(config, subset, None, tmp_path)
    assert cut.cut_by_budget and cut.epochs_run < 1
    with caplog.at_level(logging.WARNING, logger="digit_recognizer.train"):
        train(replace(config, resume=True, weight_decay=0.05), subset, None, tmp_path)
    assert f"other settings than its first {cut.epochs_run:g} epochs trained with" in caplog.text


def test_a_finished_run_resumed_rewrites_a_history_its_kill_cut_short(
    tmp_path, small_train, small_test
):
    """A kill between the last checkpoint and history.csv left the history an epoch short for
    good: the resume, with nothing to train, never wrote it."""
    config = TrainConfig(model="cnn-tiny", epochs=1, batch_size=64, lr=0.02)
    subset, valid = stopped_after_epoch_1(tmp_path, small_train, small_test, config)
    (tmp_path / "history.csv").unlink()
    train(replace(config, resume=True), subset, valid, tmp_path)
    assert len(read_history(tmp_path / "history.csv")) == 1


def test_a_history_reads_back_as_written_and_another_csv_is_named(tmp_path):
    """Epochs and steps come back as the counts training wrote (epoch 3, not 3.0). Another
    program's CSV saved as history.csv is refused where it is read, naming it, rather than read
    as rows the learning curves then find no epoch or lr in."""
    history = [{"epoch": 1, "step": 47, "train_loss": 0.5, "lr": 0.02}]
    write_history(tmp_path, history)
    read = read_history(tmp_path / "history.csv")
    assert read == history and type(read[0]["epoch"]) is type(read[0]["step"]) is int
    path = tmp_path / "history.csv"
    path.write_text("accuracy,loss\n0.9,0.3\n")
    with pytest.raises(ModelFileError, match=r"history.csv: not a history .* \(no rows of epoch"):
        read_history(path)


def test_a_resume_on_other_validation_rows_is_refused(tmp_path, small_train, small_test):
    """Its best epoch was chosen, and its figures recorded, on the rows it validated on."""
    config = TrainConfig(model="cnn-tiny", epochs=2, batch_size=64, lr=0.02)
    subset, valid = stopped_after_epoch_1(tmp_path, small_train, small_test, config)
    images = valid.images.copy()
    images[3, 14, 14] ^= 1  # one pixel of one validation image
    with pytest.raises(ConfigError, match="would change the run's validation rows"):
        train(replace(config, resume=True), subset, DigitSet(images, valid.labels), tmp_path)
    assert len(train(replace(config, resume=True), subset, valid, tmp_path).history) == 2


def test_a_checkpoint_from_before_validation_rows_were_recorded_resumes(tmp_path):
    from digit_recognizer.checkpoint import check_resume_matches

    config = TrainConfig(model="cnn-tiny")
    checkpoint = {"config": asdict(config), "rows": "train"}  # no "valid_rows": it cannot say
    check_resume_matches(tmp_path, checkpoint, config, "train", "valid")
    with pytest.raises(ConfigError, match="validation rows"):
        check_resume_matches(tmp_path, checkpoint | {"valid_rows": "other"}, config, "train",
                             "valid")  # fmt: skip


def test_a_resume_on_other_training_rows_names_the_memory_budget_where_it_changed(tmp_path):
    """Another max_memory_gb can stream rows that were in memory (fingerprinted another way):
    the refusal says so then, and only then."""
    from digit_recognizer.checkpoint import check_resume_matches

    config = TrainConfig(model="cnn-tiny")
    checkpoint = {"config": asdict(config), "rows": "in memory"}
    streamed = replace(config, max_memory_gb=0.01)
    with pytest.raises(ConfigError, match=r"rows \(or whether they stream: max_memory_gb\);"):
        check_resume_matches(tmp_path, checkpoint, streamed, "streamed", None)
    with pytest.raises(ConfigError, match=r"change the run's training rows; "):
        check_resume_matches(tmp_path, checkpoint, config, "other rows", None)


def test_the_fingerprint_of_streamed_shards_follows_their_hashes_and_order():
    """Streamed rows are fingerprinted by their shards' SHA-256s: other shards, or the same in
    another order, are other training rows."""
    from digit_recognizer.data.shards import Manifest, Shard

    def fingerprint(*hashes: str) -> str:
        shards = [Shard(Path(f"{h}.csv"), 10, 100, h * 64) for h in hashes]
        return rows_fingerprint(Manifest(tuple(shards), has_labels=True))

    assert fingerprint("a", "b") == fingerprint("a", "b")
    assert len({fingerprint("a", "b"), fingerprint("a", "c"), fingerprint("b", "a")}) == 3


def test_the_rows_fingerprint_covers_the_labels_too(small_train):
    """A resume on the same images relabelled (a corrected train.csv) trains on other rows."""
    images, labels = small_train.images[:50], small_train.labels[:50]
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert rows_fingerprint(DigitSet(images, labels)) == rows_fingerprint(DigitSet(images, labels))
    assert rows_fingerprint(DigitSet(images, labels)) != rows_fingerprint(
        DigitSet(images, relabelled)
    )


def test_a_resumes_changed_settings_are_named_without_its_resume():
    """The --resume that continues a run is no setting of the run's."""
    from digit_recognizer.checkpoint import changed_settings

    recorded = asdict(TrainConfig(model="cnn-tiny"))
    resumed = TrainConfig(model="cnn-tiny", resume=True, epochs=2)
    assert changed_settings(recorded, resumed) == ["epochs 15 -> 2"]


def test_training_rows_lacking_digits_are_warned_of_once_and_recorded(tmp_path, small_train,
                                                                      caplog):  # fmt: skip
    """Rows of 0-4 alone trained without a word, and no run said which digits it had seen:
    `digits evaluate` on all ten could only report a low accuracy. Streamed rows alike: before
    training where their manifest lists their digits, as the first epoch reads them where it
    does not (one written before builds counted them)."""
    low = small_train.labels < 5
    subset = DigitSet(small_train.images[low][:128], small_train.labels[low][:128])
    config = TrainConfig(model="mlp", epochs=2, batch_size=64, valid_size=0, lr=0.02)
    write_kaggle_csv(tmp_path / "train.csv", subset.images, subset.labels)
    listed = shard_csv(tmp_path / "train.csv", tmp_path / "listed", parts=2)
    shutil.copytree(tmp_path / "listed", tmp_path / "unlisted")
    document = json.loads((tmp_path / "unlisted" / "manifest.json").read_text())
    for entry in document["shards"]:
        del entry["class_counts"]
    (tmp_path / "unlisted" / "manifest.json").write_text(json.dumps(document))
    unlisted = read_manifest(tmp_path / "unlisted")
    expected = [int((subset.labels == digit).sum()) for digit in range(10)]
    for name, rows, before_training in (("memory", subset, True), ("listed", listed, True),
                                        ("unlisted", unlisted, False)):  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="digit_recognizer"):
            train(config, rows, None, tmp_path / name)
        said = ("the training rows hold no 5, 6, 7, 8, 9 (5 of the 10 digits): the model never "
                "learns them")  # fmt: skip
        assert caplog.text.count(said) == 1, name
        is_before = caplog.text.index(said) < caplog.text.index("training mlp on")
        assert is_before == before_training, name
        assert read_meta(tmp_path / name)["train_class_counts"] == expected, name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
        warn_missing_digits(count_classes(small_train.labels), "the training rows")
    assert not caplog.text
