"""Time ``read_kaggle_csv`` against plain ``pandas.read_csv``, and ``write_kaggle_csv``.

Run: ``.venv/bin/python benchmarks/csv_read.py`` (builds a replica in a temporary folder), or
``.venv/bin/python benchmarks/csv_read.py --dir DIR --seed S --repeats 10`` to reuse or build
replica S (default 0) in DIR.

The pandas baseline is what a notebook does: ``pd.read_csv(path).to_numpy().astype(np.uint8)``,
default C engine, no validation beyond parsing.

Measured on 2 shared AMD EPYC vCPUs while other jobs ran (load average 4-7), Python 3.11,
pyarrow 26.0, pandas 3.1, numpy 2.4, 5 repeats, two runs: train.csv 0.75-1.31 s against
pandas 0.88-2.15 s (1.2-1.6x), test.csv 0.43-0.69 s against 0.52-0.99 s (1.2-1.4x),
writing train.csv 0.81-1.52 s. On an idle machine expect lower times; compare within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from digit_recognizer.data.kaggle_csv import read_kaggle_csv, write_kaggle_csv
from digit_recognizer.data.replica import ready_replica
from script import (  # run from benchmarks/: its folder is on the path
    count,
    mean_and_spread,
    replica_seed,
    run_script,
    times_faster,
)


def time_calls(function: Callable[[], object], repeats: int) -> np.ndarray:
    """Seconds per call over ``repeats`` calls, after one untimed warm-up (page cache, imports)."""
    function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def read_with_pandas(path: Path) -> np.ndarray:
    return pd.read_csv(path).to_numpy().astype(np.uint8)


def show(name: str, seconds: np.ndarray) -> None:
    print(f"  {name:<22} {mean_and_spread(seconds, 3)} s  (n={len(seconds)})")


def run(replica_dir: Path, repeats: int, seed: int) -> None:
    ready_replica(replica_dir, seed)  # the one there if it is this seed's, else built
    for name in ("train.csv", "test.csv"):
        path = replica_dir / name
        print(f"{name} ({path.stat().st_size / 1e6:.1f} MB)")
        ours = time_calls(lambda path=path: read_kaggle_csv(path), repeats)
        baseline = time_calls(lambda path=path: read_with_pandas(path), repeats)
        show("read_kaggle_csv", ours)
        show("pandas.read_csv", baseline)
        print(f"  read_kaggle_csv        {times_faster(baseline.mean(), ours.mean())}")
    train = read_kaggle_csv(replica_dir / "train.csv")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "train.csv"
        written = time_calls(lambda: write_kaggle_csv(out, train.images, train.labels), repeats)
    show("write_kaggle_csv train", written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, help="replica folder to reuse or build (default: temporary)"
    )
    parser.add_argument("--seed", type=replica_seed, default=0, help="replica seed")
    parser.add_argument("--repeats", type=count, default=5, help="timed calls per measurement")
    args = parser.parse_args()
    if args.dir is not None:
        run(args.dir, args.repeats, args.seed)
        return
    with tempfile.TemporaryDirectory() as scratch:
        run(Path(scratch), args.repeats, args.seed)


if __name__ == "__main__":
    run_script(main)
