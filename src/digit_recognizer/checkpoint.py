"""What a run directory holds while it trains: the checkpoint (written atomically each epoch),
the settings it was started with, its history, and the checks that keep a resumed run to its own
data and settings and a run from overwriting another.

train.py writes them; pipeline, report, tune and the estimator read them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import pickle  # for pickle.UnpicklingError only: torch.load(weights_only=True) raises it
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from digit_recognizer.config import save_config
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.shards import Manifest
from digit_recognizer.errors import ConfigError, ModelFileError, OutputError, first_line
from digit_recognizer.fileio import atomic_path, write_text
from digit_recognizer.models.storage import ENSEMBLE_FILE, META_FILE, member_run_dir

if TYPE_CHECKING:  # for annotations only: train imports this module
    from digit_recognizer.train import TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.toml"
# What --resume reads back from checkpoint.pt; "config" and "rows" hold a resumed run to its
# own settings and data (check_resume_matches).
RESUME_KEYS = ("model", "optimizer", "step", "epoch", "elapsed_s", "lr_scale", "history",
               "best_accuracy", "best_loss", "best_state", "epochs_since_best", "stopped_early",
               "config", "rows")  # fmt: skip


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    # Written atomically each epoch: a kill at any moment leaves the previous one intact.
    with atomic_path(run_dir / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """The last checkpoint; ``ModelFileError`` naming the file if it is corrupt or not ours."""
    path = run_dir / CHECKPOINT_FILE
    try:
        # weights_only=True: the checkpoint holds tensors, numbers and strings, nothing executable.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
        raise ModelFileError(
            f"{path}: not a readable checkpoint ({first_line(error)}); delete it to start over"
        ) from None
    missing = [
        key for key in RESUME_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint
    ]
    if missing:
        raise ModelFileError(
            f"{path}: not a checkpoint of digits train (no {', '.join(missing)}); "
            "delete it to start over"
        )
    if wrong := _wrong_counts(checkpoint):
        raise ModelFileError(f"{path}: not a checkpoint of digits train ({', '.join(wrong)}); "
                             "delete it to start over")  # fmt: skip
    return checkpoint


def _wrong_counts(checkpoint: dict[str, Any]) -> list[str]:
    """The bookkeeping that is not what training wrote: a step of -10**12 resumed would train
    on for ever at lr 0, a config of {} fail on its first key."""
    counts = {"step": checkpoint["step"], "epoch": checkpoint["epoch"],
              "epochs_since_best": checkpoint["epochs_since_best"]}  # fmt: skip
    wrong = [f"{key} {value!r:.20}" for key, value in counts.items()
             if not isinstance(value, int) or isinstance(value, bool) or value < 0]  # fmt: skip
    numbers = {"elapsed_s": checkpoint["elapsed_s"], "lr_scale": checkpoint["lr_scale"]}
    wrong += [f"{key} {value!r:.20}" for key, value in numbers.items()
              if not isinstance(value, int | float) or not 0 <= value < math.inf]  # fmt: skip
    kinds = {"history": list, "config": dict, "rows": str, "stopped_early": bool}
    wrong += [f"{key} not a {kind.__name__}" for key, kind in kinds.items()
              if not isinstance(checkpoint[key], kind)]  # fmt: skip
    config = checkpoint["config"]
    # What check_resume_matches reads of it.
    needed = ("seed", "valid_size", "batch_size", "optimizer", "max_memory_gb", "model", "widths")
    if isinstance(config, dict) and (absent := [key for key in needed if key not in config]):
        wrong.append(f"config without {', '.join(absent)}")
    if isinstance(checkpoint["history"], list) and not all(
        isinstance(row, dict) for row in checkpoint["history"]
    ):
        wrong.append("history not a list of rows")
    return wrong


def restore_checkpoint(
    run_dir: Path,
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
) -> None:
    """Load the checkpoint's weights, optimizer state and weight average; ``ModelFileError``
    if they do not fit."""
    try:
        model.load_state_dict(checkpoint["model"])
        # load_state_dict brings back the hyperparameters the run started with too; from here on
        # the config's apply, as config.toml will record (the lr is set every step anyway).
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in optimizer.param_groups]  # fmt: skip
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group, setting in zip(optimizer.param_groups, settings, strict=True):
            group.update(setting)
        if (ema is None) != (checkpoint.get("ema") is None):
            # Dropping or inventing the average would silently change which weights are kept.
            raise ValueError("ema_decay: the run kept an average of its weights and this "
                             "config does not, or the other way round")  # fmt: skip
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(
            f"{run_dir / CHECKPOINT_FILE}: does not fit this model and optimizer "
            f"({first_line(error)}); resume with the run's own settings, or delete it"
        ) from None


def write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / HISTORY_FILE, buffer.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows ``write_history`` wrote; ``ModelFileError`` naming a file it did not write."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's BOM too
            # Counts as the loop wrote them (epoch 3, step 1869), the rest as floats.
            history = [{k: int(v) if k in ("epoch", "step") else float(v) for k, v in row.items()}
                       for row in csv.DictReader(handle)]  # fmt: skip
        if not history or not {"epoch", "train_loss", "lr"} <= set(history[0]):
            raise ValueError("no rows of epoch, train_loss, lr, ...")
    # A cell short: TypeError; a field over csv's 128 kB limit: csv.Error.
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as error:
        raise ModelFileError(f"{path}: not a history written by training ({first_line(error)})"
                             "; delete it to go without (learning curves are drawn from it)"
                             ) from None  # fmt: skip
    return history


def save_run_config(config: TrainConfig, run_dir: Path) -> None:
    """``run_dir``/config.toml: the run's settings without the --resume that continued it, so
    that ``--config`` on it trains the run again rather than continuing whatever is there."""
    save_config(replace(config, resume=False), run_dir / CONFIG_FILE)


def check_out_dir(run_dir: Path, resume: bool, ensemble: bool) -> None:
    """Refuse a run directory whose files training would overwrite, or leave contradicting its
    own (an ensemble's members beside a single model: which would predict?)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: a file, where the run directory would go; give another")
    if ensemble and any((run_dir / name).exists() for name in (META_FILE, CHECKPOINT_FILE)):
        raise ConfigError(f"{run_dir} holds a single model's run; train the ensemble into "
                          "another directory")  # fmt: skip
    # An interrupted ensemble has its members' settings recorded but no ensemble.json yet.
    first_member = member_run_dir(run_dir, 1) / CONFIG_FILE
    is_ensemble = (run_dir / ENSEMBLE_FILE).exists() or first_member.exists()
    if not ensemble and is_ensemble:
        raise ConfigError(f"{run_dir} holds an ensemble or its first members; train one model "
                          "into another directory, or continue the ensemble (--preset best "
                          "--resume)")  # fmt: skip
    if not resume and (run_dir / CHECKPOINT_FILE).exists():
        raise ConfigError(
            f"{run_dir} already holds a training run ({CHECKPOINT_FILE}); continue it "
            "(--resume), or train into another directory to start over"
        )
    # Training records its config.toml before its first model.json: a model.json without one is
    # a model saved there (a classical model's, save_estimator's), which training would replace.
    if (run_dir / META_FILE).exists() and not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} holds a saved model ({META_FILE}) that no training made "
                          "there, which training would replace; train into another "
                          "directory")  # fmt: skip


