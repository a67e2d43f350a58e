"""Time-to-accuracy: our recipes side by side with the seed notebook's, same machine, same run.

For each recipe: train on a replica's train.csv minus a fixed stratified 10 % validation split,
record the training seconds until validation accuracy first reaches the target, images/s, and
the final model's accuracy on the replica's 28,000-image test set (never seen in training or
selection), predicted as `digits run` does (with the preset's TTA, if any). The seed recipe
trains until it reaches the target or for --seed-budget seconds (default 1800: the notebook
needed ~1,500 s for 0.9949), whichever comes first. Each row prints as its recipe finishes;
then each recipe's speed-up over the seed recipe, and inference throughput on the test images.

A recipe is a preset name, or with --recipe a preset followed by TrainConfig keys that
override it (values in TOML syntax), e.g. a large-batch variant for a GPU:

    .venv/bin/python benchmarks/time_to_accuracy.py                      # default vs seed
    .venv/bin/python benchmarks/time_to_accuracy.py --recipes fast,default,seed --replica-seed 7
    .venv/bin/python benchmarks/time_to_accuracy.py --recipes seed \\
        --recipe "default batch_size=512 lr=0.2 epochs=6"
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from digit_recognizer.data.kaggle_csv import read_kaggle_csv, read_submission
from digit_recognizer.data.replica import cached_replica
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import ConfigError
from digit_recognizer.models.runtime import resolve_device
from digit_recognizer.predict import TTA_SHIFTS, PredictConfig, Predictor
from digit_recognizer.presets import Preset, get_preset
from digit_recognizer.train import TrainConfig, train
from script import (  # run from benchmarks/: its folder is on the path
    flag_checks,
    replica_seed,
    run_script,
    times_faster,
)


def time_to_target(history: list[dict[str, float]], target: float) -> tuple[float, int] | None:
    """(training seconds, epoch) when validation accuracy first reached ``target``."""
    for row in history:
        if row["valid_accuracy"] >= target:
            return row["elapsed_s"], int(row["epoch"])
    return None


def parse_recipe(text: str, seed_settings: dict[str, Any]) -> tuple[str, Preset, TrainConfig]:
    """``"PRESET KEY=VALUE ..."`` -> (preset name, preset, its config); values are TOML. The
    seed recipe's KEY=VALUEs go over ``seed_settings`` (its time budget and target)."""
    if not text.split():
        raise ConfigError("an empty recipe: give a preset name, e.g. --recipes default,seed")
    name, *settings = text.split()
    overrides = seed_settings.copy() if name == "seed" else {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise ConfigError(f"recipe '{text}': '{setting}' is not KEY=VALUE")
        try:
            overrides[key] = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            overrides[key] = value  # a bare word: a string such as a model name
    preset = get_preset(name)
    if preset.members:
        raise ConfigError(f"{name}: an ensemble; this benchmark times single models")
    # Resolved now: an unknown key, a wrong type or a value out of range is refused before any
    # recipe trains, not once the recipes before it have.
    (config,) = preset.configs(flags=overrides)
    return name, preset, config


def describe_hardware() -> str:
    device = resolve_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=None, help="preset names, comma-separated "
                        "(default: default,seed unless --recipe is given)")  # fmt: skip
    parser.add_argument("--recipe", action="append", default=[], metavar="'PRESET KEY=VALUE ...'",
                        help="a preset with TrainConfig overrides; repeatable")  # fmt: skip
    parser.add_argument("--target", type=float, default=0.994)
    parser.add_argument("--replica-seed", type=replica_seed, default=2024)
    parser.add_argument("--seed-budget", type=float, default=1800, help="seed recipe's time (s), "
                        "unless it gives time_budget_s")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keeps the run directories, in a new folder of its own in it "
                        "(default: a temporary one, removed)")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.target <= 1:
        parser.error(f"--target must be in (0, 1], got {args.target}")
    if args.seed_budget < 0:
        parser.error(f"--seed-budget must be >= 0 (0: none), got {args.seed_budget}")
    texts = args.recipes.split(",") if args.recipes else []
    texts += args.recipe if args.recipe or args.recipes else ["default", "seed"]
    seed_settings = {"time_budget_s": args.seed_budget, "target_accuracy": args.target}
    with flag_checks(parser):
        recipes = [(text, *parse_recipe(text, seed_settings)) for text in texts]

    if args.work_dir:  # a folder of its own in it: train() refuses a run directory used before
        args.work_dir.mkdir(parents=True, exist_ok=True)
        run_dirs = Path(tempfile.mkdtemp(prefix="time_to_accuracy-", dir=args.work_dir))
        print(f"run directories in {run_dirs}", flush=True)
        measure(args, recipes, run_dirs)
        return
    with tempfile.TemporaryDirectory(prefix="time_to_accuracy-") as scratch:
        measure(args, recipes, Path(scratch))


