"""Streaming shards against the in-memory path: rows/s and peak RSS for one epoch at two sizes.

Run: ``.venv/bin/python benchmarks/streaming.py --dir /tmp/streaming`` (a full training epoch at
1,000,000 rows is ~5 min on 2 idle CPU cores, an hour on 2 busy ones: ``--train-steps 150`` caps
the training part; the reading epoch stays whole). Builds the Kaggle replica, then for each size
``digits data expand``'s function writes ``ceil(rows / 42,000)`` augmented copies of train.csv,
one 42,000-row shard per copy. Each measurement runs in a fresh subprocess, so its peak RSS
(VmHWM; DataLoader workers by ``RUSAGE_CHILDREN``) is its own:

- expand: writing the shards.
- stream: one epoch of ``ShardStream`` through a ``DataLoader`` reading only, then one epoch of
  reading + augmentation + forward/backward/step of the default ``cnn`` (batch 128, bf16 autocast
  and channels_last where train.py uses them), the work of a training epoch (or its first steps).
- memory: ``read_data_source`` (all images in memory), then the same steps over a permutation.

Rows/s of a pass over batches (stream's reading, either's training) are its steady state: the
first batch is untimed, its DataLoader worker's start-up and first step's one-time costs left
out, and ``--train-steps`` counts the timed steps after it. memory's read is the whole call.

Target (issue 8): streaming peak RSS <= 2 GB at 1,000,000 rows, within 20 % of 100,000 rows.

Peak RSS in MB, main process + its one DataLoader worker, measured once, ``--rows 100000
1000000 --train-steps 100``, on 2 shared AMD EPYC vCPUs, Python 3.11, torch 2.13 CPU, pyarrow
26 (its rows/s are left out: timed from the first batch, worker start-up included, before the
steady state was, and under load average 5-7 from other jobs; docs/scaling.md has a
streamed training epoch's rate):

    expand   126,000 rows: peak RSS 478
    expand 1,008,000 rows: peak RSS 486
    stream   126,000 rows: peak RSS 550 + worker 446
    stream 1,008,000 rows: peak RSS 557 + worker 438
    memory   126,000 rows: peak RSS 750
    memory 1,008,000 rows: peak RSS 2,069

Worked out from those lines, streaming: 995 MB at both sizes (within 1 %); in memory: 2.8x from
126k to 1M rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from digit_recognizer.data.augment import Augmentation, augment_batch
from digit_recognizer.data.replica import build_replica, replica_is_complete
from digit_recognizer.data.shards import expand, read_data_source, read_manifest
from digit_recognizer.data.stream import ShardStream
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.models.registry import build
from digit_recognizer.models.runtime import autocast, autocast_dtype
from script import count, run_script  # run from benchmarks/: its folder is on the path

BATCH_SIZE = 128
REPLICA_ROWS = 42_000


def peak_rss_mb() -> tuple[float, float]:
    """(this process's peak RSS, the largest waited-for child's peak RSS), in MB."""
    status = Path("/proc/self/status").read_text()
    own_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own_kb / 1024, children_kb / 1024


class Step:
    """One training step of the default cnn, as train.py does it (no DDP, fixed lr)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.device = torch.device("cpu")
        self.amp_dtype = autocast_dtype(self.device)
        self.model = build("cnn").to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.generator = torch.Generator().manual_seed(0)
        self.augmentation = Augmentation()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        x = augment_batch(to_model_input(images), self.augmentation, self.generator)
        with autocast(self.device, self.amp_dtype):
            loss = F.cross_entropy(self.model(x), labels, label_smoothing=0.1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def child_expand(data_dir: Path, rows: int) -> dict:
    copies = math.ceil(rows / REPLICA_ROWS)
    start = time.perf_counter()
    out_dir = data_dir / f"expanded-{rows}"
    manifest = expand(data_dir / "train.csv", out_dir, copies, copies, valid_size=0)
    seconds = time.perf_counter() - start
    return {"rows": manifest.n_rows, "seconds": seconds, "rows_per_s": manifest.n_rows / seconds}


def steady_rate(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    step: Callable[[torch.Tensor, torch.Tensor], None],
) -> tuple[int, float]:
    """(rows, rows/s) of ``step`` over ``batches`` from the second batch on. The first batch is
    untimed: it pays the DataLoader worker's start-up (a process of its own: 2.3-2.7 s, against
    3.4-5.4 s for the other 41,872 rows of a 42,000-row epoch, at load average 16) and the first
    step's one-time costs, which had been counted as reading or training."""
    batches = iter(batches)
    step(*next(batches))
    n_rows = 0
    start = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
        n_rows += len(images)
    return n_rows, n_rows / (time.perf_counter() - start)


def child_stream(shard_dir: Path, n_workers: int, n_steps: int) -> dict:
    stream = ShardStream(shard_dir, BATCH_SIZE, seed=0)
    loader = DataLoader(stream, batch_size=None, num_workers=n_workers)
    _, read_rows_per_s = steady_rate(loader, lambda images, labels: None)
    stream.set_epoch(1)
    n_trained, train_rows_per_s = steady_rate(itertools.islice(loader, n_steps + 1), Step())
    return {"rows": stream.manifest.n_rows, "read_rows_per_s": read_rows_per_s,
            "trained": n_trained, "train_rows_per_s": train_rows_per_s}  # fmt: skip


def child_memory(shard_dir: Path, n_steps: int) -> dict:
    start = time.perf_counter()
    data = read_data_source(shard_dir)
    read_s = time.perf_counter() - start
    images, labels = torch.as_tensor(data.images), torch.as_tensor(data.labels)
    permutation = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = (
        (images[indices], labels[indices])
        for indices in permutation[: (n_steps + 1) * BATCH_SIZE].split(BATCH_SIZE)
    )
    n_trained, train_rows_per_s = steady_rate(batches, Step())
    return {"rows": len(images), "read_rows_per_s": len(images) / read_s, "trained": n_trained,
            "train_rows_per_s": train_rows_per_s}  # fmt: skip


def worker_rss(n_workers: int, peak_mb: float) -> str:
    """The DataLoader workers' part of a peak RSS line. ``RUSAGE_CHILDREN`` holds the largest
    worker's peak alone: with 2 or more it is each one's bound, not their sum; with none (the
    process reads itself) it is no worker's."""
    if n_workers == 0:
        return ""
    if n_workers == 1:
        return f" + worker {peak_mb:.0f}"
    return f" + {n_workers} workers of up to {peak_mb:.0f} each"


def run_child(*args: str) -> dict:
    """Run this script in a fresh interpreter for one measurement; its last line is JSON. A
    child that fails has said why on this process's stderr, which it shares (captured, its
    error had been lost behind CalledProcessError's traceback); this process exits with its
    status."""
    command = [sys.executable, __file__, "--child", *args]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        sys.exit(child.returncode)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/streaming-benchmark"))
    parser.add_argument("--rows", type=count, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (streaming)")
    parser.add_argument("--train-steps", type=count, default=10**9,
                        help="cap on timed training steps (after one untimed)")  # fmt: skip
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers < 0:  # the child's DataLoader would refuse it, once the shards are written
        parser.error(f"--workers must be >= 0 (0: read in the training process), got "
                     f"{args.workers}")  # fmt: skip
    if args.child:
        kind, path, *rest = args.child
        if kind == "expand":
            result = child_expand(Path(path), int(rest[0]))
        elif kind == "stream":
            result = child_stream(Path(path), int(rest[0]), int(rest[1]))
        else:
            result = child_memory(Path(path), int(rest[0]))
        own_mb, children_mb = peak_rss_mb()
        print(json.dumps(result | {"peak_rss_mb": own_mb, "worker_peak_rss_mb": children_mb}))
        return

    if not replica_is_complete(args.dir):
        print(f"building the replica in {args.dir} ...", flush=True)
        build_replica(args.dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH_SIZE}, "
          f"{args.workers} DataLoader worker(s); peak RSS in MB; rows/s of stream and train "
          "from each pass's second batch on (worker start-up and first step untimed), memory's "
          "read the whole read_data_source call", flush=True)  # fmt: skip
    for rows in args.rows:
        shard_dir = args.dir / f"expanded-{rows}"
        if not (shard_dir / "manifest.json").exists():
            made = run_child("expand", str(args.dir), str(rows))
            print(f"expand {made['rows']:>9,} rows: {made['rows_per_s']:>8,.0f} rows/s "
                  f"({made['seconds']:.0f} s), peak RSS {made['peak_rss_mb']:.0f}",
                  flush=True)  # fmt: skip
        n_rows = read_manifest(shard_dir).n_rows
        steps = str(args.train_steps)
        for kind, extra in (("stream", [str(args.workers), steps]), ("memory", [steps])):
            got = run_child(kind, str(shard_dir), *extra)
            workers = worker_rss(args.workers if kind == "stream" else 0,
                                 got["worker_peak_rss_mb"])  # fmt: skip
            print(f"{kind:<6} {n_rows:>9,} rows: read {got['read_rows_per_s']:>8,.0f} rows/s, "
                  f"read+augment+train {got['train_rows_per_s']:>6,.0f} rows/s "
                  f"({got['trained']:,} rows), "
                  f"peak RSS {got['peak_rss_mb']:.0f}{workers}", flush=True)  # fmt: skip


if __name__ == "__main__":
    run_script(main)
