"""The jobs behind `digits train` and `digits run`: read, split, train, evaluate, submit, score.

digits run                                     # replica of Kaggle's files from embedded MNIST
digits run --train train.csv --test test.csv   # Kaggle's real files (no score: no solution)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from digit_recognizer.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    check_out_dir,
    read_history,
    save_run_config,
)
from digit_recognizer.config import read_toml
from digit_recognizer.data.images import faint_to_full_ink
from digit_recognizer.data.kaggle_csv import DigitSet, count_classes
from digit_recognizer.data.mnist import MNIST_TRAIN_ROWS, load_mnist
from digit_recognizer.data.replica import cached_replica
from digit_recognizer.data.shards import (
    Manifest,
    choose_loading,
    class_counts_of,
    count_rows,
    estimate_memory_bytes,
    is_read_once,
    read_data_source,
    read_shards,
    refuse_split,
    require_labels,
    resolve_data_source,
)
from digit_recognizer.data.splits import (
    check_seed,
    missing_digits,
    stratified_split,
    warn_shared_images,
)
from digit_recognizer.data.stream import check_rows_per_process
from digit_recognizer.distributed import Distributed, check_nproc, run_torchrun
from digit_recognizer.errors import ConfigError, DataError, ModelFileError, counted
from digit_recognizer.evaluate import (
    REPLAYED_KEY,
    Metrics,
    compute_metrics,
    plot_confusion_matrix,
    plot_learning_curves,
    read_metrics,
    score_submission,
    write_metrics,
)
from digit_recognizer.fileio import check_not_in_use, locked_dir, source_record
from digit_recognizer.logs import hushed, log_handler
from digit_recognizer.members import member_gpu, run_side_by_side, visible_gpus
from digit_recognizer.models.runtime import memory_bytes, resolve_device
from digit_recognizer.models.storage import (
    ENSEMBLE_FILE,
    expand_ensembles,
    load_net,
    member_run_dir,
    write_ensemble,
)
from digit_recognizer.predict import (
    PredictConfig,
    Predictor,
    check_submission_path,
    conformed_for_training,
    off_layout_share,
    predict_source,
    warn_conformed,
)
from digit_recognizer.report import SourceRows, write_run_report
from digit_recognizer.train import TrainConfig, TrainResult, check_global_batch, train

log = logging.getLogger(__name__)


@dataclass
class TrainJobResult:
    run_dir: Path
    train: TrainResult
    valid_metrics: Metrics | None


@dataclass
class RunSummary:
    run_dir: Path
    submission: Path
    n_members: int  # 1, or the ensemble's size
    parallel: int  # members trained at once
    train_seconds: float  # summed over members
    wall_seconds: float  # members' training, validation and reports, first start to last end
    epochs_run: tuple[float, ...]  # each member's: patience or a time budget can stop one early
    valid_accuracy: float | None  # mean over members, each on its own validation split
    test_accuracy: float | None  # score against the replica's solution.csv; None on Kaggle's files


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


class TrainingData(NamedTuple):
    train: DigitSet | Manifest
    valid: DigitSet
    valid_source: str  # where the validation images come from, as the report names them
    valid_rows: SourceRows  # the file rows they are, which the report's captions give


def training_data(config: TrainConfig, source: Path) -> TrainingData:
    """The train and validation sets: in memory when they fit ``max_memory_gb``, else streamed.

    Streamed shards cannot be split by rows cheaply, so the last shard is the validation set;
    so it is, in memory too, for ``digits data expand``'s output, whose last shard holds the
    images it left out of its copies. With ``valid_size`` 0 nothing validates: every shard
    trains, and the validation set is empty. Fine-tuning (``init_from``), the training rows
    take ``replay`` times as many of MNIST's (``with_replay``); the validation rows are the
    source's own, so that its accuracy speaks of the writers fine-tuned for.
    """
    data = _source_data(config, source)
    if not config.replays_mnist():
        return data
    if isinstance(data.train, Manifest):
        raise ConfigError(f"{source}: streamed from its files, and replay mixes MNIST's images "
                          "into training rows held in memory: a larger --max-memory holds them, "
                          "or --replay 0 fine-tunes on them alone")  # fmt: skip
    return data._replace(train=with_replay(data.train, config))


def with_replay(train_set: DigitSet, config: TrainConfig) -> DigitSet:
    """``train_set`` and ``config.replay`` times as many of MNIST's 60,000 training images
    (at most all of them), drawn with the run's seed: fine-tuned on other writers' digits
    alone, a net forgets MNIST's (docs/beyond-mnist.md, *Fine-tuning*)."""
    mnist = load_mnist()
    n_replayed = min(MNIST_TRAIN_ROWS, round(config.replay * len(train_set)))
    rows = np.random.default_rng(config.seed).choice(MNIST_TRAIN_ROWS, n_replayed, replace=False)
    log.info(
        "fine-tuning on %s and %s of MNIST's training images (replay %g)",
        counted(len(train_set), "training row"),
        f"{n_replayed:,}",
        config.replay,
    )
    return DigitSet(np.concatenate([train_set.images, mnist.images[rows]]),
                    np.concatenate([train_set.labels, mnist.labels[rows]]))  # fmt: skip


