"""Streaming CSV shards for training and inference: an ``IterableDataset`` for DDP and workers.

The training loop (train.py) uses it when the data does not fit in memory (``choose_loading``):

    stream = ShardStream("big/", batch_size=128, seed=0)        # rank, world size from DDP
    loader = DataLoader(stream, batch_size=None, num_workers=1)  # the stream yields batches
    for epoch in range(n_epochs):
        stream.set_epoch(epoch)                                  # new shard order and shuffle
        for images, labels in loader:                            # len(stream) batches per rank
            ...

Figures (rows/s, peak RSS at 100,000 and 1,000,000 rows): benchmarks/streaming.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.shards import (
    Manifest,
    concat_rows,
    is_read_whole,
    read_data_source,
    read_rows,
    resolve_data_source,
)
from digit_recognizer.errors import ConfigError, counted

DEFAULT_BUFFER_ROWS = 16_384  # shuffle buffer: 12.8 MB of uint8 images per reader
STREAM_ROWS = 8192  # rows read per step when streaming (6.4 MB of images), batched for the nets


def check_rows_per_process(
    n_rows: int, n_processes: int, rows: str = "row", source: str | Path | None = None
) -> None:
    """``ConfigError`` (naming ``source``, where given) unless each of ``n_processes`` (--nproc,
    torchrun's) gets one of the ``n_rows`` ``rows`` at least: training and prediction refuse in
    the same words."""
    if n_rows >= n_processes:
        return
    where = f"{source}: " if source is not None else ""
    if not n_rows:
        raise ConfigError(f"{where}no {rows}s: give some")
    raise ConfigError(f"{where}{counted(n_rows, rows)} for {n_processes} processes, each of "
                      f"which needs one at least; give --nproc {n_rows} or fewer")  # fmt: skip


def batches_per_rank(n_rows: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch, the same on every rank, with every row used exactly once.

    Steps = ceil(n_rows / (world_size * batch_size)). Each rank gets a contiguous, balanced share
    of the rows (sizes differ by at most one) and cuts it into full batches plus a last, partial
    one. If the last step had fewer than two rows a rank, some rank's last batch would hold one
    row or none (batch norm cannot train on one), so that step is dropped and its rows join the
    previous batches: at most two rows each, B + 2.
    """
    check_rows_per_process(n_rows, world_size)
    steps = -(-n_rows // (world_size * batch_size))
    if steps > 1 and n_rows - (steps - 1) * world_size * batch_size < 2 * world_size:
        steps -= 1
    return steps


class ShardStream(IterableDataset):
    """Batches of (images uint8 (B, 28, 28), labels int64 (B,) or None) streamed from CSV shards.

    Every row is yielded exactly once per epoch across all DDP ranks and DataLoader workers. The
    epoch's row sequence is the shards in an order drawn from (seed, epoch) (in manifest order
    without ``shuffle``); rank r reads a contiguous share of it, and splits its batches (see
    ``batches_per_rank``) into contiguous runs, one per worker, so each reader touches only its
    own files and lines. Each reader shuffles through a buffer of ``buffer_rows``: it holds at
    most buffer_rows + one piece (~2,000 rows) + one batch of rows, whatever the data size.

    Use it in ``DataLoader(stream, batch_size=None, num_workers=W)`` without
    ``persistent_workers``, so ``set_epoch`` reaches the workers: they copy the stream each epoch.
    """

    def __init__(
        self,
        source: Manifest | str | Path,
        batch_size: int,
        *,
        shuffle: bool = True,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.manifest = source if isinstance(source, Manifest) else resolve_data_source(source)
        if rank is None or world_size is None:
            is_ddp = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if is_ddp else (0, 1)
        if batch_size < 1 or buffer_rows < 0 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need batch_size >= 1, buffer_rows >= 0 and 0 <= rank < world_size, got "
                f"{batch_size}, {buffer_rows}, {rank} and {world_size}"
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.buffer_rows = buffer_rows
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.n_batches = batches_per_rank(self.manifest.n_rows, batch_size, world_size)

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's shard order and shuffle (call before iterating, on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields per epoch: ``batches_per_rank``, equal on every rank."""
        return self.n_batches

    @property
    def first_row(self) -> int:
        """The row of the epoch's sequence this rank's share starts at."""
        return self.rank * self.manifest.n_rows // self.world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        rank_start = self.first_row
        rank_rows = (self.rank + 1) * self.manifest.n_rows // self.world_size - rank_start
        sizes = [self.batch_size] * (self.n_batches - 1)
        sizes.append(rank_rows - sum(sizes))
        first = worker * self.n_batches // n_workers  # this worker's run of the rank's batches
        last = (worker + 1) * self.n_batches // n_workers
        if first == last:
            return
        start = rank_start + sum(sizes[:first])
        pieces = self._read(start, start + sum(sizes[first:last]))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
            batches = shuffled_batches(pieces, sizes[first:last], self.buffer_rows, rng)
        else:
            batches = shuffled_batches(pieces, sizes[first:last], 0, None)
        for images, labels in batches:
            yield torch.from_numpy(images), None if labels is None else torch.from_numpy(labels)

    def shard_order(self) -> list[int]:
        """Indices of the manifest's shards in this epoch's order."""
        if not self.shuffle:
            return list(range(len(self.manifest.shards)))
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(len(self.manifest.shards)).tolist()

    def _read(self, start: int, stop: int) -> Iterator[DigitSet]:
        """Rows ``start`` to ``stop`` of this epoch's row sequence, in pieces."""
        return read_rows(self.manifest, start, stop, self.shard_order())


def read_in_pieces(source: str | Path) -> tuple[int, bool, Iterator[DigitSet]]:
    """A CSV's (shard directory's, glob's) number of rows, whether they are labelled, and the
    rows in pieces of up to STREAM_ROWS, in order: read whole where ``is_read_whole``, else
    streamed, its rows checked piece by piece as they come."""
    if is_read_whole(source):
        data = read_data_source(source)
        pieces = (data.take(rows) for rows in piece_slices(len(data)))
        return len(data), data.has_labels, pieces
    stream = ShardStream(source, STREAM_ROWS, shuffle=False, rank=0, world_size=1)
    pieces = (DigitSet(images.numpy(), None if labels is None else labels.numpy())
              for images, labels in stream)  # fmt: skip
    return stream.manifest.n_rows, stream.manifest.has_labels, pieces


def piece_slices(n_rows: int) -> Iterator[slice]:
    """The slices that cut ``n_rows`` rows held in memory into pieces of up to STREAM_ROWS, in
    order: rows read whole go on a piece at a time, as streamed ones come."""
    for start in range(0, n_rows, STREAM_ROWS):
        yield slice(start, start + STREAM_ROWS)


def read_all_rows(source: str | Path) -> DigitSet:
    """All rows of a CSV (shard directory, glob) in memory, one past STREAM_FILE_BYTES parsed a
    piece at a time (``read_in_pieces``): `digits eda` of a 153 MB train CSV peaks at 1.12 GB
    read whole, 0.67 GB so (its images take 66 MB). A file read whole is handed on as read:
    its pieces joined would copy every image once more (22 MB for Kaggle's test.csv)."""
    if is_read_whole(source):
        return read_data_source(source)
    return concat_rows(list(read_in_pieces(source)[2]))


def shuffled_batches(
    pieces: Iterable[DigitSet],
    sizes: list[int],
    buffer_rows: int,
    rng: np.random.Generator | None,
) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.int64] | None]]:
    """Batches of the given ``sizes`` from ``pieces``, shuffled through a bounded buffer.

    A batch leaves once ``buffer_rows`` rows besides it are waiting, drawn at random among all
    waiting rows; at the end the rest leaves. ``rng=None`` keeps the order. ``sizes`` must sum to
    the number of rows in ``pieces``.
    """
    pool: DigitSet | None = None
    batch = 0
    for piece in itertools.chain(pieces, [None]):
        is_last = piece is None
        if piece is not None:
            pool = piece if pool is None else concat_rows([pool, piece])
        assert batch < len(sizes) or pool is None or len(pool) == 0, "more rows than sizes"
        if pool is None or (not is_last and len(pool) < buffer_rows + sizes[batch]):
            continue
        if rng is not None:
            pool = pool.take(rng.permutation(len(pool)))
        used = 0
        while batch < len(sizes) and (is_last or len(pool) - used >= buffer_rows + sizes[batch]):
            out = pool.take(slice(used, used + sizes[batch]))
            used += sizes[batch]
            batch += 1
            yield out.images.copy(), None if out.labels is None else out.labels.copy()
        pool = pool.take(slice(used, None))
    assert batch == len(sizes) and (pool is None or len(pool) == 0), "sizes do not match the rows"
