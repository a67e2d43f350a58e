"""The training loop, top to bottom: seed, device, data on the device, model, optimizer, then
epochs of augmented batches with validation, best/last checkpoints, early stopping and resume.

    digits train --train train.csv --out runs/cnn                # defaults: the recommended recipe
    digits train --train train.csv --out runs/cnn --resume       # continue an interrupted run

Recipe and figures: README.md; timings: benchmarks/time_to_accuracy.py.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler

from digit_recognizer.checkpoint import (
    CHECKPOINT_FILE,
    changed_settings,
    check_out_dir,
    check_resume_matches,
    load_checkpoint,
    restore_checkpoint,
    rows_fingerprint,
    save_checkpoint,
    save_run_config,
    write_history,
)
from digit_recognizer.config import NONE, check_fields, zeros_as_none
from digit_recognizer.data.augment import MAX_DISPLACEMENT_PX, Augmentation, augment_batch
from digit_recognizer.data.images import check_digits, faint_to_full_ink
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.shards import Manifest, class_counts_of
from digit_recognizer.data.splits import check_seed, warn_missing_digits
from digit_recognizer.data.stream import ShardStream, check_rows_per_process
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.distributed import (
    Distributed,
    all_reduce,
    check_ddp_timeout,
    init_distributed,
)
from digit_recognizer.errors import ConfigError, DigitsError, DivergedError, counted
from digit_recognizer.fileio import make_dir
from digit_recognizer.models.registry import build, get_spec
from digit_recognizer.models.runtime import (
    Device,
    autocast,
    autocast_dtype,
    batched_logits,
    keeps_callers_random_state,
    memory_bytes,
    resolve_device,
    synchronize,
)
from digit_recognizer.models.storage import (
    META_FILE,
    PIPELINE_COMMANDS,
    load_net,
    net_recipe,
    read_meta,
    save_net,
)

log = logging.getLogger(__name__)

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# Seeds times this, plus epoch and rank: the draws of seed n never meet those of seed n + 1 (an
# ensemble's next member) at another epoch.
SEED_STRIDE = 1_000_003
# The weights' type: torch's optimizers cannot apply an lr or weight decay past its largest value.
FLOAT32_MAX = torch.finfo(torch.float32).max


def auto_model(device: str = "auto", amp: bool = True) -> str:
    """The net for this hardware (``model = "auto"``, the default preset's): ``cnn`` where it
    trains on a GPU or in native bf16, ``cnn-tiny`` on a CPU with fp32 only, where ``cnn`` is ~5x
    slower and a quarter of its FLOPs scores higher in 5 minutes (docs/results.md)."""
    resolved = resolve_device(device)
    if resolved.type != "cpu" or autocast_dtype(resolved, amp) is not None:
        return "cnn"
    return "cnn-tiny"


@dataclass
class TrainConfig:
    """One training run. Defaults are the recipe for a CPU with native bf16 (or a GPU);
    `digits run` and `digits train` apply a preset on top: by default a 5-minute budget, batch
    64, the net for the hardware and an EMA of the weights (README, 'Results')."""

    model: str = "cnn"  # registry name (digits models lists them), or "auto": see auto_model
    widths: tuple[int, ...] | None = None  # the net's layer widths; None = the model's own
    dropout: float | None = None  # None = the model's own
    epochs: int = 15  # as they are (batch 128, no EMA): 0.9962 in 170 s on 2 bf16 CPU cores
    # Stop after this many seconds of training steps (validation and checkpoints not counted);
    # one-cycle anneals to it, the other schedules are cut off. None or 0: no budget. A budget
    # makes the lr depend on the machine's speed wherever its clock runs ahead of the step
    # count (at the start, the first steps' set-up time puts it ahead), so only a run without
    # one repeats bit for bit.
    time_budget_s: float | None = None
    batch_size: int = 128  # small batches: more steps per second of CPU, better generalisation
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # Nesterov SGD: best accuracy per epoch
    # Peak lr; None = the optimizer's (peak_lr): 0.05 for SGD (0.1 ties it on 42k rows but
    # diverges on 3k), 1e-3 for Adam.
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on weights only, not on batch-norm and bias parameters
    schedule: Literal["onecycle", "plateau", "exponential", "constant"] = "onecycle"
    warmup: float = 0.15  # onecycle: fraction of training spent ramping the lr up
    lr_decay: float = 0.8  # exponential: lr factor per epoch
    plateau_factor: float = 0.5  # plateau: lr factor when validation accuracy (then loss) stalls
    plateau_patience: int = 1  # plateau: epochs without improvement before reducing
    label_smoothing: float = 0.1  # softer targets: best made 74 errors, 81 without (one replica)
    # Exponential moving average of the weights per step (e.g. 0.999, reached after a ramp: see
    # warmed_up_ema); when set, validation, model selection and the saved model use the average
    # instead of the last weights.
    ema_decay: float | None = None  # None or 0: no average
    augment: float = 1.0  # strength of the random affine + contrast (0 = off); see Augmentation
    elastic: float = 0.0  # elastic distortion, pixels of displacement (std); scaled by augment
    stroke: float = 1.0  # stroke-width change, fraction of a 3x3 dilation/erosion; scaled too
    styles: float = 0.3  # share of 1s, 7s and 9s written as much of Europe does; scaled too
    valid_size: float = 0.05  # stratified validation fraction for model selection (0 = none)
    # Early stopping: epochs without a better validation accuracy; None or 0: no early stopping.
    patience: int | None = None
    target_accuracy: float | None = None  # stop once validation accuracy reaches this
    seed: int = 0
    device: Device = "auto"
    amp: bool = True  # bf16 autocast where the hardware supports it natively
    channels_last: bool = True  # 1.3x faster convolutions on CPU (oneDNN) and tensor cores
    compile: bool = False  # torch.compile the training model: for GPUs; minutes to compile on CPU
    resume: bool = False  # continue from the run directory's last checkpoint
    ddp_timeout_s: float = 300  # torchrun jobs: a collective waiting longer than this fails
    max_memory_gb: float = 2.0  # data needing more than this streams from its files; 0: all
    # Fine-tuning: a run directory (one net's) whose weights training starts from, to read other
    # writers' digits; the net trained is that run's (its model and widths, whatever model says).
    init_from: str | None = None
    # With init_from: MNIST training images mixed in, this many per training row, so that the
    # net keeps reading MNIST's writers (without them it forgets: docs/beyond-mnist.md).
    replay: float = 3.0

    def __post_init__(self) -> None:
        check_fields(self)  # types and choices, for configs built in Python
        zeros_as_none(self, ("patience", "ema_decay"))
        if self.init_from == NONE:  # as config.toml records no run (a run "none" is ./none)
            self.init_from = None
        if self.init_from is not None:  # before "auto": the run's net is the one trained
            self._take_net_of(Path(self.init_from))
        if self.model == "auto":  # resolved here, so config.toml records the net trained
            self.model = auto_model(self.device, self.amp)
        get_spec(self.model, kind="net")  # unknown names fail here, naming the nets
        for key, value in asdict(self).items():
            # inf passes the range checks below: max_memory_gb = inf would end in an
            # OverflowError's traceback, lr = inf in a diverged run.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
        check_seed(self.seed)  # numpy's and sklearn's range, as every seed's
        check_ddp_timeout(self.ddp_timeout_s)  # as PredictConfig's
        # (key, holds, rule): the message says the value given, as the seed's and --lr's do.
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.peak_lr() > 0, "must be > 0"),
            ("valid_size", 0 <= self.valid_size < 1, "must be in [0, 1)"),
            ("augment", self.augment >= 0, "must be >= 0"),
            # Augmentation's bound on the distortion it draws (elastic_px; why, there), checked
            # on the flag too so that its message names the flag.
            (
                "elastic",
                0 <= self.elastic <= MAX_DISPLACEMENT_PX,
                f"must be in [0, {MAX_DISPLACEMENT_PX}] (pixels: the image's size)",
            ),
            ("stroke", 0 <= self.stroke <= 1, "must be in [0, 1]"),
            ("styles", 0 <= self.styles <= 1, "must be in [0, 1]"),
            (
                "time_budget_s",
                self.time_budget_s is None or self.time_budget_s >= 0,
                "must be >= 0 (0: no budget)",
            ),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("warmup", 0 <= self.warmup < 1, "must be in [0, 1)"),
            (
                "ema_decay",
                self.ema_decay is None or 0 < self.ema_decay < 1,
                "must be in [0, 1) (0: no average)",
            ),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            # Past float32's largest, the optimizer's first step would end in torch's traceback
            # (lr 1e39); below it, a run that diverges stops as diverged, saying so.
            (
                "lr",
                self.peak_lr() <= FLOAT32_MAX,
                f"must be at most {FLOAT32_MAX:.2g} (float32's largest)",
            ),
            (
                "weight_decay",
                self.weight_decay <= FLOAT32_MAX,
                f"must be at most {FLOAT32_MAX:.2g} (float32's largest)",
            ),
            # A decay: above 1 the lr grows every epoch without bound (1e300 would end in a
            # traceback, SGD's step overflowing float32).
            ("lr_decay", 0 < self.lr_decay <= 1, "must be in (0, 1]"),
            ("plateau_factor", 0 < self.plateau_factor < 1, "must be in (0, 1)"),
            ("plateau_patience", self.plateau_patience >= 1, "must be >= 1"),
            (
                "patience",
                self.patience is None or self.patience >= 1,
                "must be >= 0 (0: no early stopping)",
            ),
            (
                "target_accuracy",
                self.target_accuracy is None or 0 < self.target_accuracy <= 1,
                "must be in (0, 1], or none (no target)",
            ),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "must be in [0, 1)"),
            (
                "widths",
                self.widths is None or all(width >= 1 for width in self.widths),
                "must be >= 1",
            ),
            ("max_memory_gb", self.max_memory_gb >= 0, "must be >= 0 (0: always stream)"),
            ("replay", self.replay >= 0, "must be >= 0 (0: the training rows alone)"),
        ]
        for key, holds, rule in checks:
            if not holds:
                raise ConfigError(f"{key} {rule}, got {getattr(self, key)}")
        # The same bound on elastic once augment scales it (Augmentation's elastic_px), checked
        # here so that the message names the settings given, not elastic_px alone.
        scaled_elastic = self.elastic * self.augment
        if scaled_elastic > MAX_DISPLACEMENT_PX:
            raise ConfigError(f"elastic {self.elastic:g} scaled by 'augment' {self.augment:g} is "
                              f"{scaled_elastic:g} px, past {MAX_DISPLACEMENT_PX} (pixels: the "
                              "image's size); lower either")  # fmt: skip
        self.augmentation()  # its ranges' own limits: stroke at most 1, augment under ~3.3
        if get_spec(self.model).kind != "net":
            raise ConfigError(f"model '{self.model}' is not a net: `digits compare` scores it, and "
                              "in Python build_estimator, fit and save_estimator make a run "
                              f"directory of it that {PIPELINE_COMMANDS} take")  # fmt: skip
        settings = inspect.signature(get_spec(self.model).builder).parameters
        for key in self.model_args():
            if key not in settings:
                raise ConfigError(f"model '{self.model}' has no '{key}' setting")
        if self.widths is not None:
            self._check_widths(settings["widths"].default)

    def replays_mnist(self) -> bool:
        """Fine-tuning mixes MNIST's training images into the training rows
        (pipeline.training_data)."""
        return self.init_from is not None and self.replay > 0

    def _take_net_of(self, run_dir: Path) -> None:
        """The model, widths and dropout of ``run_dir``'s net, as its model.json records them;
        widths or a dropout given otherwise are refused, not silently trained on."""
        name, params = net_recipe(run_dir / META_FILE, read_meta(run_dir))
        widths = params.get("widths")
        recorded = {"widths": None if widths is None else tuple(widths),
                    "dropout": params.get("dropout")}  # fmt: skip
        for key, value in recorded.items():
            given = getattr(self, key)
            if given is not None and given != value:
                own = "its model's own" if value is None else value
                raise ConfigError(f"{key} {given}: fine-tuning trains the net of {run_dir} as it "
                                  f"was built ({key}: {own}); leave {key} out")  # fmt: skip
        self.model, self.widths, self.dropout = name, recorded["widths"], recorded["dropout"]

    def _check_widths(self, own_widths: tuple[int, ...]) -> None:
        """Build the net on the meta device (no memory, milliseconds), before the data loads: a
        wrong number of widths is found at once, a width past int64 before it ends training in
        torch's C++ traceback, and weights past the machine's memory before its allocator's."""
        try:
            with torch.device("meta"):
                net = build(self.model, **self.model_args())
        except (TypeError, RuntimeError):  # torch's: a size that overflows its int64 sizes
            problem = f"too large for torch to build a '{self.model}'"
        else:
            n_weights = sum(parameter.numel() for parameter in net.parameters())
            # float32 weights and their gradients: the least any optimizer holds.
            needed, memory = 8 * n_weights, memory_bytes()
            if memory is None or needed <= memory:
                return
            problem = (f"a '{self.model}' of {n_weights:,} weights needs {needed / 1e9:,.0f} GB "
                       "to train (float32, with their gradients), more than this machine's "
                       f"{memory / 1e9:,.0f} GB")  # fmt: skip
        raise ConfigError(f"widths {list(self.widths or ())}: {problem}; give widths like its "
                          f"own, {list(own_widths)}")  # fmt: skip

    def peak_lr(self) -> float:
        """The lr set, else the optimizer's default. Left unset, not resolved into ``lr``, else a
        run's config.toml records SGD's 0.05, which its `--config` with `--optimizer adam` then
        trains Adam at."""
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def augmentation(self) -> Augmentation:
        """The ranges training draws from: ``Augmentation``'s, these settings', at ``augment``."""
        return Augmentation(elastic_px=self.elastic, stroke=self.stroke, styles=self.styles).scaled(
            self.augment
        )

    def model_args(self) -> dict[str, Any]:
        """The builder's keyword arguments this config sets (model.json records them)."""
        return model_args(asdict(self))


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    history: list[dict[str, float]]
    valid_accuracy: float | None  # of the model kept: see keep_last in train()
    train_seconds: float
    epochs_run: float  # epochs of data trained: a time budget can end one part-way (7.2)
    stopped_early: bool = False
    cut_by_budget: bool = False  # the time budget ended it before its epochs' last step
    config: dict[str, Any] = field(default_factory=dict)  # the settings its epochs trained with
    # False: a finished run resumed, nothing trained; its weights are the ones it had, and so is
    # what was scored of them (a test score in metrics.json).
    trained: bool = True
    # Rows of each digit 0-9 trained on, as model.json records them; None where not known.
    class_counts: list[int] | None = None


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    """The net builder's keyword arguments a config (as a dict: a recorded one) sets."""
    return {key: config[key] for key in ("widths", "dropout") if config.get(key) is not None}


def epochs_done(step: int, steps_per_epoch: int) -> float:
    """Epochs of data trained by ``step``: a time budget can end one part-way (7.2), or within a
    tenth of the first (0.02, not 0)."""
    return round(step / steps_per_epoch, 1) or round(step / steps_per_epoch, 3)


def get_lr(config: TrainConfig, progress: float, epoch: float, lr_scale: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the run (by steps or by time budget)."""
    peak_lr = config.peak_lr()
    if config.schedule == "onecycle":
        if progress < config.warmup:
            return peak_lr * progress / config.warmup
        return peak_lr * max(0.0, 1 - progress) / (1 - config.warmup)
    if config.schedule == "exponential":
        return peak_lr * config.lr_decay**epoch
    return peak_lr * lr_scale  # constant, or plateau with its running reduction


def warmed_up_ema(
    decay: float,
) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's update for an EMA whose decay ramps up: min(decay, (1 + n) / (10 + n)).

    After n updates the average spans about the n steps so far rather than 1 / (1 - decay): a
    fixed 0.999 keeps the random initial weights in the average for thousands of steps (0.19
    validation accuracy after the first epoch on replica 2024, where the last weights had 0.987),
    while the ramped one already beats the last weights there (0.990; 0.994 after epoch 2 against
    0.988). By the end of a run the decay has reached ``decay``. The ramp is TensorFlow's
    ExponentialMovingAverage(num_updates=...); n is AveragedModel's update count, which the
    checkpoint keeps, so a resumed run continues the ramp where it stopped.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (batch norm's num_batches_tracked): nothing to average
            torch._foreach_copy_(averaged, current)

    return update


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Decay only matrices and kernels: shrinking batch-norm gains and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        # momentum = 0 is plain SGD: Nesterov's needs a momentum (torch refuses it without one,
        # in a traceback).
        return torch.optim.SGD(groups, lr=config.peak_lr(), momentum=config.momentum,
                               nesterov=config.momentum > 0)  # fmt: skip
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(groups, lr=config.peak_lr())


def divergence_advice(config: TrainConfig) -> str:
    """The settings a diverged run trained with, and the one of them that plausibly broke it:
    the one furthest above its default (lr 1e12 breaks the weight decay too, 1e6 the lr)."""
    lr = config.peak_lr()
    settings = f"with {config.optimizer} at lr {lr:g}"
    if config.optimizer == "sgd":
        settings += f", momentum {config.momentum:g}"
    settings += f", weight_decay {config.weight_decay:g}"
    lr_excess = lr / DEFAULT_LR[config.optimizer]
    # SGD and AdamW take lr x weight_decay of each weight off it every step: from 1 on, the
    # decay alone throws the weights past zero. Adam's decay is a gradient, normalised away.
    decay_per_step = lr * config.weight_decay
    decay_excess = config.weight_decay / TrainConfig.weight_decay
    if config.optimizer != "adam" and decay_per_step >= 1 and decay_excess > lr_excess:
        return (f"{settings}: each step's decay, lr x weight_decay = {decay_per_step:.3g}, "
                f"throws the weights past zero; give a weight_decay below {1 / lr:.3g} "
                "(1 / lr) in the --config file")  # fmt: skip
    # Nesterov SGD moves the weights by up to 1 / (1 - momentum) times lr x gradient a step.
    momentum_gain = 1 / (1 - config.momentum)
    momentum_excess = momentum_gain * (1 - TrainConfig.momentum)
    if config.optimizer == "sgd" and momentum_excess > lr_excess:
        return (
            f"{settings}: the momentum sums up to 1 / (1 - momentum) = {momentum_gain:.3g} "
            "steps into each; give a lower momentum in the --config file, or a lower --lr"
        )
    return f"{settings}: a lower --lr than {lr:g} trains"


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a labelled set already on the model's device."""
    logits = batched_logits(model, images, images.device, amp_dtype=amp_dtype)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def row_sampler(n_rows: int, dist_env: Distributed, seed: int) -> DistributedSampler:
    """This rank's share of each epoch's shuffled rows (``set_epoch`` first, each epoch)."""
    # DistributedSampler shuffles with seed + epoch: seeds spread apart, ensemble members (seeds
    # n and n + 1) do not see one order an epoch apart.
    return DistributedSampler(range(n_rows), dist_env.world_size, dist_env.rank,
                              seed=seed * SEED_STRIDE, drop_last=True)  # fmt: skip


def as_raised_in_worker(error: DigitsError) -> DigitsError:
    """A DataLoader worker's error with the message it was raised with: torch passes it on to
    the main process with the worker's traceback in front, and a user's error is one line."""
    raised_as = f"{type(error).__module__}.{type(error).__qualname__}: "
    return type(error)(str(error).rsplit(raised_as, 1)[-1].rstrip("\n"))


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``ConfigError`` unless ``world_size`` processes can share the batch evenly."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} is the global batch and must be divisible "
                          f"by the {world_size} processes")  # fmt: skip


def check_batch_rows(model: nn.Module, config: TrainConfig, n_train: int, world_size: int) -> None:
    """``ConfigError`` where a process would train on batches of one row with a net whose batch
    norm normalises over a batch's rows (an MLP's BatchNorm1d): torch's ValueError would end
    such a run in a traceback. A process's smallest batch is its batch or its share of the
    rows, whichever is smaller (in memory and streamed alike: see batches_per_rank)."""
    local_batch = config.batch_size // world_size
    if min(local_batch, n_train // world_size) >= 2 or not any(
        isinstance(module, nn.BatchNorm1d) for module in model.modules()
    ):
        return
    if local_batch < 2:
        fix = f"give --batch-size {2 * world_size} or more"
    elif world_size > 1:
        fix = (f"a process gets one of the {n_train} training rows: give more rows or train "
               "with fewer processes (--nproc)")  # fmt: skip
    else:
        fix = "there is one training row: give more"
    raise ConfigError(f"'{config.model}' normalises over each batch's rows (batch norm) and "
                      f"cannot train on batches of one row: {fix}")  # fmt: skip


@keeps_callers_random_state
def train(
    config: TrainConfig,
    train_set: DigitSet | Manifest,
    valid_set: DigitSet | None,
    run_dir: Path,
    progress: Progress | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    rows_name: str | None = "the training rows",
) -> TrainResult:
    """Train ``config.model`` on ``train_set``, select on ``valid_set``, write ``run_dir``.

    ``run_dir`` ends up holding config.toml, history.csv, checkpoint.pt (last epoch, for resume)
    and model.safetensors + model.json (the last epoch with one-cycle and no early stopping,
    else the best by validation accuracy).
    Under torchrun every rank trains on its share of each epoch; rank 0 alone writes files.
    ``train_set`` is a ``DigitSet`` held on the device, or the ``Manifest`` of CSV shards too
    big for memory, streamed by a ``ShardStream`` (data/stream.py). ``on_epoch_end`` sees
    each epoch's history row after its checkpoint is written (``digits tune`` prunes from it:
    an exception it raises ends the run, which stays resumable). ``rows_name`` names
    ``train_set``'s rows where they lack digits (``"train.csv: its training rows"``); None
    where the caller said so already, once for its command (tune's trials, an ensemble's
    members after the first: the same rows).
    """
    # -- setup: processes, device, data on the device ---------------------------------------------
    run_dir = Path(run_dir)
    check_out_dir(run_dir, config.resume, ensemble=False)
    if isinstance(train_set, DigitSet):  # a caller's arrays: 0-1 floats and labels 1-10 refused
        train_set = check_digits(train_set.images, train_set.labels)
    if valid_set is not None and len(valid_set):
        valid_set = check_digits(valid_set.images, valid_set.labels)
    dist_env, device = init_distributed(config.device, config.ddp_timeout_s)
    check_global_batch(config.batch_size, dist_env.world_size)
    is_main = dist_env.is_main_process
    amp_dtype = autocast_dtype(device, config.amp)
    has_valid = valid_set is not None and len(valid_set) > 0
    if not has_valid and (config.patience is not None or config.target_accuracy is not None
                          or config.schedule == "plateau"):  # fmt: skip
        raise ConfigError(
            "patience, target_accuracy and the plateau schedule act on validation accuracy, and "
            "there is no validation set: give valid_size > 0 (--valid-size)"
        )
    if has_valid:
        valid_images = torch.as_tensor(valid_set.images).to(device)
        valid_labels = torch.as_tensor(valid_set.labels).to(device)
    n_train = train_set.n_rows if isinstance(train_set, Manifest) else len(train_set)
    # In memory, a process without rows would have an epoch of no batches: an IndexError.
    check_rows_per_process(n_train, dist_env.world_size, "training row")
    # Recorded in model.json, where `digits evaluate` finds the digits a run never saw. Rows
    # streamed: as their manifest lists them (`digits data shard` and `expand` count them),
    # else counted as the first epoch reads them (every row once, across the ranks).
    class_counts = class_counts_of(train_set)
    rows_name = rows_name if is_main else None  # said by one process of many
    if class_counts is not None and rows_name is not None:
        warn_missing_digits(class_counts, rows_name)
    # The same global batch and lr whatever the process count: each rank takes batch/world.
    local_batch = config.batch_size // dist_env.world_size
    if isinstance(train_set, Manifest):
        stream = ShardStream(train_set, local_batch, seed=config.seed, rank=dist_env.rank,
                             world_size=dist_env.world_size)  # fmt: skip
        loader = DataLoader(stream, batch_size=None, num_workers=1)  # parses beside training
        steps_per_epoch = len(stream)
    else:
        train_images = torch.as_tensor(train_set.images).to(device)  # uint8 until drawn
        train_labels = torch.as_tensor(train_set.labels).to(device)
        sampler = row_sampler(n_train, dist_env, config.seed)
        steps_per_epoch = max(1, len(sampler) // local_batch)  # drop the ragged last batch
        if len(sampler) < local_batch and is_main:
            log.warning("%d training rows, fewer than a batch (%d): each step trains on all of "
                        "them, one step an epoch; a smaller --batch-size takes more steps",
                        len(sampler), local_batch)  # fmt: skip

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (uint8 images, labels) batches of one epoch, on the device."""
        if isinstance(train_set, Manifest):
            stream.set_epoch(epoch)
            try:
                for images, labels in loader:
                    # Faint rows (0/1, 0-16) as in memory (pipeline.ink_as_predicted): row by
                    # row, so batch by batch.
                    images = torch.from_numpy(faint_to_full_ink(images.numpy())[0])
                    yield images.to(device), labels.to(device)
            except DigitsError as error:
                raise as_raised_in_worker(error) from None
            return
        sampler.set_epoch(epoch)
        permutation = torch.tensor(list(sampler), device=device)
        for batch in range(steps_per_epoch):
            indices = permutation[batch * local_batch : (batch + 1) * local_batch]
            yield train_images[indices], train_labels[indices]

    total_steps = config.epochs * steps_per_epoch
    rows = rows_fingerprint(train_set)
    valid_rows = rows_fingerprint(valid_set) if has_valid else None
    augmentation = config.augmentation()
    log.info(
        "training %s on %d images (%d validation), device %s, %s, %d steps/epoch of batch %d%s",
        # The threads on a CPU: with another count its sums round otherwise, other weights.
        config.model, n_train, len(valid_labels) if has_valid else 0,
        f"{device} ({counted(torch.get_num_threads(), 'thread')})"
        if device.type == "cpu" else device,
        f"autocast {amp_dtype}".replace("torch.", "") if amp_dtype else "fp32",
        steps_per_epoch, config.batch_size,
        f" ({dist_env.world_size} processes x {local_batch}, lr {config.peak_lr()} unscaled: "
        "the global batch is unchanged)" if dist_env.world_size > 1 else "",
    )  # fmt: skip

    # -- model and optimizer ---------------------------------------------------------------------
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    if config.init_from is not None:  # fine-tuning: its weights, batch norm's statistics too
        model = load_net(Path(config.init_from))[0].train().to(device)
    else:
        model = build(config.model, **config.model_args()).to(device)
    check_batch_rows(model, config, n_train, dist_env.world_size)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model = model  # unwrapped
    optimizer = build_optimizer(model, config)
    ema = None
    if config.ema_decay is not None:
        # On the device, its update count too (else a CPU tensor): NCCL broadcasts no CPU tensor.
        ema = AveragedModel(raw_model, device, multi_avg_fn=warmed_up_ema(config.ema_decay),
                            use_buffers=True)  # fmt: skip
    eval_model = raw_model if ema is None else ema.module  # what is validated and saved
    step, epoch, elapsed_s, lr_scale = 0, 0, 0.0, 1.0
    best_accuracy, best_loss, best_state, epochs_since_best = -1.0, math.inf, None, 0
    stopped_early = False
    history: list[dict[str, float]] = []

    # -- resume: everything the loop needs is in the checkpoint ----------------------------------
    checkpoint = None
    if config.resume and (run_dir / CHECKPOINT_FILE).exists():
        checkpoint = load_checkpoint(run_dir, device)
        check_resume_matches(run_dir, checkpoint, config, rows, valid_rows)
        restore_checkpoint(run_dir, checkpoint, model, optimizer, ema)
        step, epoch, elapsed_s = checkpoint["step"], checkpoint["epoch"], checkpoint["elapsed_s"]
        lr_scale, history = checkpoint["lr_scale"], checkpoint["history"]
        best_accuracy, best_loss = checkpoint["best_accuracy"], checkpoint["best_loss"]
        best_state, epochs_since_best = checkpoint["best_state"], checkpoint["epochs_since_best"]
        stopped_early = checkpoint["stopped_early"]
        class_counts = class_counts or checkpoint.get("class_counts")  # older ones: counted anew
        log.info("resumed from %s at epoch %d (step %d)", run_dir / CHECKPOINT_FILE, epoch, step)
        if is_main and (changed := changed_settings(checkpoint["config"], config)):
            # Said of a finished run too: the flags given change nothing there.
            log.warning("%s: resumed with other settings than its first %g epochs trained "
                        "with: %s", run_dir, epochs_done(step, steps_per_epoch),
                        ", ".join(changed))  # fmt: skip
    elif config.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    if config.compile:
        model = torch.compile(model)
    if dist.is_initialized():
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # -- training loop ---------------------------------------------------------------------------
    def run_progress() -> float:
        by_time = elapsed_s / config.time_budget_s if config.time_budget_s else 0.0
        return max(step / total_steps, by_time)

    def read_clock(epoch_start: float) -> float:
        seconds = time.perf_counter() - epoch_start
        if config.time_budget_s and dist.is_initialized():
            # Ranks must agree on time-based lr and stopping: follow the slowest clock, at the
            # cost of a sync each step. On the device: NCCL reduces no CPU tensors.
            seconds = all_reduce(torch.tensor(seconds, device=device), dist.ReduceOp.MAX).item()
        return seconds

    def is_finished() -> bool:
        # By steps, not epochs: a time budget can end an epoch part-way, and a run resumed with
        # more time trains the steps it lacks, so that the schedule still anneals.
        return stopped_early or run_progress() >= 1

    ran_with = asdict(config)
    finished_before = is_finished()
    if finished_before:
        # A finished run resumed: nothing trains, and its record stays the settings it ran with,
        # and so do the weights it kept, else one resumed with --patience or another schedule
        # swaps its last epoch for its best under a config.toml that keeps the last.
        ran_with |= checkpoint["config"]  # finished before any step here: resumed
        done = epochs_done(step, steps_per_epoch)
        log.info("%s: finished already (%g epoch%s%s); nothing left to train", run_dir, done,
                 "s" * (done != 1),
                 ", its time budget spent: a larger --time-budget trains on"
                 if step < total_steps and not stopped_early else "")  # fmt: skip
        if is_main and history:  # a kill after the last checkpoint can cut its history short
            write_history(run_dir, history)
    elif is_main:  # once the checkpoint is known to fit: a refused resume keeps the record
        # Resumed with epochs left to train, in another number of processes. (Checkpoints
        # written before it was recorded do not say; most runs are one process.)
        if checkpoint is not None and (trained_in := checkpoint.get("world_size", 1)) != (
            dist_env.world_size
        ):
            log.warning("%s: trained in %d processes so far, resumed in %d: the epochs from here "
                        "share out the rows and draw augmentations otherwise than an "
                        "uninterrupted run would", run_dir, trained_in,
                        dist_env.world_size)  # fmt: skip
        make_dir(run_dir)
        save_run_config(config, run_dir)
    # One-cycle anneals the lr to zero: its last epoch is the one the schedule trains for, and
    # choosing another by a few thousand validation images chooses noise (replica 60221, 10 %
    # split, 300 s: the best-validation epoch, 5 of 11, scored 0.9933 on the test set, the last
    # 0.9959). Early stopping and the other schedules keep the best epoch.
    keep_last = ran_with["schedule"] == "onecycle" and ran_with["patience"] is None
    while not is_finished():
        model.train()
        # Randomness is a function of (seed, epoch, rank), so resuming at an epoch boundary
        # needs no RNG state and ranks draw different augmentations.
        epoch_seed = config.seed * SEED_STRIDE + epoch * 1_009 + dist_env.rank
        generator = torch.Generator(device=device).manual_seed(epoch_seed)
        # Dropout draws from the global generator: seeded alike, its stream would be the
        # augmentation's own (one algorithm per device).
        torch.manual_seed(epoch_seed + 2**62)
        epoch_start = time.perf_counter() - elapsed_s
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch) if progress else None
        n_seen = 0
        digits_seen = torch.zeros(10, dtype=torch.int64, device=device)
        for images, y in epoch_batches(epoch):
            x = to_model_input(images)
            if config.augment > 0:
                x = augment_batch(x, augmentation, generator, y)
            # Epochs by steps, not passes: a pass cut short by a budget and resumed is not one.
            lr = get_lr(config, run_progress(), step / steps_per_epoch, lr_scale)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, amp_dtype):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(raw_model)
            # Accumulate on the device; reading .item() every step would sync a GPU each time.
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            n_seen += len(y)
            if class_counts is None:
                digits_seen += torch.bincount(y, minlength=10)
            step += 1
            elapsed_s = read_clock(epoch_start)
            if task is not None:
                progress.advance(task)
            if run_progress() >= 1:
                break
        if device.type != "cpu":
            # A GPU runs behind the Python loop: the epoch took until its last kernel finished.
            synchronize(device)
            elapsed_s = read_clock(epoch_start)
        if task is not None:
            progress.remove_task(task)
        epoch += 1

        # -- evaluate, keep the best, checkpoint, maybe stop ---------------------------------------
        if dist.is_initialized():
            # DDP syncs batch-norm statistics from rank 0 before each forward, so after the
            # last one they differ by a step: sync them so every rank evaluates the same net.
            for buffer in [*raw_model.buffers(), *(ema.buffers() if ema else [])]:
                dist.broadcast(buffer, src=0)
        totals = all_reduce(torch.stack([loss_sum, correct.float(),
                                         torch.tensor(float(n_seen), device=device)]))  # fmt: skip
        if class_counts is None:
            class_counts = all_reduce(digits_seen).tolist()
            if rows_name is not None:
                warn_missing_digits(class_counts, rows_name)
        row = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "train_loss": (totals[0] / totals[2]).item(),
            "train_accuracy": (totals[1] / totals[2]).item(),
        }
        # Each loss is taken before its step: the epoch's last step can break the weights
        # with every loss finite, and a one-cycle run saves its last epoch whatever it scores.
        weights_finite = torch.stack([tensor.isfinite().all()
                                      for tensor in eval_model.state_dict().values()
                                      if tensor.is_floating_point()]).all().item()  # fmt: skip
        if totals[2] > 0 and not (math.isfinite(row["train_loss"]) and weights_finite):
            # (no batch: 0 / 0, no loss.) Before this epoch's checkpoint: --resume goes on from
            # the last sound one.
            broken = (f"its loss is {row['train_loss']}" if weights_finite
                      else "its weights are not all numbers")  # fmt: skip
            raise DivergedError(f"{run_dir}: training diverged in epoch {epoch} ({broken}) "
                                f"{divergence_advice(config)}; what it saved is from the "
                                "epochs before")  # fmt: skip
        if has_valid:
            # Same weights and buffers on every rank: same figures, same decisions everywhere.
            valid_loss, valid_accuracy = evaluate_split(
                eval_model, valid_images, valid_labels, amp_dtype
            )
            row |= {"valid_loss": valid_loss, "valid_accuracy": valid_accuracy}
            improved = (valid_accuracy, -valid_loss) > (best_accuracy, -best_loss)
            if improved:
                # Kept by one-cycle runs too: resumed with --patience, they keep the best epoch.
                best_state = copy.deepcopy(eval_model.state_dict())
            if is_main and (improved or keep_last):
                save_net(run_dir, eval_model, config.model, config.model_args(),
                         {"valid_accuracy": valid_accuracy,
                          "train_class_counts": class_counts})  # fmt: skip
            if improved:
                best_accuracy, best_loss, epochs_since_best = valid_accuracy, valid_loss, 0
            else:
                epochs_since_best += 1
                if (
                    config.schedule == "plateau"
                    and epochs_since_best % config.plateau_patience == 0
                ):
                    lr_scale *= config.plateau_factor
        row["elapsed_s"] = elapsed_s
        history.append(row)
        log.info(
            "epoch %d  lr %.4f  loss %.4f  acc %.4f%s  %.0fs",
            epoch, lr, row["train_loss"], row["train_accuracy"],
            f"  valid loss {row['valid_loss']:.4f}  valid acc {row['valid_accuracy']:.4f}"
            if has_valid else "",
            elapsed_s,
        )  # fmt: skip
        # Decided before the checkpoint, which keeps it: a run that stopped stays stopped when
        # resumed, instead of training on past the epoch it ended at.
        # (Both need a validation set, which the set-up checked.)
        stop = None
        if config.patience is not None and epochs_since_best >= config.patience:
            stop = f"early stopping: no better validation accuracy for {config.patience} epochs"
        target = config.target_accuracy
        if target is not None and best_accuracy >= target:
            stop = f"target validation accuracy {target:.4f} reached"
        stopped_early = stop is not None
        if is_main:
            save_checkpoint(
                run_dir,
                {
                    "model": raw_model.state_dict(),
                    "ema": ema.state_dict() if ema else None,
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "elapsed_s": elapsed_s,
                    "lr_scale": lr_scale,
                    "history": history,
                    "best_accuracy": best_accuracy,
                    "best_loss": best_loss,
                    "best_state": best_state,
                    "epochs_since_best": epochs_since_best,
                    "stopped_early": stopped_early,
                    "config": asdict(config),
                    "rows": rows,
                    "valid_rows": valid_rows,
                    "world_size": dist_env.world_size,
                    "class_counts": class_counts,
                },
            )
            write_history(run_dir, history)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if stop is not None:
            log.info(stop)  # and the loop's condition ends it

    epochs_trained = epochs_done(step, steps_per_epoch)
    cut_by_budget = bool(config.time_budget_s) and step < total_steps and not stopped_early
    if cut_by_budget and not finished_before:  # else said above: finished already
        log.info(
            "time budget of %.0f s reached after %g of %d epochs (%.0f images/s on this "
            "hardware): the schedule annealed to the budget",
            config.time_budget_s, epochs_trained, config.epochs,
            step * config.batch_size / max(elapsed_s, 1e-9),
        )  # fmt: skip

    # -- finish: restore the best weights, write the model ---------------------------------------
    if best_state is not None and not keep_last:
        eval_model.load_state_dict(best_state)
    eval_model.eval()  # a caller's result.model(x) predicts; it does not train
    kept_accuracy = history[-1]["valid_accuracy"] if keep_last and has_valid else best_accuracy
    if is_main:
        extra = {"valid_accuracy": kept_accuracy} if has_valid else {}
        extra["train_class_counts"] = class_counts  # None: a streamed run resumed, finished
        save_net(run_dir, eval_model, config.model, config.model_args(), extra)
    if dist.is_initialized():
        dist.barrier()  # no rank returns (and reads run_dir) before rank 0 has written it
    return TrainResult(
        run_dir=run_dir,
        model=eval_model,
        history=history,
        valid_accuracy=kept_accuracy if has_valid else None,
        train_seconds=elapsed_s,
        epochs_run=epochs_trained,
        stopped_early=stopped_early,
        cut_by_budget=cut_by_budget,
        config=ran_with,
        trained=not finished_before,
        class_counts=class_counts,
    )


if __name__ == "__main__":
    # The package is the entry point, for torchrun too: `python -m digit_recognizer train ...`.
    raise SystemExit("run `python -m digit_recognizer train ...` (or `digits train ...`)")