def _source_data(config: TrainConfig, source: Path) -> TrainingData:
    """``training_data``'s sets from ``source`` alone."""
    manifest = resolve_data_source(source)
    require_labels(manifest.has_labels, source)
    is_expansion, held_out = manifest.is_expansion, manifest.held_out_rows
    _check_expansion(manifest, config, source)
    in_memory = _reads_in_memory(manifest, config, source)
    if not config.valid_size and not in_memory:
        return TrainingData(manifest, DigitSet(np.zeros((0, 28, 28), np.uint8),
                                               np.zeros(0, np.int64)), "",
                            SourceRows(source, np.zeros(0, np.int64)))  # fmt: skip
    if in_memory and not (held_out and config.valid_size):
        data = ink_as_predicted(read_shards(manifest), source, is_expansion, config.init_from)
        train_rows, valid_rows = stratified_split(data.labels, config.valid_size, config.seed)
        train_set, valid_set = data.take(train_rows), data.take(valid_rows)
        warn_shared_images(train_set, valid_set, f"{source}'s validation split")
        split = f"validation split (valid_size {config.valid_size}, seed {config.seed})"
        return TrainingData(train_set, valid_set, split, SourceRows(source, valid_rows))
    last = manifest.shards[-1]
    if not held_out and last.n_rows > 2 * config.valid_size * manifest.n_rows:
        log.warning("%s: validates on its last shard, %s, %.0f %% of the rows where --valid-size "
                    "asks %g %%: those rows do not train; more shards (`digits data shard "
                    "--parts`) make it smaller", source, last.path,
                    100 * last.n_rows / manifest.n_rows, 100 * config.valid_size)  # fmt: skip
    else:
        log.info("validation: the last shard, %s", last.path)
    train_shards = replace(manifest, shards=manifest.shards[:-1])
    # Read before the validation shard, so that the warnings on its rows come in their order.
    train_set = (
        ink_as_predicted(read_shards(train_shards), source, is_expansion, config.init_from)
        if in_memory
        else train_shards
    )
    valid_shard = replace(manifest, shards=manifest.shards[-1:])
    # Conformed as the training rows are: streamed rows are not (a warning says so).
    valid_set = ink_as_predicted(read_shards(valid_shard), source, is_expansion,
                                 config.init_from, conform=in_memory)  # fmt: skip
    _check_digits_validated(valid_set, class_counts_of(train_set), last.path, source)
    return TrainingData(train_set, valid_set, f"last shard, {last.path}",
                        SourceRows(last.path, np.arange(len(valid_set))))  # fmt: skip


def _check_digits_validated(
    valid_set: DigitSet, trained_counts: list[int] | None, shard: Path, source: Path
) -> None:
    """Warn if the validation shard lacks digits the training shards hold (``trained_counts``;
    None: not known, every digit it lacks): rows sorted by label before sharding leave one or
    two digits in the last shard, whose accuracy then speaks of those alone (and those rows do
    not train). A digit the source has no row of is training's warning, not a matter of order."""
    missing = [
        digit
        for digit in missing_digits(count_classes(valid_set.labels))
        if trained_counts is None or trained_counts[digit]
    ]
    if missing:
        log.warning("%s: its validation shard, %s, holds no %s: rows in label order? Its "
                    "accuracy says nothing of those digits, and its rows do not train; shuffle "
                    "the rows before `digits data shard`", source, shard,
                    ", ".join(map(str, missing)))  # fmt: skip


