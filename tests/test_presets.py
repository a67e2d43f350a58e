import pytest

from digit_recognizer.config import save_config
from digit_recognizer.errors import ConfigError
from digit_recognizer.presets import Preset, get_preset, job_configs
from digit_recognizer.train import TrainConfig


def test_presets_are_the_recipes_the_readme_names():
    # Through configs(), what a job trains: the values in the preset alone say nothing of
    # whether they reach the TrainConfig.
    fast = get_preset("fast").configs()[0]
    assert (fast.model, fast.epochs, fast.time_budget_s, fast.batch_size) == ("cnn-tiny", 8, 60, 64)
    default = get_preset("default").configs()[0]
    assert (default.time_budget_s, default.batch_size) == (300, 64)
    assert (default.ema_decay, default.stroke) == (0.999, 0.5)
    assert get_preset("default").overrides["model"] == "auto"  # configs resolve it: see auto_model
    assert get_preset("fast").tta and get_preset("default").tta
    assert get_preset("best").tta
    with pytest.raises(ConfigError, match="unknown preset 'quick'; choose one of fast, default"):
        get_preset("quick")


def test_the_seed_presets_lr_is_its_optimizers_default():
    """`--preset seed --optimizer sgd` had trained SGD at the preset's Adam lr, 1e-3, where
    --lr's help promises 0.05 for sgd."""
    seed = get_preset("seed").configs()[0]
    assert (seed.optimizer, seed.peak_lr()) == ("adam", 1e-3)  # the notebook's
    assert get_preset("seed").configs(flags={"optimizer": "sgd"})[0].peak_lr() == 0.05


def test_best_members_differ_and_flags_override_them_all(tmp_path):
    members = get_preset("best").configs()
    assert [config.seed for config in members] == [1, 2, 3, 4, 5]
    assert [config.stroke for config in members] == [0.0, 0.0, 1.0, 1.0, 1.0]  # two kinds
    assert {config.epochs for config in members} == {20}
    toml = tmp_path / "best.toml"
    toml.write_text("epochs = 3\nstroke = 0.5\n")
    moved = get_preset("best").configs(toml, {"seed": 10, "epochs": None, "lr": 0.1})
    assert [config.seed for config in moved] == [11, 12, 13, 14, 15]
    assert {(config.epochs, config.stroke, config.lr) for config in moved} == {(3, 0.5, 0.1)}
    assert get_preset("fast").configs(flags={"seed": 10})[0].seed == 10  # one model: as given


def test_a_seed_that_would_take_a_member_past_the_last_one_says_so(tmp_path):
    """--preset best --seed 4294967292 had said "seed must be from 0 to 2**32 - 1" of a seed
    within that range: member 5's seed, 4294967297, was not. The way out names the flag, which
    also overrides a TOML's seed (it had said "give a smaller seed", naming neither)."""
    assert get_preset("best").configs(flags={"seed": 2**32 - 6})[-1].seed == 2**32 - 1
    toml = tmp_path / "best.toml"
    toml.write_text(f"seed = {2**32 - 4}\n")
    for toml_path, flags in ((None, {"seed": 2**32 - 4}), (toml, {})):
        with pytest.raises(ConfigError, match=r"^seed 4294967292: member 4 would train with seed "
                           r"4294967296, out of range; the members train with seeds 4294967292 "
                           r"\+ 1 to 5: give a --seed of at most 4294967290$"):  # fmt: skip
            get_preset("best").configs(toml_path, flags)
    assert get_preset("best").configs(toml, {"seed": 2**32 - 6})[-1].seed == 2**32 - 1


def test_a_resume_trains_from_the_runs_config_toml_unless_given_one(tmp_path):
    """`digits train --resume` goes on with what the run recorded; `--config` given with it
    is the user's word over that record (the preset stays under both)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(TrainConfig(model="cnn-tiny", epochs=2), run_dir / "config.toml")
    mine = tmp_path / "mine.toml"
    mine.write_text("epochs = 3\n")
    assert job_configs("fast", None, {}, resumed_run=run_dir)[0].epochs == 2
    assert job_configs("fast", mine, {}, resumed_run=run_dir)[0].epochs == 3


def test_the_seed_preset_is_the_notebooks_whole_recipe():
    """`--preset seed` is the baseline every figure is compared against: each of its settings,
    not just its optimizer, must reach the TrainConfig."""
    seed = get_preset("seed").configs()[0]
    assert (seed.model, seed.batch_size, seed.epochs) == ("seed-cnn", 32, 50)
    assert seed.weight_decay == 1e-4  # the notebook's L2
    assert (seed.schedule, seed.plateau_factor, seed.plateau_patience) == ("plateau", 0.5, 2)
    assert (seed.patience, seed.label_smoothing, seed.stroke, seed.styles) == (5, 0.0, 0.0, 0.0)
    assert not get_preset("seed").tta


def test_a_members_own_values_override_the_presets():
    """Preset.configs layers a member's values over the preset's (best's shared values and its
    members' do not overlap today, so only a preset built here can show the order)."""
    preset = Preset({"epochs": 20, "stroke": 1.0}, members=({"stroke": 0.0}, {"epochs": 3}))
    assert [(config.epochs, config.stroke) for config in preset.configs()] == [(20, 0.0), (3, 1.0)]
