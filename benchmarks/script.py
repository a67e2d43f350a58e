"""How each benchmark script ends on a mistake of its user's (a run directory that is not one,
an unknown preset, a port in use, a seed out of range): one line on stderr and a non-zero exit
status, as `digits` does, not a traceback. A mistake in the command line exits 2, argparse's
status for its own refusals (``flag_checks``); any other, 1. Anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from digit_recognizer.data.splits import check_seed
from digit_recognizer.errors import ConfigError, DigitsError


def run_script(main: Callable[[], None]) -> None:
    try:
        main()
    except (DigitsError, OSError) as error:  # OSError: no permission, a full disk, ...
        sys.exit(f"{Path(sys.argv[0]).name}: error: {error}")


@contextmanager
def flag_checks(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Around the checks of a script's flags after ``parse_args``: a ``ConfigError`` raised
    there ends as argparse's own refusals do, usage and one line, exit status 2 (run_script's
    exit 1 had made '--port 0' look like a failed run, '--port x' a usage error)."""
    try:
        yield
    except ConfigError as error:
        parser.error(str(error))


def replica_seed(text: str) -> int:
    """argparse's type for a replica's seed: 0 to 2**32 - 1, as every `digits` command checks
    its seeds (numpy had refused a negative one in a traceback, and taken any larger one)."""
    seed = int(text)
    try:
        check_seed(seed)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return seed


def mean_and_spread(values: Sequence[float], decimals: int) -> str:
    """'4.40 ± 0.31': the mean of repeats and their sample standard deviation, or the mean
    alone for one, which shows no spread (numpy's std, the population's, had printed '± 0.0'
    for one and 11 % too little for five)."""
    mean = f"{statistics.mean(values):.{decimals}f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values):.{decimals}f}"


def times_faster(baseline_s: float, ours_s: float) -> str:
    """How much faster ``ours_s`` is than ``baseline_s``, both seconds: '3.7x faster', or
    '1.3x slower' (a bare ratio had read '0.0x' or '0.8x faster' for a slower one)."""
    if ours_s <= baseline_s:
        return f"{baseline_s / ours_s:.1f}x faster"
    return f"{ours_s / baseline_s:.1f}x slower"


def count(text: str) -> int:
    """argparse's type for a count that must be at least 1 (repeats, clients, images...): 0 had
    ended in a traceback, an empty sample's, or a figure of nothing (nan)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