def _check_expansion(manifest: Manifest, config: TrainConfig, source: Path) -> None:
    if manifest.is_expansion and config.augment > 0:
        log.warning("%s: its rows are augmented copies (`digits data expand`), which training "
                    "augments again, compounding the ranges; --augment 0 trains on them as they "
                    "are", source)  # fmt: skip
    if not manifest.held_out_rows and config.valid_size:
        refuse_split(manifest, source, "train on it with --valid-size 0, or expand again with "
                     "--valid-size above 0 for a held-out shard to validate on")  # fmt: skip


def _reads_in_memory(manifest: Manifest, config: TrainConfig, source: Path) -> bool:
    """Within ``max_memory_gb``; or one file to split for validation, within half the memory
    free (streaming validates on a last shard, which one file has not)."""
    # Bytes as a float: --max-memory 1e300 is inf bytes, which no int holds.
    if choose_loading(manifest, config.max_memory_gb * 1e9) == "memory":
        return True
    if not config.valid_size or len(manifest.shards) > 1:
        return False
    # Over the budget but within half the memory free, one file is read whole: one that fitted
    # before the estimate counted pyarrow's columns still trains.
    needed, free = estimate_memory_bytes(manifest), memory_bytes(free=True)
    if free is None or needed > free / 2:
        raise DataError(
            f"{source}: needs ~{needed / 1e9:.1f} GB in memory, over --max-memory and half "
            "of the memory free, and one file cannot be streamed with a validation split "
            "(the last shard validates): split it with `digits data shard`, or train with "
            "--valid-size 0"
        )
    log.warning("%s: one file, and streaming validates on a last shard: read in memory, "
                "over the --max-memory budget; `digits data shard` splits it to stream it",
                source)  # fmt: skip
    return True


def ink_as_predicted(
    data: DigitSet,
    source: Path,
    is_expansion: bool,
    init_from: str | None = None,
    conform: bool = True,
) -> DigitSet:
    """Training rows as `digits predict` reads them: rows whose pixels all stay under 32 (0/1,
    UCI's 0-16) scaled to 255 (faint_to_full_ink), not trained on as near-black digits; and a
    file whose rows are mostly not in MNIST's layout (another collection's: dark on light,
    filling the frame) conformed as predict conforms it (``conformed_for_training``; the net of
    ``init_from``, the run fine-tuned from, judges orientation and stretch too), so that the net
    learns the digits it will be shown. Streamed rows (``conform`` False) are trained on as they
    are, and a warning says that predict would conform such test rows; so are ``digits data
    expand``'s augmented copies (``is_expansion``). (Streamed rows are scaled batch by batch in
    train().)"""
    images, n_faint = faint_to_full_ink(data.images)
    warn_conformed(source, len(images), n_faint)
    if conform and not is_expansion:
        images = conformed_for_training(images, source, init_from)
    elif not is_expansion and (share := off_layout_share(images)) > 0.5:
        log.warning("%s: %.0f %% of its digits are not laid out as MNIST's (dark on light, "
                    "filling the frame, off-centre), and streamed rows are trained on as they "
                    "are; `digits predict` and `evaluate` redo such rows as MNIST's before a net "
                    "reads them, so predict this net's test rows with --as-is (or conform the "
                    "training rows first: digit_recognizer.data.images.conform_to_mnist)",
                    source, 100 * share)  # fmt: skip
    return data if images is data.images else DigitSet(images, data.labels)


