import math
from pathlib import Path

import numpy as np
import pytest

import digit_recognizer.train as train_module
from digit_recognizer.config import config_to_toml, load_config, read_toml, save_config
from digit_recognizer.errors import ConfigError, UnknownModelError
from digit_recognizer.models.registry import available
from digit_recognizer.predict import PredictConfig
from digit_recognizer.serve import ServeConfig
from digit_recognizer.train import TrainConfig
from digit_recognizer.tune import TuneConfig


def test_precedence_defaults_toml_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 7\nlr = 0.05\nmodel = "mlp"\n')
    config = load_config(TrainConfig, toml, {"epochs": 3, "seed": None})
    assert (config.epochs, config.lr, config.model, config.seed) == (3, 0.05, "mlp", 0)


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = TrainConfig(optimizer="adam", time_budget_s=30, augment=0.5)
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    assert load_config(TrainConfig, path) == config


def test_an_lr_left_unset_stays_unset_for_another_optimizer(tmp_path):
    """A run's config.toml had recorded the lr resolved for its optimizer, SGD's 0.05: `digits
    train --config RUN/config.toml --optimizer adam` then trained Adam at 0.05, not its 1e-3."""
    path = tmp_path / "config.toml"
    save_config(TrainConfig(epochs=2), path)
    assert 'lr = "none"' in path.read_text()
    assert load_config(TrainConfig, path).peak_lr() == 0.05  # unchanged, the run again
    assert load_config(TrainConfig, path, {"optimizer": "adam"}).peak_lr() == 1e-3
    save_config(TrainConfig(lr=0.02), path)  # one set stays set, whatever the optimizer
    assert load_config(TrainConfig, path, {"optimizer": "adam"}).peak_lr() == 0.02


