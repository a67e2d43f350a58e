"""Ensemble members trained in turn against side by side (`--jobs`), same machine, same run.

Trains the first --members members of a preset (best's by default, for --epochs each) twice on
a replica's train.csv: one after another in this process, with all of its threads, as `digits
run --preset best` does; then --jobs at a time, each in a process of its own with a share of
the threads, as `digits run --preset best --jobs N` does. Prints each way's wall time (the
members' training, validation and reports, and the processes' start-up), the training images
per second of that wall time and of the members' training alone, and the ratio. On a CPU the
question is whether two 1-thread processes beat one 2-thread process on nets this small; on a
GPU, whether several processes keep it busier than one, whose small steps wait on kernel
launches.

    .venv/bin/python benchmarks/parallel_members.py                        # 2 members, 2 epochs
    .venv/bin/python benchmarks/parallel_members.py --members 4 --jobs 2 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import get_args

from digit_recognizer.data.replica import cached_replica
from digit_recognizer.models.runtime import Device
from digit_recognizer.pipeline import TrainJobResult, train_jobs
from digit_recognizer.presets import get_preset
from script import (  # run from benchmarks/: its folder is on the path
    flag_checks,
    replica_seed,
    run_script,
    times_faster,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="best")
    parser.add_argument("--members", type=int, default=2, help="the preset's first N members")
    parser.add_argument("--jobs", type=int, default=2, help="members trained at once")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--replica-seed", type=replica_seed, default=0)
    parser.add_argument("--device", default="auto", choices=get_args(Device))
    args = parser.parse_args()

    flags = {"epochs": args.epochs, "device": args.device}
    with flag_checks(parser):  # an unknown preset, --epochs 0
        configs = get_preset(args.preset).configs(flags=flags)[: max(args.members, 0)]
    if len(configs) < 2:
        parser.error(f"preset '{args.preset}' with --members {args.members}: not an ensemble")
    if args.jobs < 2:  # one at a time is the baseline, measured beside it
        parser.error(f"--jobs {args.jobs}: side by side is at least 2 at a time")
    # train_jobs starts no more processes than there are members: each clock runs beside that
    # many others, not --jobs.
    at_once = min(args.jobs, len(configs))
    train_csv = cached_replica(args.replica_seed).train
    print(f"{len(configs)} members of {args.preset} ({configs[0].model}, {args.epochs} epochs "
          f"each), replica {args.replica_seed}")  # fmt: skip
    walls = {}
    with tempfile.TemporaryDirectory(prefix="parallel_members-") as scratch:
        for jobs in (1, at_once):
            started = time.perf_counter()
            results = train_jobs(configs, train_csv, Path(scratch) / f"jobs-{jobs}", parallel=jobs)
            walls[jobs] = time.perf_counter() - started
            print(f"{jobs} at a time: {walls[jobs]:7.1f} s wall, "
                  f"{images_trained(results) / walls[jobs]:8,.0f} training images/s of it, "
                  f"{training_rate(results, jobs):8,.0f} while training; validation accuracy "
                  f"{', '.join(f'{job.valid_metrics.accuracy:.4f}' for job in results)}",
                  flush=True)  # fmt: skip
    print(f"side by side ({at_once} at a time) took {walls[at_once] / walls[1]:.2f}x the wall "
          f"time of one at a time: {times_faster(walls[1], walls[at_once])}")  # fmt: skip


def images_trained(results: list[TrainJobResult]) -> int:
    """The members' training images in all: steps x batch size (the last batch may be short)."""
    return sum(job.train.history[-1]["step"] * job.train.config["batch_size"] for job in results)


def training_rate(results: list[TrainJobResult], jobs: int) -> float:
    """Training images/s while members train, without start-up, validation and reports: each
    member's clock runs beside those of the jobs - 1 others (exact when jobs divides them)."""
    return images_trained(results) * jobs / sum(job.train.train_seconds for job in results)


if __name__ == "__main__":
    run_script(main)