def train_job(
    config: TrainConfig,
    train_csv: Path | str,
    run_dir: Path | str,
    progress: Progress | None = None,
    warns_of_rows: bool = True,
) -> TrainJobResult:
    """Train on labelled data (CSV, shard directory or glob) and write the whole run directory,
    plots and metrics included. A ``run_dir`` holding a checkpoint is continued with
    ``config.resume`` and refused without it: a run is never trained over. ``warns_of_rows``
    is False for an ensemble's members after the first: what the first said of the rows
    (digits lacking, faint or re-laid-out rows, images shared by the two parts) is not said
    again."""
    train_csv, run_dir = Path(train_csv), Path(run_dir)
    check_out_dir(run_dir, config.resume, ensemble=False)
    with contextlib.nullcontext() if warns_of_rows else hushed():
        train_set, valid_set, valid_source, valid_rows = training_data(config, train_csv)
    is_main_process = Distributed.from_env().is_main_process
    valid_metrics = None
    # One writer per run directory; under torchrun, rank 0 is that writer.
    with locked_dir(run_dir) if is_main_process else contextlib.nullcontext():
        try:
            rows_name = f"{train_csv}: its training rows" if warns_of_rows else None
            result = train(config, train_set, valid_set, run_dir, progress, rows_name=rows_name)
            if is_main_process:
                valid_metrics = write_training_outputs(run_dir, result, valid_set, valid_source,
                                                       valid_rows, train_csv,
                                                       config.replays_mnist())  # fmt: skip
        except KeyboardInterrupt:
            if is_main_process:
                since = ("from its last finished epoch" if (run_dir / CHECKPOINT_FILE).exists()
                         else "from the start (no epoch had finished)")  # fmt: skip
                log.warning("interrupted: the same command with --resume continues %s %s",
                            run_dir, since)  # fmt: skip
            raise
    # Not for a finished run resumed: nothing trained now, and train() said it had its budget.
    if is_main_process and result.trained and result.cut_by_budget and result.epochs_run < 1:
        # Said, as a busy machine can cut a preset's 60 s to 0.3 epochs and 0.976 without a word.
        log.warning("%s: its %.0f s of budget trained under one epoch, far too little for the "
                    "accuracy this recipe reaches on a machine to itself: other jobs on the "
                    "cores, or a slow machine; --resume with a larger --time-budget trains on",
                    run_dir, config.time_budget_s)  # fmt: skip
    return TrainJobResult(run_dir, result, valid_metrics)


def write_training_outputs(
    run_dir: Path,
    result: TrainResult,
    valid_set: DigitSet,
    valid_source: str,
    valid_rows: SourceRows,
    train_csv: Path,
    replayed_mnist: bool = False,
) -> Metrics | None:
    """Plots, validation metrics and report of a finished run; the validation metrics.
    ``replayed_mnist``: its training rows held MNIST's training images (fine-tuning's replay),
    which metrics.json records for evaluate to warn of."""
    plot_learning_curves(result.history, run_dir / "learning_curves.png",
                         result.config.get("label_smoothing", 0.0))  # fmt: skip
    valid_metrics = None
    if len(valid_set):
        predictor = Predictor.from_models([result.model])
        valid_metrics = compute_metrics(valid_set.labels, predictor.predict_proba(valid_set.images))
        plot_confusion_matrix(valid_metrics.confusion, run_dir / "confusion_matrix.png")
    # Written anew, not merged, unless nothing trained: an earlier test score (digits run) was
    # of other weights.
    write_metrics(run_dir, source_record("train", train_csv) | {
        "train_seconds": result.train_seconds,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "torch_threads": torch.get_num_threads(),  # a CPU run repeats on as many threads
        "validation": asdict(valid_metrics) if valid_metrics else None,
        REPLAYED_KEY: replayed_mnist,
    }, merge=not result.trained)  # fmt: skip
    if len(valid_set):
        # ~4 s for 2,100 images on 2 busy cores
        write_run_report(run_dir, data=valid_set, data_source=valid_source, data_rows=valid_rows)
    return valid_metrics


def train_distributed(
    nproc: int, config: TrainConfig, train_csv: Path, run_dir: Path
) -> TrainJobResult:
    """Run ``digits train`` in ``nproc`` processes on this machine through torchrun (DDP), and
    read back what they trained, as ``train_job`` returns it.

    What can be checked before the launch is, rather than in every process amid torchrun's
    output. The resolved config goes to a file every process reads, so the processes cannot
    disagree on a setting; rank 0 writes the run's config.toml as one process does, once the
    checkpoint is known to fit. For several machines, call torchrun directly (README, 'Data
    bigger than memory, many processes').
    """
    check_out_dir(run_dir, config.resume, ensemble=False)
    check_not_in_use(run_dir)  # else rank 0 refuses, and the others wait on it for a while
    check_global_batch(config.batch_size, nproc)
    manifest = resolve_data_source(train_csv)
    require_labels(manifest.has_labels, train_csv)
    # The rows before the validation split: each process checks its share of those left.
    check_rows_per_process(manifest.n_rows, nproc, source=train_csv)
    before = checkpoint_stamp(run_dir)
    run_torchrun(
        nproc,
        "digit_recognizer",
        ["train", "--train", str(train_csv), "--out", str(run_dir)],
        config,
    )
    # Each finished epoch replaces the checkpoint: one left as it was, a finished run resumed,
    # trained nothing, and its test score (an ensemble's too) still holds.
    return trained_job(run_dir, trained=checkpoint_stamp(run_dir) != before)