def test_saved_config_unsets_what_a_preset_below_it_would_set(tmp_path):
    """A run without EMA or time budget (a fast run, a tuned trial) stays so when its config.toml
    is read over a preset that sets them, as `--resume` and `--config` read it."""
    path = tmp_path / "config.toml"
    config = TrainConfig(epochs=2)
    save_config(config, path)
    assert 'ema_decay = "none"' in path.read_text()
    preset = {"ema_decay": 0.999, "time_budget_s": 300.0, "widths": [8, 16, 32]}
    assert load_config(TrainConfig, path, preset=preset) == config
    path.write_text('epochs = "none"\n')  # only a setting that may be unset takes "none"
    with pytest.raises(ConfigError, match="'epochs' must be int, got 'none'"):
        load_config(TrainConfig, path)
    # --config given the run's directory, or its weights: one line each.
    with pytest.raises(ConfigError, match="a directory; give its TOML file"):
        load_config(TrainConfig, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x89\xff\x00weights")
    with pytest.raises(ConfigError, match=r"model\.safetensors: not valid TOML"):
        load_config(TrainConfig, tmp_path / "model.safetensors")


def test_a_bad_value_is_blamed_on_the_flag_or_the_file_that_gave_it(tmp_path):
    """`digits train --resume --epochs 0` had said the run's config.toml holds epochs 0; and a
    flag's value was blamed on its setting's name ("flags: valid_size must be in [0, 1)"), not on
    the flag typed, as `digits compare` names it."""
    toml = tmp_path / "config.toml"
    toml.write_text("epochs = 3\nlr = 0.05\n")
    for flags, message in [({"epochs": 0}, "--epochs must be >= 1"),
                           ({"valid_size": 1.5}, r"--valid-size must be in \[0, 1\)"),
                           ({"time_budget_s": -1.0}, "--time-budget must be >= 0"),
                           ({"max_memory_gb": math.inf}, "--max-memory must be a finite number"),
                           ({"augment": 5.0}, r"--augment \(the strength\) must be in \[0, 3.33\)"),
                           ({"optimizer": "rmsprop"}, "--optimizer must be one of"),
                           # It had said "flags: 'logreg' is not a net".
                           ({"model": "logreg"}, "--model 'logreg' is not a net: `digits compare`"),
                           ({"epoch": 3}, "flags: unknown key 'epoch'")]:  # fmt: skip
        for toml_path in (toml, None):
            with pytest.raises(ConfigError, match=f"^{message}"):
                load_config(TrainConfig, toml_path, flags)
    toml.write_text("epochs = 0\n")
    with pytest.raises(ConfigError, match=r"config\.toml: epochs must be >= 1"):
        load_config(TrainConfig, toml, {"lr": -1.0})
    assert load_config(TrainConfig, toml, {"epochs": 2}).epochs == 2  # a flag mends the file
    # The file's bad value, replaced by a flag, is not blamed for another flag's.
    with pytest.raises(ConfigError, match=r"^--lr must be > 0"):
        load_config(TrainConfig, toml, {"epochs": 2, "lr": -1.0})
    # A flag's value that fails with the file's: the flag.
    toml.write_text("widths = [8, 16, 32]\n")
    with pytest.raises(ConfigError, match=r"^--model 'seed-cnn' has no 'widths' setting"):
        load_config(TrainConfig, toml, {"model": "seed-cnn"})
    # The file's widths, too large for the file's own model: that model, not the default's.
    toml.write_text(f'model = "cnn-tiny"\nwidths = [{10**20}, 1, 1]\n')
    with pytest.raises(ConfigError, match=r"config\.toml: widths .* to build a 'cnn-tiny'; give"):
        load_config(TrainConfig, toml, {"model": "seed-cnn"})
    toml.write_text('model = "cnnn"\n')  # mended by --model: the other flag is named
    with pytest.raises(ConfigError, match=r"^--lr must be > 0"):
        load_config(TrainConfig, toml, {"model": "cnn", "lr": -1.0})
    # Other jobs' flags too: tune's --timeout sets timeout_s, serve's --port port.
    with pytest.raises(ConfigError, match=r"^--valid-size must be in \(0, 1\), got 2.0"):
        load_config(TuneConfig, None, {"valid_size": 2.0})
    with pytest.raises(ConfigError, match=r"^--port must be from 0 to 65535"):
        load_config(ServeConfig, None, {"port": 70000})


def test_unknown_key_lists_valid_keys_and_closest():
    with pytest.raises(
        ConfigError, match=r"unknown key 'epoch'.*did you mean 'epochs'.*valid keys: model"
    ):
        load_config(TrainConfig, overrides={"epoch": 3})


def test_wrong_type_says_expected_and_got(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = "ten"\n')
    with pytest.raises(ConfigError, match=r"'epochs' must be int, got 'ten'"):
        load_config(TrainConfig, toml)
    with pytest.raises(ConfigError, match=r"'optimizer' must be one of 'sgd', 'adam', 'adamw'"):
        TrainConfig(optimizer="rmsprop")
    toml.write_text('widths = [16, "a", 64]\n')  # each item of a list is checked too
    with pytest.raises(ConfigError, match=r"'widths\[1\]' must be int, got 'a'"):
        load_config(TrainConfig, toml)
    toml.write_text("epochs = true\n")  # a bool is an int to Python, not to a recipe
    with pytest.raises(ConfigError, match=r"'epochs' must be int, got True"):
        load_config(TrainConfig, toml)
    toml.write_text('lr = "fast"\n')  # an optional setting's way to be off is named as written
    with pytest.raises(ConfigError, match=r"'lr' must be float or 'none', got 'fast'$"):
        load_config(TrainConfig, toml)
    toml.write_text("augment = true\n")  # nor a float, which an int widens to
    with pytest.raises(ConfigError, match=r"'augment' must be float, got True"):
        load_config(TrainConfig, toml)
    toml.write_text("[train]\nepochs = 7\n")  # a table's keys count as the file's own
    assert load_config(TrainConfig, toml).epochs == 7


def test_bad_value_and_unknown_model():
    with pytest.raises(ConfigError, match="valid_size must be in"):
        TrainConfig(valid_size=1.5)
    with pytest.raises(ConfigError, match=r"styles must be in \[0, 1\]"):
        TrainConfig(styles=1.5)
    with pytest.raises(ConfigError, match=r"seed must be from 0 to 2\*\*32 - 1"):
        TrainConfig(seed=-1)  # else refused by the split, in a message about too few rows
    # Values that would crash the loop (a modulo by zero) or end it at once are refused up front.
    for bad, message in [({"plateau_patience": 0}, "plateau_patience must be >= 1"),
                         ({"patience": -1}, "patience must be >= 0"),
                         ({"plateau_factor": 1.0}, r"plateau_factor must be in \(0, 1\)"),
                         ({"lr_decay": 1.5}, r"lr_decay must be in \(0, 1\], got 1.5$"),
                         ({"widths": (16, 0, 64)}, r"widths must be >= 1, got \(16, 0, 64\)"),
                         ({"stroke": 1.5}, r"stroke must be in \[0, 1\]"),
                         ({"augment": 3.4}, r"augment \(the strength\) must be in \[0, 3.33\)"),
                         # At 1: momentum never fades; no target left; a division by zero in
                         # get_lr; an average that ever less follows the weights trained.
                         ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
                         ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
                         ({"warmup": 1.0}, r"warmup must be in \[0, 1\)"),
                         ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
                         ({"lr_decay": 0.0}, r"lr_decay must be in \(0, 1\]"),
                         # Past the image's size, blank digits; from 1e38, NaN ones.
                         ({"elastic": 1e38}, r"elastic must be in \[0, 28\]")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)
    with pytest.raises(UnknownModelError, match=r"unknown model 'cnnn'. Did you mean 'cnn'"):
        TrainConfig(model="cnnn")
    # Training takes nets alone: a classical model is neither suggested nor listed.
    with pytest.raises(UnknownModelError) as refused:
        TrainConfig(model="logrg")
    assert str(refused.value) == f"unknown model 'logrg'. Available: {', '.join(available('net'))}"
    assert "logreg" not in str(refused.value)


def test_an_unknown_model_is_blamed_on_the_file_or_the_flag_that_named_it(tmp_path):
    """Other bad values named their TOML file or the flags; an unknown model named neither."""
    toml = tmp_path / "c.toml"
    toml.write_text('model = "cnnn"\n')
    with pytest.raises(UnknownModelError, match=r"^\S*c\.toml: unknown model 'cnnn'"):
        load_config(TrainConfig, toml, {"epochs": 3})
    toml.write_text('model = "cnn"\n')
    with pytest.raises(UnknownModelError, match=r"^--model: unknown model 'cnnn'"):
        load_config(TrainConfig, toml, {"model": "cnnn"})


def test_widths_no_net_can_take_are_refused_with_the_file_before_any_data_is_read(tmp_path):
    """widths = [8] for a 3-stage CNN had failed once the data had loaded, naming no file, and a
    width past int64 ended training in torch's C++ traceback."""
    toml = tmp_path / "c.toml"
    too_large = rf"widths \[{10**20}, 1, 1\]: too large for torch to build a 'cnn-tiny'; give"
    cases = [
        ("[8]", r"widths \[8\]: the compact CNN has 3 stages; give 3 widths, one a stage"),
        (f"[{10**20}, 1, 1]", rf"{too_large} widths like its own, \[16, 32, 64\]"),
    ]
    for widths, message in cases:
        toml.write_text(f'model = "cnn-tiny"\nwidths = {widths}\n')
        with pytest.raises(ConfigError, match=rf"^{toml}: {message}"):
            load_config(TrainConfig, toml)
    assert load_config(TrainConfig, None, {"model": "mlp", "widths": (8,)}).widths == (8,)


def test_widths_whose_weights_outgrow_the_memory_are_refused_with_their_size(tmp_path, monkeypatch):
    """widths = [4000000000, 1, 1] built on the meta device and ended training in the CPU
    allocator's traceback (its first layer's weights alone: 144 GB)."""
    monkeypatch.setattr(train_module, "memory_bytes", lambda: 16 * 10**9)
    toml = tmp_path / "c.toml"
    toml.write_text('model = "cnn-tiny"\nwidths = [4000000000, 1, 1]\n')
    with pytest.raises(ConfigError, match=rf"^{toml}: widths \[4000000000, 1, 1\]: a 'cnn-tiny' of "
                       r"80,000,000,055 weights needs 640 GB to train \(float32, with their "
                       r"gradients\), more than this machine's 16 GB; give widths like its own, "
                       r"\[16, 32, 64\]$"):  # fmt: skip
        load_config(TrainConfig, toml)
    assert load_config(TrainConfig, None, {"model": "mlp", "widths": (4096,)}).widths == (4096,)


def test_settings_that_are_not_finite_are_refused(tmp_path):
    """inf passed every range check: max_memory_gb = inf ended `digits train` in an
    OverflowError's traceback, lr = inf in a diverged run, time_budget_s = inf in no budget."""
    toml = tmp_path / "c.toml"
    for key in ("max_memory_gb", "lr", "time_budget_s", "weight_decay", "ddp_timeout_s"):
        toml.write_text(f"{key} = inf\n")
        with pytest.raises(ConfigError, match=rf"c\.toml: {key} must be a finite number, got inf"):
            load_config(TrainConfig, toml)
    with pytest.raises(ConfigError, match="lr_decay must be a finite number, got nan"):
        TrainConfig(lr_decay=float("nan"))
    # PredictConfig's too: `digits predict --nproc 2` had ended in every process's OverflowError;
    # and a finite 1e300 in both (1e13 in gloo's "Invalid timeout").
    for value in ("inf", "nan", "1e13"):
        toml.write_text(f"ddp_timeout_s = {value}\n")
        with pytest.raises(ConfigError, match=r"c\.toml: ddp_timeout_s must be in \(0, 1e\+09\]"):
            load_config(PredictConfig, toml)
    toml.write_text("ddp_timeout_s = 1e300\n")
    # In PredictConfig's words: TrainConfig's own copy of the check had left out the value.
    for config_class in (TrainConfig, PredictConfig):
        with pytest.raises(ConfigError, match=r"c\.toml: ddp_timeout_s must be in \(0, 1e\+09\] "
                           r"seconds, got 1e\+300$"):  # fmt: skip
            load_config(config_class, toml)


def test_an_lr_or_weight_decay_past_float32_is_refused(tmp_path):
    """`digits train --lr 1e39` passed the finite check and ended in torch's traceback at the
    first step (SGD's update overflowing float32); weight_decay = 1e39 too."""
    with pytest.raises(ConfigError, match=r"^--lr must be at most 3\.4e\+38 \(float32's largest\)"):
        load_config(TrainConfig, None, {"lr": 1e39})
    toml = tmp_path / "c.toml"
    toml.write_text("weight_decay = 1e39\n")
    with pytest.raises(ConfigError, match=r"c\.toml: weight_decay must be at most 3\.4e\+38"):
        load_config(TrainConfig, toml)
    assert TrainConfig(lr=3e38, weight_decay=3e38).lr == 3e38  # diverges, and says so


def test_bad_toml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
    # A byte-order mark, as Notepad wrote UTF-8 before 2019: it had been "not valid TOML".
    bad.write_text("epochs = 5\n", encoding="utf-8-sig")
    assert read_toml(bad) == {"epochs": 5}


def test_a_key_set_in_two_sections_is_refused(tmp_path):
    """Sections are flattened into their keys: a key set in two of them (or in one and before
    them all) had taken the last value without a word."""
    toml = tmp_path / "c.toml"
    toml.write_text("lr = 0.1\n[optimizer]\nmomentum = 0.8\n[schedule]\nlr = 0.01\n")
    with pytest.raises(ConfigError, match=r"c\.toml: 'lr' is set twice \(before any \[section\] "
                                          r"and in \[schedule\]\); keep one"):  # fmt: skip
        load_config(TrainConfig, toml)
    toml.write_text("[optimizer]\nlr = 0.1\n[schedule]\nlr = 0.01\n")
    with pytest.raises(
        ConfigError, match=r"'lr' is set twice \(in \[optimizer\] and in \[schedule"
    ):
        read_toml(toml)
    toml.write_text("lr = 0.1\n[optimizer]\nmomentum = 0.8\n")
    assert read_toml(toml) == {"lr": 0.1, "momentum": 0.8}


def test_configs_built_in_python_are_checked_as_files_are():
    """TrainConfig(schedule="cosine") had trained at a constant lr; numpy numbers (a grid of
    np.arange) were refused; a device "gpu" failed only when training began."""
    for bad, message in [
        ({"schedule": "cosine"}, r"'schedule' must be one of 'onecycle'"),
        ({"optimizer": "Adam"}, r"'optimizer' must be one of 'sgd'"),
        ({"epochs": "3"}, r"'epochs' must be int, got '3'"),
        ({"device": "gpu"}, r"'device' must be one of 'auto', 'cpu'"),
    ]:
        with pytest.raises(ConfigError, match=rf"TrainConfig: {message}"):
            TrainConfig(**bad)
    config = TrainConfig(epochs=np.int64(3), lr=np.float32(0.5), widths=[8, 16, 32])
    assert (type(config.epochs), type(config.lr), config.widths) == (int, float, (8, 16, 32))
    assert load_config(TrainConfig, overrides={"batch_size": np.int32(32)}).batch_size == 32
    assert TrainConfig(amp=np.True_).amp is True and PredictConfig(tta=np.bool_(False)).tta is False
    assert TrainConfig(widths=np.array([8, 16, 32])).widths == (8, 16, 32)
    with pytest.raises(ConfigError, match="'epochs' must be int, got True"):
        TrainConfig(epochs=np.True_)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        PredictConfig(batch_size=0)
    with pytest.raises(ConfigError, match="PredictConfig: 'device' must be one of"):
        PredictConfig(device="cuda:0")


def test_none_unsets_an_optional_setting_but_names_a_study_where_a_name_goes():
    """'none' is TOML's stand-in for None (config_to_toml), but where a string is also allowed
    it is that string: `digits tune --study-name none` names a study "none", not tune-MODEL."""
    assert load_config(TrainConfig, overrides={"ema_decay": "none"}).ema_decay is None
    assert load_config(TuneConfig, overrides={"study_name": "none"}).study_name == "none"


def test_a_setting_whose_0_is_off_says_so_when_refused(tmp_path):
    """--patience -1 had said "must be >= 1" and --ema-decay -1 "must be in (0, 1)", though
    their 0 is off; and patience = 0 in a TOML was refused where the flag's 0 was taken."""
    for bad, message in [
        ({"patience": -1}, "patience must be >= 0 (0: no early stopping), got -1"),
        ({"ema_decay": -1.0}, "ema_decay must be in [0, 1) (0: no average), got -1.0"),
        ({"time_budget_s": -1.0}, "time_budget_s must be >= 0 (0: no budget), got -1.0"),
        (
            {"target_accuracy": 0.0},
            "target_accuracy must be in (0, 1], or none (no target), got 0.0",
        ),
    ]:
        with pytest.raises(ConfigError) as refused:
            TrainConfig(**bad)
        assert str(refused.value) == message
    # 0 is off wherever it is given, and recorded as None: one way for a run to say it.
    toml = tmp_path / "off.toml"
    toml.write_text("patience = 0\nema_decay = 0\n")
    for config in (TrainConfig(patience=0, ema_decay=0), load_config(TrainConfig, toml)):
        assert (config.patience, config.ema_decay) == (None, None)


def test_a_switch_refused_is_named_as_typed_off_or_on():
    """`digits tune --model knn --no-amp` had been told "--amp applies to net trials alone":
    the flag's positive form, which the user had not typed."""
    for flags, flag in [({"amp": False}, "--no-amp"),
                        ({"channels_last": False}, "--no-channels-last"),
                        ({"ema_decay": 0.99}, "--ema-decay")]:  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            load_config(TuneConfig, None, {"model": "knn", **flags})
        assert str(refused.value).startswith(f"{flag} applies to net trials alone; 'knn' ")


def test_elastic_scaled_past_the_image_by_augment_is_refused_naming_both(tmp_path):
    """--elastic 20 --augment 1.5 (30 px, past Augmentation's 28) had been refused as
    "flags: elastic_px must be in [0, 28]": a name no flag or TOML key has."""
    past = "20 scaled by {} 1.5 is 30 px, past 28 (pixels: the image's size); lower either"
    with pytest.raises(ConfigError) as refused:
        TrainConfig(elastic=20, augment=1.5)
    assert str(refused.value) == "elastic " + past.format("'augment'")
    with pytest.raises(ConfigError) as refused:
        load_config(TrainConfig, None, {"elastic": 20.0, "augment": 1.5})
    assert str(refused.value) == "--elastic " + past.format("--augment")
    toml = tmp_path / "recipe.toml"
    toml.write_text("augment = 1.5\n")  # a flag's elastic at the file's augment
    with pytest.raises(ConfigError) as refused:
        load_config(TrainConfig, toml, {"elastic": 20.0})
    assert str(refused.value) == "--elastic " + past.format("'augment'")
    assert TrainConfig(elastic=20, augment=1.4).augmentation().elastic_px == 28
