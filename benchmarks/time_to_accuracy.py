"""Time-to-accuracy: our recipes side by side with the seed notebook's, same machine, same run.

For each recipe: train on a replica's train.csv minus a fixed stratified 10 % validation split,
record the training seconds until validation accuracy first reaches the target, images/s, and
the final model's accuracy on the replica's 28,000-image test set (never seen in training or
selection), predicted as `digits run` does (with the preset's TTA, if any). The seed recipe
trains until it reaches the target or for --seed-budget seconds (default 1800: the notebook
needed ~1,500 s for 0.9949), whichever comes first.
Then inference throughput on the 28,000 test images.

    .venv/bin/python benchmarks/time_to_accuracy.py                      # default vs seed
    .venv/bin/python benchmarks/time_to_accuracy.py --recipes fast,default,seed --replica-seed 7
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from digit_recognizer.data.kaggle_csv import read_kaggle_csv, read_submission
from digit_recognizer.data.replica import build_replica
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import ConfigError
from digit_recognizer.pipeline import get_preset
from digit_recognizer.predict import PredictConfig, Predictor
from digit_recognizer.train import train


def time_to_target(history: list[dict[str, float]], target: float) -> tuple[float, int] | None:
    """(training seconds, epoch) when validation accuracy first reached ``target``."""
    for row in history:
        if row["valid_accuracy"] >= target:
            return row["elapsed_s"], int(row["epoch"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="default,seed", help="preset names, comma-separated")
    parser.add_argument("--target", type=float, default=0.994)
    parser.add_argument("--replica-seed", type=int, default=2024)
    parser.add_argument("--seed-budget", type=float, default=1800, help="seed recipe's time (s)")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    try:
        recipes = {name: get_preset(name) for name in args.recipes.split(",")}
    except ConfigError as error:
        parser.error(str(error))
    if ensembles := [name for name, recipe in recipes.items() if recipe.members]:
        parser.error(f"{', '.join(ensembles)}: an ensemble; this benchmark times single models")

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="time_to_accuracy-"))
    files = build_replica(work_dir / "replica", seed=args.replica_seed)
    train_set, valid_set = split_for_training(read_kaggle_csv(files.train), 0.1, seed=0)
    test_images = read_kaggle_csv(files.test).images
    solution = read_submission(files.solution)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, replica seed "
        f"{args.replica_seed}, {len(train_set)} train / {len(valid_set)} validation images"
    )

    rows = []
    for name, recipe in recipes.items():
        (config,) = recipe.configs()
        if name == "seed":
            config = replace(config, time_budget_s=args.seed_budget, target_accuracy=args.target)
        result = train(config, train_set, valid_set, work_dir / name)
        reached = time_to_target(result.history, args.target)
        start = time.perf_counter()
        # As `digits run` predicts: with the preset's test-time augmentation, if any.
        predictor = Predictor.load([result.run_dir], PredictConfig(tta=recipe.tta))
        predicted = predictor.predict(test_images)
        predict_s = time.perf_counter() - start
        images_per_s = result.history[-1]["step"] * config.batch_size / result.train_seconds
        rows.append((name, config.model, reached, result, images_per_s, predict_s,
                     float((predicted == solution).mean())))  # fmt: skip

    print(f"\n{'recipe':<8} {'model':<10} {'to ' + str(args.target):>14} {'epochs':>7} "
          f"{'train s':>8} {'img/s':>7} {'test acc':>9} {'predict 28k':>12}")  # fmt: skip
    for name, model, reached, result, images_per_s, predict_s, accuracy in rows:
        to_target = f"{reached[0]:.1f} s (ep {reached[1]})" if reached else "not reached"
        print(f"{name:<8} {model:<10} {to_target:>14} {result.epochs_run:>7g} "
              f"{result.train_seconds:>8.1f} {images_per_s:>7.0f} {accuracy:>9.4f} "
              f"{predict_s:>10.2f} s")  # fmt: skip
    by_name = {row[0]: row[2] for row in rows}
    if by_name.get("seed") and by_name.get("default"):
        ratio = by_name["seed"][0] / by_name["default"][0]
        print(f"\ntime to {args.target}: default is {ratio:.1f}x faster than the seed recipe")
    elif "seed" in by_name and by_name.get("default"):
        bound = args.seed_budget / by_name["default"][0]
        print(f"\nseed recipe did not reach {args.target} in {args.seed_budget:.0f} s: "
              f"default is > {bound:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