def checkpoint_stamp(run_dir: Path) -> tuple[int, int] | None:
    """The checkpoint file's identity (inode, modification time), None where there is none."""
    try:
        stat = (run_dir / CHECKPOINT_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def trained_job(run_dir: Path, trained: bool) -> TrainJobResult:
    """A run that other processes trained (torchrun's), read back from the files they wrote;
    ``trained``: False for a finished run resumed, which trained nothing."""
    metrics = read_metrics(run_dir)
    validation = metrics.get("validation")
    result = TrainResult(
        run_dir=run_dir,
        model=load_net(run_dir)[0],
        history=read_history(run_dir / HISTORY_FILE),
        valid_accuracy=validation["accuracy"] if validation else None,
        train_seconds=metrics["train_seconds"],
        epochs_run=metrics["epochs_run"],
        stopped_early=metrics["stopped_early"],
        config=read_toml(run_dir / CONFIG_FILE),
        trained=trained,
    )
    return TrainJobResult(run_dir, result, Metrics(**validation) if validation else None)


def train_jobs(
    configs: list[TrainConfig],
    train_csv: Path,
    run_dir: Path,
    progress: Progress | None = None,
    parallel: int | None = None,
    nproc: int = 1,
) -> list[TrainJobResult]:
    """One config trains one run in ``run_dir``, in ``nproc`` processes (DDP) if more than one.
    Several train an ensemble: one run per config, ``run_dir``/member-1 and on, each resumable
    on its own, and ``run_dir`` marked an ensemble.

    ``parallel`` members train at once, each in a process of its own (``train_side_by_side``);
    unset, ``default_jobs`` decides (``members_at_once``).
    """
    parallel = members_at_once(configs, parallel)
    check_nproc(nproc)
    if nproc > 1 and len(configs) > 1:
        raise ConfigError("--nproc trains one model in several processes, not an ensemble "
                          "(--preset best): --jobs trains its members side by side")  # fmt: skip
    if len(configs) == 1:
        if nproc > 1:
            job = train_distributed(nproc, configs[0], train_csv, run_dir)
        else:
            job = train_job(configs[0], train_csv, run_dir, progress)
        if job.train.trained and Distributed.from_env().is_main_process:  # torchrun's rank 0
            forget_ensemble_test_score(run_dir)
        return [job]
    check_out_dir(run_dir, configs[0].resume, ensemble=True)
    # One command per ensemble, else a second one, refused by a member's lock only once it
    # trains, has already rewritten the other members' config.toml for the first one's --resume.
    with locked_dir(run_dir):
        members = []
        for number, config in enumerate(configs, start=1):
            member_dir = member_run_dir(run_dir, number)
            if config.resume and number > 1 and not (member_dir / CHECKPOINT_FILE).exists():
                # Expected when the interruption came before it: no "nothing to resume" warning,
                # which member 1 still gives for an --out that holds no ensemble at all.
                log.info("member %d had not started; training it", number)
                config = replace(config, resume=False)
            check_out_dir(member_dir, config.resume, ensemble=False)  # before any config is written
            members.append((config, member_dir))
        for config, member_dir in members:
            if not config.resume or not (member_dir / CONFIG_FILE).exists():
                # Recorded before any member trains: --resume rebuilds a member that had not started
                # from this (resumed_members), not from whatever flags the resuming command repeats.
                save_run_config(config, member_dir)
        started = time.perf_counter()
        try:
            if parallel > 1:
                jobs = train_side_by_side(members, train_csv, parallel)
            else:
                jobs = []
                for number, (config, member_dir) in enumerate(members, start=1):
                    log.info(
                        "ensemble member %d of %d (seed %d)", number, len(members), config.seed
                    )
                    jobs.append(train_job(config, train_csv, member_dir, progress,
                                          warns_of_rows=number == 1))  # fmt: skip
        except KeyboardInterrupt:
            log.warning("interrupted: the same command with --resume finishes the ensemble in %s, "
                        "each member from its last finished epoch", run_dir)  # fmt: skip
            raise
        wall_seconds = time.perf_counter() - started
        write_ensemble(run_dir, [job.run_dir for job in jobs])
        # Written anew, as a single run's, unless no member trained: an earlier test score was
        # of other members' weights.
        write_metrics(run_dir, source_record("train", train_csv) | {
            "train_seconds": sum(job.train.train_seconds for job in jobs),
            "parallel": parallel,
            "wall_seconds": wall_seconds,  # members' training, validation and reports
            "members": [{"run_dir": job.run_dir.name, "valid_accuracy": job.valid_metrics.accuracy
                         if job.valid_metrics else None} for job in jobs],
        }, merge=not any(job.train.trained for job in jobs))  # fmt: skip
        return jobs


def forget_ensemble_test_score(member_dir: Path) -> None:
    """An ensemble one of whose members trained on alone (``digits train --out OUT/member-2
    --resume``) no longer claims the test score its members had (``digits run``'s)."""
    ensemble = member_dir.parent
    if not (ensemble / ENSEMBLE_FILE).is_file():
        return
    try:
        metrics = read_metrics(ensemble)
        members = {member.resolve() for member in expand_ensembles([ensemble])}
    except ModelFileError:  # predict and evaluate name the damaged file
        return
    if member_dir.resolve() in members and "test_accuracy" in metrics:
        kept = {key: value for key, value in metrics.items() if not key.startswith("test_")}
        write_metrics(ensemble, kept, merge=False)


def members_at_once(configs: list[TrainConfig], parallel: int | None) -> int:
    """How many of ``configs``' members train at once: ``parallel`` (--jobs), or
    ``default_jobs``' choice where it is None; at most as many as there are members (--jobs 8
    for 5 shares the threads out between the 5 processes there can be)."""
    parallel = default_jobs(configs) if parallel is None else parallel
    if parallel < 1:
        raise ConfigError(f"--jobs must be >= 1, got {parallel}")
    if len(configs) == 1 and parallel > 1:
        raise ConfigError("--jobs trains an ensemble's members side by side; one model trains "
                          "in one process (in several: --nproc)")  # fmt: skip
    return min(parallel, len(configs))


def default_jobs(configs: list[TrainConfig]) -> int:
    """Members to train at once when ``--jobs`` is not given: all of an ensemble's on a CUDA GPU,
    one at a time elsewhere and under torchrun.

    On an H200 best's five trained in 164 s side by side, where one after another they had taken
    ~6 minutes (another lease's machine; 2.0x on the same one); on 2 CPU cores side by side
    bought 1.2x and costs the progress bar (docs/results.md).
    """
    if len(configs) == 1 or Distributed.from_env().world_size > 1:
        return 1
    return len(configs) if resolve_device(configs[0].device).type == "cuda" else 1


def train_side_by_side(
    members: list[tuple[TrainConfig, Path]], train_csv: Path, parallel: int
) -> list[TrainJobResult]:
    """Train ensemble members ``parallel`` at a time, each in a fresh process.

    The CPU's threads are shared out between them, and a GPU is shared by all: its small-batch
    steps wait on kernel launches (~6 ms a step of ``cnn`` on an H200, whatever the batch), which
    one process issues one after another. On 2 CPU cores two 1-thread processes trained 1.13x
    the images/s of one 2-thread process, and best's five members side by side took 1/1.2 of
    the wall time; on an H200 five side by side took half the wall time of five in turn, and
    best's five trained in 164 s (docs/results.md). Many-core CPUs are untried. Members run in
    rounds of ``parallel``, so a number that divides the members' leaves no process alone at
    the end. Each member is the run it would be alone, except for the thread count (the CPU's
    sums may round differently with fewer threads).
    """
    threads = max(1, torch.get_num_threads() // parallel)
    log.info("training %d members, %d at a time, each in a process of its own with %d "
             "thread%s", len(members), parallel, threads, "s" * (threads > 1))  # fmt: skip
    on_gpu = any(resolve_device(config.device).type == "cuda" for config, _ in members)
    gpus = visible_gpus() if on_gpu else []
    level = logging.getLogger("digit_recognizer").getEffectiveLevel()
    arguments = [(config, train_csv, member_dir, threads, level, member_gpu(number, gpus))
                 for number, (config, member_dir) in enumerate(members, start=1)]  # fmt: skip
    jobs = run_side_by_side(train_member, arguments, parallel)
    # Each process ended with its member: the nets come from the files it saved.
    return [replace(job, train=replace(job.train, model=load_net(job.run_dir)[0])) for job in jobs]


def train_member(
    number: int,
    config: TrainConfig,
    train_csv: Path,
    member_dir: Path,
    threads: int,
    level: int,
    gpu: str | None = None,
) -> TrainJobResult:
    """One ensemble member in a process of its own (``train_side_by_side``), on ``gpu`` alone
    when given (a ``CUDA_VISIBLE_DEVICES`` name; this process must not have touched CUDA yet)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    handler = log_handler(Console(stderr=True), f"member {number}: %(message)s")
    logging.basicConfig(handlers=[handler])
    logging.getLogger("digit_recognizer").setLevel(level)
    job = train_job(config, train_csv, member_dir, warns_of_rows=number == 1)
    # Tensors would cross to the parent as shared memory that ends with this process: the
    # parent reads the saved model instead (train_side_by_side).
    return replace(job, train=replace(job.train, model=None))


def run_job(
    config: TrainConfig | list[TrainConfig],
    train_csv: Path | None = None,
    test_csv: Path | None = None,
    run_dir: Path | None = None,
    replica_seed: int | None = None,
    cache_dir: Path | None = None,
    predict_config: PredictConfig | None = None,
    progress: Progress | None = None,
    parallel: int | None = None,
    nproc: int = 1,
) -> RunSummary:
    """The main job: (build a replica,) train, evaluate, predict, write and score a submission.

    Kaggle's ``train_csv`` and ``test_csv``, or neither: the replica built with
    ``replica_seed`` (default 0). A list of several configs trains an ensemble, one member per
    config (``Preset.configs``), ``parallel`` of them at a time (``train_jobs``; unset,
    ``default_jobs`` decides); one config trains in ``nproc`` processes (DDP).
    """
    if (train_csv is None) != (test_csv is None):
        raise ConfigError("give both --train and --test (Kaggle's files), or neither (the "
                          "replica)")  # fmt: skip
    if train_csv is not None and replica_seed is not None:
        raise ConfigError("--replica-seed builds a replica; --train and --test are files of "
                          "your own: give one or the other")  # fmt: skip
    configs = [config] if isinstance(config, TrainConfig) else config
    parallel = members_at_once(configs, parallel)  # before a replica is built
    check_nproc(nproc)
    solution_csv = None
    if train_csv is None:
        check_seed(replica_seed or 0, "--replica-seed")
        files = cached_replica(replica_seed or 0, cache_dir)
        train_csv, test_csv, solution_csv = files.train, files.test, files.solution
    run_dir = run_dir or default_run_dir(configs[0].model)
    # Read before training, which can take an hour: a missing or malformed test file would
    # otherwise be found only once the models were trained. A piece at a time, and read again
    # to predict, rather than its images held through training. A pipe can be read once: now.
    test_set = None
    if is_read_once(test_csv):
        test_set = read_data_source(test_csv)
    else:
        count_rows(test_csv)
    submission = run_dir / "submission.csv"
    check_submission_path(submission, test_csv)  # before training: a --test glob matching it
    started = time.perf_counter()
    jobs = train_jobs(configs, train_csv, run_dir, progress, parallel, nproc)
    wall_seconds = time.perf_counter() - started
    try:
        predict_source([run_dir], test_csv, submission, predict_config, test_set)
    except KeyboardInterrupt:
        log.warning("interrupted while predicting: the same command with --resume predicts "
                    "with %s, trained already", run_dir)  # fmt: skip
        raise
    test_accuracy = score_submission(solution_csv, submission) if solution_csv else None
    # What `digits predict` reproduces it with: --tta, --as-is.
    tta = bool(predict_config and predict_config.tta)
    as_is = bool(predict_config and not predict_config.conform)
    write_metrics(run_dir, {"test_csv": str(Path(test_csv).resolve()), "test_tta": tta,
                            "test_as_is": as_is, "test_accuracy": test_accuracy})  # fmt: skip
    valid_accuracies = [job.valid_metrics.accuracy for job in jobs if job.valid_metrics]
    return RunSummary(
        run_dir=run_dir,
        submission=submission,
        n_members=len(jobs),
        parallel=parallel,
        train_seconds=sum(job.train.train_seconds for job in jobs),
        wall_seconds=wall_seconds,
        epochs_run=tuple(job.train.epochs_run for job in jobs),
        valid_accuracy=sum(valid_accuracies) / len(valid_accuracies) if valid_accuracies else None,
        test_accuracy=test_accuracy,
    )