def measure(args: argparse.Namespace, recipes: list[tuple], work_dir: Path) -> None:
    """Train each recipe into ``work_dir`` and print its row, then the ratios to seed's."""
    files = cached_replica(args.replica_seed)
    train_set, valid_set = split_for_training(read_kaggle_csv(files.train), 0.1, seed=0)
    test_images = read_kaggle_csv(files.test).images
    solution = read_submission(files.solution)
    print(
        f"torch {torch.__version__}, {describe_hardware()}, replica seed {args.replica_seed}, "
        f"{len(train_set)} train / {len(valid_set)} validation images\n\n"
        f"{'to ' + str(args.target):>15} {'epochs':>6} {'train s':>8} {'wall s':>7} "
        f"{'img/s':>7} {'test acc':>8} {'predict':>8}  recipe (model)",
        flush=True,
    )
    # (recipe, preset name, (seconds, epoch) to the target or None, predict s, train s, TTA)
    rows = []
    for index, (text, name, preset, config) in enumerate(recipes):
        wall_start = time.perf_counter()
        # Its own directory, a recipe given twice too.
        run_dir = work_dir / f"{index}-{text.replace(' ', '_')}"
        result = train(config, train_set, valid_set, run_dir)
        wall_s = time.perf_counter() - wall_start
        reached = time_to_target(result.history, args.target)
        # As `digits run` predicts: with the preset's test-time augmentation, if any. Timed
        # from the first image, not from reading the weights.
        predictor = Predictor.load([result.run_dir], PredictConfig(tta=preset.tta))
        start = time.perf_counter()
        accuracy = float((predictor.predict(test_images) == solution).mean())
        predict_s = time.perf_counter() - start
        images_per_s = result.history[-1]["step"] * config.batch_size / result.train_seconds
        rows.append((text, name, reached, predict_s, result.train_seconds, preset.tta))
        to_target = f"{reached[0]:.1f} s (ep {reached[1]})" if reached else "not reached"
        print(f"{to_target:>15} {result.epochs_run:>6g} {result.train_seconds:>8.1f} "
              f"{wall_s:>7.1f} {images_per_s:>7.0f} {accuracy:>8.4f} "
              f"{predict_s:>7.2f}s  {text} ({config.model})", flush=True)  # fmt: skip

    seed_runs = [(reached, seconds) for _, name, reached, _, seconds, _ in rows if name == "seed"]
    print()
    for text, name, reached, _, _, _ in rows:
        if name == "seed" or not reached:
            continue
        for seed_reached, seed_seconds in seed_runs:
            if seed_reached:
                ratio = times_faster(seed_reached[0], reached[0])
                print(f"time to {args.target}: {text} is {ratio} than the seed recipe")
                continue
            # Its early stopping may have ended it before the budget: its own time, a bound
            # where it trained longer than this recipe took to reach the target.
            unreached = (f"seed recipe did not reach {args.target} in its {seed_seconds:.0f} s "
                         "of training")  # fmt: skip
            if seed_seconds > reached[0]:
                print(f"{unreached}: {text} is > {times_faster(seed_seconds, reached[0])}")
            else:
                print(f"{unreached}, {text} reached it in {reached[0]:.0f} s")
    for text, _, _, predict_s, _, tta in rows:
        # A recipe with TTA predicts each image in TTA_SHIFTS' views: 5x the work of one without
        views = f", {len(TTA_SHIFTS)} views each (TTA)" if tta else ""
        print(f"inference, {len(test_images):,} test images{views}: "
              f"{len(test_images) / predict_s:,.0f} images/s ({predict_s:.2f} s) for "
              f"{text}")  # fmt: skip


if __name__ == "__main__":
    run_script(main)