def rows_fingerprint(train_set: DigitSet | Manifest) -> str:
    """SHA-256 of the training rows (of a manifest's shards' own hashes): a resumed run must
    train on what it started on, and another file, seed or validation size gives other rows."""
    digest = hashlib.sha256()
    if isinstance(train_set, Manifest):
        for shard in train_set.shards:
            digest.update(shard.sha256.encode())
    else:
        digest.update(np.ascontiguousarray(train_set.images).data)
        digest.update(np.ascontiguousarray(train_set.labels).data)
    return digest.hexdigest()


def check_resume_matches(
    run_dir: Path,
    checkpoint: dict[str, Any],
    config: TrainConfig,
    rows: str,
    valid_rows: str | None,
) -> None:
    """Refuse to resume on other training or validation rows, augmentation draws, batch size,
    optimizer or net than the run's own: the checkpoint counts steps in its own batches, the
    schedule and the epochs trained are read from that count, one optimizer's state means
    nothing to another, nor one net's weights to another (refused here, not by
    load_state_dict's list of mismatched tensors), and the best epoch is chosen, and its
    figures recorded, on the validation rows."""
    recorded = checkpoint["config"]
    changed = [
        key for key in ("model", "seed", "valid_size", "batch_size", "optimizer")
        if recorded[key] != getattr(config, key)
    ]  # fmt: skip
    if list(recorded["widths"] or []) != list(config.widths or []):
        changed.append("widths")
    if checkpoint["rows"] != rows:
        # Streamed shards are fingerprinted by their hashes, rows in memory by their bytes:
        # another max_memory_gb can turn one into the other, and a stream's batches are others.
        hint = " (or whether they stream: max_memory_gb)"
        changed.append("training rows" + hint * (recorded["max_memory_gb"] != config.max_memory_gb))
    # (Checkpoints written before it was recorded do not say.)
    if checkpoint.get("valid_rows", valid_rows) != valid_rows:
        changed.append("validation rows")
    if changed:
        raise ConfigError(
            f"{run_dir / CHECKPOINT_FILE}: resuming would change the run's "
            f"{' and '.join(changed)}; resume it with its own data and settings (its "
            f"{CONFIG_FILE}), or train into another directory"
        )


def changed_settings(recorded: dict[str, Any], config: TrainConfig) -> list[str]:
    """The settings ``config`` changes from the ``recorded`` ones, as "key old -> new"."""
    now = asdict(config)
    return [f"{key} {recorded[key]!r} -> {now[key]!r}" for key in now
            if key != "resume" and key in recorded and recorded[key] != now[key]]  # fmt: skip
