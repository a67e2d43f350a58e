"""The recipes behind `--preset`: fast, default, best and the seed notebook's, as TrainConfig
values under a TOML file and flags, and the configs a job trains from them (each member's, for
an ensemble, and a resumed run's own).

Figures in README 'Results'; the experiments behind each setting in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from digit_recognizer.checkpoint import CONFIG_FILE
from digit_recognizer.config import load_config
from digit_recognizer.data.splits import check_seed
from digit_recognizer.errors import ConfigError
from digit_recognizer.models.storage import member_run_dir
from digit_recognizer.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """A named recipe: TrainConfig values (below TOML and flags), maybe an ensemble."""

    overrides: dict[str, Any]
    members: tuple[dict[str, Any], ...] | None = None  # an ensemble: each member's own values
    tta: bool = False

    def configs(
        self, toml_path: Path | None = None, flags: Mapping[str, Any] | None = None
    ) -> list[TrainConfig]:
        """One TrainConfig per member (one for a single model).

        Layers, each over the one before: the preset's values, the member's, TOML, flags. Member
        n (from 1) trains with the resolved seed + n, so ``--seed`` moves the whole ensemble to
        new seeds while its members still differ.
        """
        if not self.members:
            return [load_config(TrainConfig, toml_path, flags, preset=self.overrides)]
        configs = []
        for number, member in enumerate(self.members, start=1):
            config = load_config(TrainConfig, toml_path, flags, preset=self.overrides | member)
            try:
                check_seed(config.seed + number)
            except ConfigError:  # else refused as if the seed given were out of range
                # --seed, whether a flag or a TOML gave it: the flag overrides the file.
                raise ConfigError(f"seed {config.seed}: member {number} would train with seed "
                                  f"{config.seed + number}, out of range; the members train "
                                  f"with seeds {config.seed} + 1 to {len(self.members)}: give "
                                  f"a --seed of at most {2**32 - 1 - len(self.members)}"
                                  ) from None  # fmt: skip
            configs.append(replace(config, seed=config.seed + number))
        return configs


# Figures in README 'Results', the experiments behind them in docs/results.md. All presets but seed
# change stroke widths in training (TrainConfig.stroke: fast fully, default by half, best in three
# of its five members) and draw other writers' 1s, 7s and 9s (TrainConfig.styles), for far fewer
# errors on thick, thin and blurred strokes and other writers' digits (README, 'Beyond MNIST').
# With the 9s mirrored too, on unseen replica 2449489 on a slow day, fast scored 0.99425 in 60 s
# and default 0.9961 in 300 s, and best 0.9969 on unseen 1772453 (87 errors; members alone
# 92-101). Before, with training's shear up to 0.3 (Augmentation.shear), on unseen replica
# 1202056 on a slow day, fast scored 0.9946 in 60 s and default 0.9963 in 300 s (0.9947 and
# 0.9965 with 0.15), and best 0.9965 on unseen 3316624 (99 errors; members alone 94-112) and
# 0.9974 on 1732050 (72 errors, 70 allowed; members alone 74-83). Before: on replica 1414213
# fast scored 0.9953 in 60 s, default 0.9968 in 300 s, best 0.9971 (0.9970 and
# 0.9974 on unseen 1123581 and 2718281; before the styles: fast 0.9950 and 0.9947 on 90210 and
# 16180, default 0.9964 on 1618033, best 0.9967 and 0.9973 on 16180 and 141421). best's members
# differ in seed (weights, augmentation draws and validation split), each is evaluated and saved
# as its EMA, and their probabilities are averaged with test-time augmentation; they are
# independent runs, so an interrupted ensemble resumes member by member, and `--jobs` trains
# several at once.
PRESETS = {
    # fast and default are bounded in time as well as epochs, so a CPU without native bf16
    # (~5x slower) still finishes in 1 and 5 minutes, with the schedule annealed to the budget
    # (the price: no bit-for-bit repeats; see TrainConfig.time_budget_s). "auto" is cnn
    # with bf16 or a GPU, cnn-tiny on an fp32-only CPU: there, in 300 s, cnn-tiny beat cnn on
    # both replicas tried (12 epochs against 4-5). TTA: +0.0003 to +0.0006 on all 7 runs tried
    # (3-12 epochs), for 5x the inference (~22 s for 28,000 images with cnn-tiny on fp32).
    # Batch 64 (TrainConfig: 128): twice the steps for ~12 % fewer images/s on 2 fp32 cores;
    # +0.0006 to +0.0012 for fast on all 3 replicas tried, +0.0008 for default on one. Batch
    # 32, 256, and lr 0.025 or 0.1 at batch 64 all scored lower.
    "fast": Preset(
        {"model": "cnn-tiny", "epochs": 8, "time_budget_s": 60, "batch_size": 64}, tta=True
    ),
    # EMA (warmed_up_ema): validation crosses 0.994 at epoch 2 instead of 4 on replicas 2024 and
    # 31337 (39 s and 33 s; the last weights are still noisy at the peak lr), and the test
    # accuracy is unchanged (0.9971 and 0.9969 with TTA, as without). Half the stroke change: in
    # 300 s the full one cost the replica score (0.9962 and 0.9956 on 90210 and 16180, under the
    # 0.9960 wanted on 16180), where half of it scored 0.9966 and 0.9962 and read the UCI digits as
    # well (320 errors on both replicas against 321; without the change 415). The price: marker
    # strokes 684 errors against 371, blur 299 against 272 (README, 'Beyond MNIST').
    "default": Preset(
        {
            "model": "auto",
            "time_budget_s": 300,
            "batch_size": 64,
            "ema_decay": 0.999,
            "stroke": 0.5,
        },
        tta=True,
    ),
    # Five members: ten bought nothing on replica 271828, where the subsets of five of ten seeds
    # averaged 83.6 errors and all ten made 83. Two of them train without the stroke change: there
    # members without it made 79-88 errors to the others' 85-97, and subsets of two of them with
    # three of the others 77.9 on average (five without: 76.0), while keeping most of the others'
    # lead on other writers' digits and pens (docs/results.md). Seeds: see Preset.configs.
    "best": Preset(
        {"epochs": 20, "ema_decay": 0.999, "batch_size": 64},
        members=({"stroke": 0.0},) * 2 + ({},) * 3,
        tta=True,
    ),
    # Fine-tuning a trained run on other writers' digits (TrainConfig.init_from, `digits train
    # --init-from`): a few epochs at a fifth of the lr, replay keeping MNIST's writers read. On
    # CVL's writers, from 500 of their digits, 9 s of training: docs/beyond-mnist.md.
    "finetune": Preset({"epochs": 5, "lr": 0.01, "batch_size": 64, "stroke": 0.5}),
    # The seed notebook's recipe, for comparison: its Keras CNN, Adam 1e-3, batch 32, L2,
    # ReduceLROnPlateau(factor 0.5) and EarlyStopping on validation accuracy; its augmentation
    # did not change stroke widths or writing styles. Its lr is Adam's default, not set here:
    # set, `--optimizer sgd` would train SGD at Adam's 1e-3, not at SGD's 0.05 as --lr says.
    "seed": Preset(
        {
            "model": "seed-cnn",
            "optimizer": "adam",
            "batch_size": 32,
            "weight_decay": 1e-4,
            "schedule": "plateau",
            "plateau_factor": 0.5,
            "plateau_patience": 2,
            "patience": 5,
            "label_smoothing": 0.0,
            "stroke": 0.0,
            "styles": 0.0,
            "epochs": 50,
        }
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def job_configs(
    preset: str,
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    resumed_run: Path | None = None,
) -> list[TrainConfig]:
    """What a job trains: ``preset``'s member(s) under ``config_file`` and ``flags``; resuming
    ``resumed_run``, the run's own settings (each member's, for an ensemble) unless
    ``config_file`` says."""
    flags = flags or {}
    own = resumed_run is not None and config_file is None
    if own and (resumed_run / CONFIG_FILE).exists():
        config_file = resumed_run / CONFIG_FILE
    configs = get_preset(preset).configs(config_file, flags)
    return resumed_members(configs, resumed_run, flags) if own and len(configs) > 1 else configs


def resumed_members(
    configs: list[TrainConfig], run_dir: Path, flags: Mapping[str, Any]
) -> list[TrainConfig]:
    """An ensemble's configs for --resume: a member that started keeps the settings its own
    config.toml recorded, with ``flags`` over them but its own seed (``--seed`` moves the whole
    ensemble; a member's split and draws cannot change mid-run); the others are ``configs``'."""
    own_flags = {key: value for key, value in flags.items() if key != "seed"}
    resumed = []
    for number, config in enumerate(configs, start=1):
        recorded = member_run_dir(run_dir, number) / CONFIG_FILE
        if recorded.exists():
            config = load_config(TrainConfig, recorded, own_flags)
        resumed.append(config)
    return resumed
