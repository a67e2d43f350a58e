"""Hyperparameter search with Optuna (TPE): one search space per model, scored by accuracy on a
stratified validation split, in a study stored in SQLite so that a later call resumes it.

    digits tune --train train.csv --model cnn --trials 3 --timeout 300 --out runs/tune-cnn
    digits tune --train train.csv --model cnn --trials 10 --out runs/tune-cnn  # 13 trials in all
    digits tune --train train.csv --model svm --trials 20 --storage postgresql://user@host/db

Writes ``best_params.json``, for nets ``best_config.toml`` (``digits train --config`` reads it)
and the Optuna plots. Net trials are short runs (``epochs``, default 3) that report each epoch's
validation accuracy; a trial below the median of earlier trials at the same epoch is pruned
(Optuna's MedianPruner). ``--timeout`` bounds the whole call: no trial starts after it, and a
net trial still short of its epochs then stops at the end of the epoch it is in, recorded as
failed, which TPE leaves out: its accuracy would be the time's, not its settings'. (A time
budget inside training would steer its learning rate by the clock, and a trial that still
finished would score the time left.) Ctrl-C or SIGTERM stops the study, failing the trial it
cuts likewise, and the results of the trials finished are written all the same. A resumed
study must be given the settings and data it was run with: trials are only comparable on one
split and run length. A trial whose process was killed outright is marked failed once its
heartbeat is two minutes old.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.distributions import BaseDistribution
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from digit_recognizer.checkpoint import rows_fingerprint
from digit_recognizer.config import check_fields, config_to_toml, load_config, zeros_as_none
from digit_recognizer.data.kaggle_csv import DigitSet, count_classes
from digit_recognizer.data.shards import read_labelled
from digit_recognizer.data.splits import check_seed, split_for_training, warn_missing_digits
from digit_recognizer.distributed import Distributed
from digit_recognizer.errors import (
    ConfigError,
    DigitsError,
    DivergedError,
    OutputError,
    first_line,
)
from digit_recognizer.estimator import build_estimator
from digit_recognizer.evaluate import save_figure
from digit_recognizer.fileio import (
    LEFTOVER_AGE_S,
    check_can_write,
    is_file_at,
    is_leftover_of,
    locked_dir,
    make_dir,
    missing_dirs,
    remove_empty_dirs,
    remove_leftovers,
    remove_unlocked_dirs,
    write_together,
)
from digit_recognizer.interrupts import interruption_behind
from digit_recognizer.models.registry import get_spec
from digit_recognizer.train import TrainConfig, train

log = logging.getLogger(__name__)

BEST_CONFIG_FILE = "best_config.toml"
NET_ONLY = ("epochs", "ema_decay", "amp", "channels_last")  # TuneConfig's settings of net trials
BEST_PARAMS_FILE = "best_params.json"
CREATE_ATTEMPTS = 3
SETTINGS_WAIT_S = 10  # for a new study's creator to record its settings: a few round trips
_TRIAL_FOLDER = re.compile(r"trial\d+-[a-z0-9_]{8}")  # trialN-RANDOM: a trial's
# trialN.PID-RANDOM: a trial's folder as versions before the lock named it, without one
_PID_TRIAL_FOLDER = re.compile(r"trial\d+\.(\d{1,9})-[a-z0-9_]{8}")


@dataclass
class TuneConfig:
    """One tuning study. Defaults fit a few minutes per net trial on 2 CPU cores."""

    model: str = "cnn"  # registry name
    trials: int = 20  # trials added by this call (a resumed study keeps its earlier ones)
    timeout_s: float | None = None  # stop starting new trials after this many seconds
    storage: str | None = None  # Optuna storage URL; None = sqlite:///OUT_DIR/study.db
    study_name: str | None = None  # None = "tune-<model>"
    epochs: int = 3  # per net trial: short runs rank recipes the way full runs do, mostly
    valid_size: float = 0.2  # stratified validation fraction that scores each trial
    seed: int = 0  # of the split, the sampler and the models
    # Net trials train with these, as `digits train`'s flags set them; TrainConfig's defaults.
    # With epochs, NET_ONLY: refused away from their defaults for a classical model.
    ema_decay: float | None = TrainConfig.ema_decay
    amp: bool = TrainConfig.amp
    channels_last: bool = TrainConfig.channels_last

    def __post_init__(self) -> None:
        check_fields(self)
        zeros_as_none(self, ("ema_decay",))  # as TrainConfig's: --ema-decay 0 is no average
        require_search_space(self.model)  # before any data is read or a study made
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.timeout_s is not None and not 0 <= self.timeout_s < math.inf:  # nan too
            raise ConfigError(f"timeout_s must be >= 0 (0 = none), got {self.timeout_s}")
        if not 0 < self.valid_size < 1:
            raise ConfigError(f"valid_size must be in (0, 1), got {self.valid_size}")
        # Else tune() would take "" for its default: OUT/study.db, without making OUT, and fail
        # to open it; tune-MODEL, tuning a study the user never named.
        for key, advice in (
            ("storage", "give an Optuna URL (sqlite:///study.db, postgresql://...), or leave it "
                        "out for OUT/study.db"),
            ("study_name", f"give the study's name in the storage, or leave it out for "
                           f"tune-{self.model}"),
        ):  # fmt: skip
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ConfigError(f"{key} is empty; {advice}")
        check_seed(self.seed)  # Optuna's range too
        if get_spec(self.model).kind == "net":
            TrainConfig(**self.net_settings())  # its ranges (ema_decay's), before any trial
        else:
            self._refuse_net_only()

    def _refuse_net_only(self) -> None:
        """``ConfigError`` naming a ``NET_ONLY`` setting given away from its default with a
        classical model, where ``--model knn --ema-decay 0.99`` would tune as if not given."""
        defaults = {field.name: field.default for field in fields(self)}
        for name in NET_ONLY:
            if getattr(self, name) != defaults[name]:
                # Begins with the setting: load_config names it as a flag (--ema-decay ...).
                raise ConfigError(f"{name} applies to net trials alone; '{self.model}' is a "
                                  "classical model, whose trials it would not change: leave it "
                                  "out")  # fmt: skip

    def net_settings(self) -> dict[str, Any]:
        """The TrainConfig keys every net trial trains with, and best_config.toml keeps."""
        return {"model": self.model, "seed": self.seed, "ema_decay": self.ema_decay,
                "amp": self.amp, "channels_last": self.channels_last}  # fmt: skip


@dataclass
class TuneResult:
    study_name: str
    storage: str
    n_trials: int  # all trials in the study, earlier calls included
    n_pruned: int  # of those, stopped early by the pruner
    best_value: float
    best_params: dict[str, Any]
    files: list[Path]


def suggest_params(trial: optuna.Trial, model: str) -> dict[str, Any]:
    """The search space: TrainConfig keys for nets, builder arguments for classical models."""
    spec = get_spec(model)
    if spec.kind == "net":
        params = {
            "lr": trial.suggest_float("lr", 0.02, 0.3, log=True),  # Nesterov SGD peak lr
            "weight_decay": trial.suggest_float("weight_decay", 1e-5, 2e-3, log=True),
            "augment": trial.suggest_float("augment", 0.0, 1.5),
            "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        }
        settings = inspect.signature(spec.builder).parameters
        if "dropout" in settings:  # a builder without the setting refuses it
            params["dropout"] = trial.suggest_float("dropout", 0.0, 0.4)
        widths = settings.get("widths")
        if widths is not None:  # scale every layer of the model's own widths alike
            scale = trial.suggest_categorical("width_scale", [0.5, 0.75, 1.0, 1.5, 2.0])
            params["widths"] = tuple(max(1, round(width * scale)) for width in widths.default)
        return params
    require_search_space(model)
    return CLASSICAL_SPACES[model](trial)


def require_search_space(model: str) -> None:
    """``ConfigError`` for a classical model ``CLASSICAL_SPACES`` has no space for."""
    if get_spec(model).kind != "net" and model not in CLASSICAL_SPACES:
        raise ConfigError(f"no search space for '{model}'; tunable: nets, "
                          f"{', '.join(CLASSICAL_SPACES)} (tune.CLASSICAL_SPACES)")  # fmt: skip


# Each classical model's search space, as build_estimator's arguments.
CLASSICAL_SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "logreg": lambda trial: {"C": trial.suggest_float("C", 1e-3, 10, log=True)},
    "knn": lambda trial: {"n_neighbors": trial.suggest_int("n_neighbors", 1, 10),
                          "n_components": trial.suggest_int("n_components", 20, 100, step=10)},
    "svm": lambda trial: {"C": trial.suggest_float("C", 1, 100, log=True),
                          # around 'scale' = 1 / (40 * feature variance) ~ 0.025 on PCA-40
                          "gamma": trial.suggest_float("gamma", 0.005, 0.1, log=True)},
    "random-forest": lambda trial: {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        "max_samples": trial.suggest_float("max_samples", 0.2, 1.0)},
}  # fmt: skip


def tune(config: TuneConfig, train_csv: Path, out_dir: Path) -> TuneResult:
    """Run ``config.trials`` more trials of the study and write the best settings and plots
    (after Ctrl-C too, for the trials finished, before the interruption goes on)."""
    study_name = config.study_name or f"tune-{config.model}"
    handled_outside = sys.exception()  # not an interruption of this call's: see below
    Distributed.from_env()  # a stray RANK refused now, not as every net trial's failure
    # Built as a URL, not pasted into one: an --out holding '?' or '%' named another file.
    database = str((out_dir / "study.db").resolve())
    storage = config.storage or URL.create("sqlite", database=database).render_as_string()
    where = f"--storage {shown_storage(storage)}" if config.storage else database
    check_results_are_the_studys(out_dir, study_name, storage)
    # Before a study at --storage is made, for trials whose results could go nowhere.
    check_can_write(out_dir / BEST_PARAMS_FILE)
    data = read_labelled(train_csv, to_split=True)
    train_set, valid_set = split_for_training(data, config.valid_size, config.seed)
    # Said once here, not by each trial's train(): every trial trains on these rows.
    warn_missing_digits(count_classes(train_set.labels), f"{train_csv}: its training rows")
    made = []
    if config.storage is None:
        made = missing_dirs(out_dir)
        make_dir(out_dir)  # the study's database goes in it
    try:
        study, is_new = open_study(storage, study_name, where)
    except ConfigError:
        # The folder made for a database that could not be made (a full disk): gone with it
        # (_creation_lock removed the database and its lock file).
        remove_empty_dirs(made)
        raise
    study.sampler = TrialSeededSampler(config.seed)
    is_net = get_spec(config.model).kind == "net"
    check_same_study(study, is_new, storage, config, rows_fingerprint(data), is_net)
    # Made once the study takes these trials, else one at --storage refused leaves it, empty.
    out_dir = make_dir(out_dir)
    remove_dead_trials(out_dir)
    # What a write killed outright left (best_params.json's, say); old enough that no worker
    # on another machine sharing --out is still writing it.
    remove_leftovers(out_dir, min_age_s=LEFTOVER_AGE_S)
    deadline = time.monotonic() + config.timeout_s if config.timeout_s else None

    interruptions: list[KeyboardInterrupt] = []
    lapsed: list[int] = []  # trials another worker failed while they ran here

    def objective(trial: optuna.Trial) -> float:
        try:
            value = scored_or_not_counted(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # its report, once failed
            value = math.nan
        if heartbeat_lapsed(study, trial):
            lapsed.append(trial.number)  # Optuna's record of it fails next, ending the study
        return value

    def scored_or_not_counted(trial: optuna.Trial) -> float:
        try:
            if is_net:
                return _net_objective(trial, config, train_set, valid_set, deadline, out_dir)
            return _classical_objective(trial, config, train_set, valid_set)
        except TrialTimeoutError as cut:
            log.info("trial %d %s: not counted", trial.number, cut)
            return not_counted(trial, CUT_BY_TIMEOUT)
        except KeyboardInterrupt as stop:
            # The study stops, and the interruption goes on once the results are written.
            interruptions.append(stop)
            study.stop()
            return not_counted(trial, INTERRUPTED)

    verbosity = optuna.logging.get_verbosity()
    try:
        study.optimize(objective, n_trials=config.trials, timeout=config.timeout_s or None)
    except KeyboardInterrupt as stop:  # between two trials, in Optuna's own bookkeeping
        interruptions.append(stop)
    except Exception as error:  # Optuna's bookkeeping failing in turn (a name left unbound)
        if (stop := interruption_behind(error, handled_outside)) is not None:
            interruptions.append(stop)
        elif not lapsed:  # not its failing to record a trial another worker failed
            if isinstance(error, STORAGE_ERRORS):  # a full disk under the trials
                raise OutputError(f"{where}: cannot record the study's trials "
                                  f"({said_by_driver(error)})") from None  # fmt: skip
            raise
    finally:
        optuna.logging.set_verbosity(verbosity)
    # What stopped the study early, raised once the finished trials' results are written.
    stopped_by = interruptions[0] if interruptions else heartbeat_lapse(lapsed)
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if not completed:
        if stopped_by is not None:
            raise stopped_by
        # No trial ended at all: --timeout ran out before the first began.
        why = why_pruned(study) or f"none began within --timeout {config.timeout_s:g}"
        raise ConfigError(f"study '{study_name}' has no completed trial: {why}")
    # Again: a worker of another study may have written its results here meanwhile.
    check_results_are_the_studys(out_dir, study_name, storage)
    files = write_results(study, storage, config, out_dir, is_net)
    if stopped_by is not None:
        log.warning("%s: wrote the results of the %d trials finished; the same command adds "
                    "trials to the study", "interrupted" if interruptions else "stopped",
                    len(completed))  # fmt: skip
        raise stopped_by
    n_pruned = len(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.PRUNED]))
    return TuneResult(study_name, storage, len(study.trials), n_pruned, study.best_value,
                      study.best_params, files)  # fmt: skip


def open_study(storage: str, study_name: str, where: str) -> tuple[optuna.Study, bool]:
    """The study ``study_name`` at ``storage``, created there if new, and whether this call
    created it; ``ConfigError`` naming ``where`` if the database cannot be used.

    Workers started at once on a new database each create its tables, and all but one fail
    ("table studies already exists", or a duplicate row of Optuna's schema version): on SQLite
    they take turns, holding a lock file beside the database, and elsewhere (PostgreSQL, for
    workers on several machines) the losers try again, finding the tables made."""

    def create() -> tuple[optuna.Study, bool]:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Trials beat a heartbeat: one whose process was killed outright (kill -9, the
            # machine's end) would stay RUNNING for ever, counted in every later call; two
            # minutes after its last beat the next call marks it failed. Not in a SQLite
            # database in memory, which ends with its process: the heartbeat's thread, with a
            # connection of its own, would find another database there, empty, and fail.
            url = make_url(storage)
            in_memory = url.drivername.startswith("sqlite") and sqlite_file(url) is None
            beat = {} if in_memory else {"heartbeat_interval": 60, "grace_period": 120}
            rdb = optuna.storages.RDBStorage(storage, **beat)
        # Prune from the second epoch, once two trials have finished: short runs are noisy early.
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
        try:  # the storage makes one worker the creator of a new study, whoever comes at once
            study = optuna.create_study(
                study_name=study_name, storage=rdb, direction="maximize", pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=study_name, storage=rdb, pruner=pruner), False
        return study, True

    try:
        attempt = 1
        while True:
            try:
                with _creation_lock(storage, where):
                    return create()
            except (IntegrityError, OperationalError) as error:
                if not _lost_race(error) or attempt == CREATE_ATTEMPTS:
                    raise
            time.sleep(0.2 * attempt)
            attempt += 1
    except STORAGE_ERRORS as error:  # a bad URL, an unreachable database, a full disk
        raise ConfigError(f"{where}: cannot open the study's database "
                          f"({said_by_driver(error)})") from None  # fmt: skip
    except ImportError as error:  # Optuna's, for the URL's driver missing (psycopg2, say)
        driver = getattr(error.__cause__, "name", None) or "its driver"
        raise ConfigError(f"{where}: cannot open the study's database: the Python module "
                          f"{driver} that SQLAlchemy reaches it with is not installed; install "
                          "it") from None  # fmt: skip
    except RuntimeError as error:  # written by another Optuna version
        raise ConfigError(f"{where}: the study's database was written by another version of "
                          f"Optuna than {optuna.__version__} ({first_line(error)}); `optuna "
                          f"storage upgrade --storage {shown_storage(storage)}` upgrades it"
                          ) from None  # fmt: skip


# StorageInternalError: Optuna's for a commit that failed (a full disk), raised from
# SQLAlchemy's; uncaught, it ends in a traceback.
STORAGE_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError)


def said_by_driver(error: Exception) -> str:
    """A storage's failure (``STORAGE_ERRORS``) in its driver's own words: SQLAlchemy's add
    the whole SQL statement that failed, and Optuna's say only that a commit did."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__:
        error = error.__cause__
    return first_line(getattr(error, "orig", None) or error)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE drawing each trial's settings from ``seed`` and the trial's number: a study replays
    by its seed, resumed or not, and workers sharing it draw apart, since the storage numbers
    their trials apart. (Seeded once per call, by the trials stored, workers started at once
    would draw the same settings, trial for trial.)"""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial_seed = np.random.SeedSequence((self._seed, trial.number)).generate_state(1)[0]
        self._tpe = optuna.samplers.TPESampler(seed=int(trial_seed))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)


def shown_storage(storage: str) -> str:
    """``storage`` as messages show it, its password masked: they end up in job logs."""
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL, which opening it says
        return storage


def results_storage(storage: str, out_dir: Path) -> str | None:
    """The study's storage as ``out_dir``'s best_params.json records it: None for the study.db
    in ``out_dir``, which moves with the folder; else the URL as shown (``shown_storage``), a
    SQLite file's path absolute (a relative one is the working folder's)."""
    with contextlib.suppress(ArgumentError):  # not a URL, which opening it says
        url = make_url(storage)
        if (database := sqlite_file(url)) is not None:
            database = database.resolve()
            if database == (out_dir / "study.db").resolve():
                return None
            storage = url.set(database=str(database)).render_as_string(hide_password=False)
    return shown_storage(storage)


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for another database, or SQLite's in memory."""
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        return Path(url.database)
    return None


@contextmanager
def _creation_lock(storage: str, where: str) -> Iterator[None]:
    """Held while a study is opened: a lock file beside a SQLite database (``study.db.lock``),
    nothing for other storages. ``ConfigError`` naming ``where`` for a database that is a
    folder, before the lock file is made: SQLite's own "unable to open database file" comes
    after it, and leaves it beside the folder.

    A database file that was not there when the lock was taken, and that the opening failed
    to fill (a full disk), is removed with the lock file, else they stay, tables half made,
    after the error."""
    database = sqlite_file(make_url(storage))
    if database is not None and database.is_dir():
        raise ConfigError(f"{where}: a folder, where the study's SQLite database file belongs; "
                          "move it, or name a file")  # fmt: skip
    if database is None or not database.parent.is_dir():
        yield
        return
    lock = Path(f"{database}.lock")
    while True:
        with _open_lock_file(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when closed, or when the process dies
            # A failed first call removes the lock file as it holds it: one who waited on it
            # holds the lock of no file, which the next comer makes anew, and tries again.
            if not is_file_at(handle, lock):
                continue
            is_made_here = not database.exists()
            try:
                yield
            except BaseException as error:
                # Not one another worker, taking no lock (an older version), has just made.
                if is_made_here and not _lost_race(error):
                    database.unlink(missing_ok=True)
                    lock.unlink(missing_ok=True)
                raise
            return


def _open_lock_file(lock: Path) -> IO[str]:
    """``lock`` opened to append; its folder, there a moment before, made again if a failed
    first call has just removed it (``tune`` removes the --out it made)."""
    try:
        return open(lock, "a")
    except FileNotFoundError:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return open(lock, "a")


def _lost_race(error: BaseException) -> bool:
    """Whether creating a study's tables failed for another worker's having made them."""
    return isinstance(error, IntegrityError) or (
        isinstance(error, OperationalError) and "already exists" in str(error)
    )


def remove_dead_trials(out_dir: Path) -> None:
    """Remove the folders of trials killed outright; another worker's trial, on this machine
    or another sharing --out, holds its folder's lock and goes on."""
    remove_unlocked_dirs(path for path in out_dir.glob("trial*-*")
                         if _TRIAL_FOLDER.fullmatch(path.name))  # fmt: skip
    # Those of earlier versions, locked by none, are told by their pid, as those versions told
    # them, and by age (LEFTOVER_AGE_S), as a pid says nothing of another machine sharing --out.
    for folder in out_dir.glob("trial*.*-*"):
        match = _PID_TRIAL_FOLDER.fullmatch(folder.name)
        with contextlib.suppress(OSError):
            if (
                match
                and is_leftover_of(int(match[1]))
                and (time.time() - folder.stat().st_mtime >= LEFTOVER_AGE_S)
            ):
                shutil.rmtree(folder)


# Why a trial was pruned or not counted, recorded with it: a study without a completed trial
# says which.
BELOW_MEDIAN = "below the median of earlier trials"
CUT_BY_TIMEOUT = "stopped by --timeout: raise it for whole trials"
DIVERGED = "its training diverged: the lr range is too high for these rows"
INTERRUPTED = "interrupted"
UNFIT = "could not be fitted with its settings on these rows"


def pruned(trial: optuna.Trial, reason: str, detail: str = "") -> optuna.TrialPruned:
    """The exception that prunes ``trial``, with ``reason`` recorded on it."""
    trial.set_user_attr("pruned", reason)
    return optuna.TrialPruned(f"{reason}{detail}")


def heartbeat_lapsed(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether ``trial``, running here, was failed meanwhile by another worker of the study, who
    found its heartbeat over two minutes old: this process had stopped that long (suspended,
    or its machine asleep). Optuna cannot record it then, and ends in a traceback."""
    return study._storage.get_trial(trial._trial_id).state.is_finished()


def heartbeat_lapse(lapsed: list[int]) -> DigitsError | None:
    """The error that ends a call whose trials ``lapsed`` (``heartbeat_lapsed``); None if none."""
    if not lapsed:
        return None
    return DigitsError(f"trial {lapsed[0]} was marked failed by another worker of the study "
                       "while it ran here: its heartbeat had stopped for over two minutes (was "
                       "this process suspended?), so its score could not be recorded")  # fmt: skip


class TrialTimeoutError(Exception):
    """A net trial stopped short of its epochs by ``--timeout``."""


def not_counted(trial: optuna.Trial, reason: str) -> float:
    """NaN, the objective's value that fails ``trial``, with ``reason`` recorded on it.

    Failed, not pruned: TPE leaves failed trials out, and would take a pruned one for a poor
    setting, when its score is the clock's, not its settings'. NaN fails it without the
    traceback Optuna logs for an exception; its warnings are quiet until the study ends."""
    trial.set_user_attr("pruned", reason)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return math.nan


def why_pruned(study: optuna.Study) -> str:
    """What ended a study's trials, counted: "2 trials its training diverged: ..., 1 ..."."""
    states = (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    # Pruned by an earlier version, which did not say why; failed: its process was killed
    # outright (its heartbeat stopped), or a bug ended it.
    reasons = Counter(trial.user_attrs.get("pruned", "pruned" if trial.state == states[0]
                                           else "failed")
                      for trial in study.get_trials(deepcopy=False, states=states))  # fmt: skip
    return "; ".join(f"{n} trial{'s' * (n > 1)} {reason}" for reason, n in reasons.items())


def write_results(
    study: optuna.Study, storage: str, config: TuneConfig, out_dir: Path, is_net: bool
) -> list[Path]:
    """best_params.json, for a net best_config.toml, and the plots: the files written."""
    best = {
        "study": study.study_name,
        "storage": results_storage(storage, out_dir),
        "model": config.model,
        "accuracy": study.best_value,
        "params": study.best_params,
    }
    texts = {out_dir / BEST_PARAMS_FILE: json.dumps(best, indent=2) + "\n"}
    if is_net:
        # The trial's recipe and seed; epochs stay at the full-length default the short trials
        # stood in for.
        best_overrides = study.best_trial.user_attrs["train_overrides"]
        best_config = load_config(TrainConfig, None, config.net_settings() | best_overrides)
        texts[out_dir / BEST_CONFIG_FILE] = config_to_toml(best_config)
    # Together, else a full disk at best_config.toml leaves it an older best's beside the new
    # best_params.json.
    write_together([(path, functools.partial(Path.write_text, data=text, encoding="utf-8"))
                    for path, text in texts.items()])  # fmt: skip
    return [*texts, *write_plots(study, out_dir, has_epochs=is_net)]


def check_results_are_the_studys(out_dir: Path, study_name: str, storage: str) -> None:
    """Refuse an ``out_dir`` holding another study's best settings and plots, which this study's
    would replace without a word (one database holds several studies, and studies of one name
    live in several databases; its results, one)."""
    try:
        best = json.loads((out_dir / BEST_PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or not ours: written over as before
        return
    if not isinstance(best, dict) or "study" not in best:  # written before studies were named
        return
    owner, here = best["study"], results_storage(storage, out_dir)
    owner_storage = best.get("storage", here)  # written before storages were recorded: this one
    if owner != study_name or owner_storage != here:
        where = owner_storage or out_dir / "study.db"
        with_storage = f"--storage {owner_storage}" if owner_storage else "without --storage"
        held = [name for name in (BEST_PARAMS_FILE, BEST_CONFIG_FILE) if (out_dir / name).exists()]
        raise ConfigError(f"{out_dir}: holds the results of study '{owner}' in {where} "
                          f"({', '.join(held)}, plots), which this one's "
                          f"would replace; give another --out (--study-name {owner} "
                          f"{with_storage} adds trials to that study, with its model and "
                          "data)")  # fmt: skip


def check_same_study(
    study: optuna.Study, is_new: bool, storage: str, config: TuneConfig, rows: str, is_net: bool
) -> None:
    """Refuse to add trials to a study run on another model, data, split or run length, whose
    trials' scores these could not be ranked against; record them for later calls. A study
    another worker has just created (not ``is_new``) is checked once it has recorded its own."""
    # A new study needs another --out, whose results would not replace the study's there, and
    # in a shared --storage another name too.
    new_study = "another --out" if config.storage is None else "another --study-name and --out"
    settings: dict[str, Any] = {"model": config.model, "rows": rows, "seed": config.seed,
                                "valid_size": config.valid_size}  # fmt: skip
    if is_net:  # an EMA validates other weights: its trials score otherwise
        settings |= {"epochs": config.epochs, "ema_decay": config.ema_decay}
    if not is_new:
        wait_for_settings(study)
    recorded_settings = study.user_attrs
    for key, value in settings.items():
        recorded = recorded_settings.get(key, value)  # studies of older versions kept the model
        if recorded != value:
            found = "other training rows" if key == "rows" else f"{key} {recorded!r}"
            raise ConfigError(f"study '{study.study_name}' in {shown_storage(storage)} was run "
                              f"with {found}, "
                              f"not {value if key != 'rows' else 'these'}; give its settings, "
                              f"or {new_study} for a new study")  # fmt: skip
    for key, value in settings.items():
        if key != "model":
            study.set_user_attr(key, value)
    study.set_user_attr("model", config.model)  # last: the settings are all recorded


def wait_for_settings(study: optuna.Study) -> None:
    """Wait, up to ``SETTINGS_WAIT_S``, for the worker that has just created ``study`` to record
    its settings (``model`` last), else workers started at once on a new study each find none
    recorded and take it for theirs, whatever their --seed. A study with trials has them."""
    deadline = time.monotonic() + SETTINGS_WAIT_S
    while "model" not in study.user_attrs and not study.get_trials(deepcopy=False):
        if time.monotonic() > deadline:  # its creator was killed: the study is this call's
            return
        time.sleep(0.1)


def _net_objective(
    trial: optuna.Trial,
    config: TuneConfig,
    train_set: DigitSet,
    valid_set: DigitSet,
    deadline: float | None,
    out_dir: Path,
) -> float:
    params = suggest_params(trial, config.model)
    trial.set_user_attr("train_overrides", params)  # width_scale -> widths: TrainConfig's keys
    overrides = {**config.net_settings(), "epochs": config.epochs, **params}
    train_config = load_config(TrainConfig, None, overrides)

    def report(row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        trial.report(row["valid_accuracy"], step=epoch)
        if trial.should_prune():
            raise pruned(trial, BELOW_MEDIAN, f" (epoch {epoch})")
        if deadline is not None and time.monotonic() > deadline and epoch < config.epochs:
            raise TrialTimeoutError(f"stopped by --timeout after {epoch} of {config.epochs} epochs")

    # In --out, locked while it trains: a trial killed outright leaves its folder where the
    # next call removes it (remove_dead_trials), not in /tmp for good.
    with tempfile.TemporaryDirectory(prefix=f"trial{trial.number}-", dir=out_dir) as scratch, \
            locked_dir(scratch) as run_dir:  # fmt: skip
        try:
            # rows_name None: tune warned of these rows once, for all its trials.
            result = train(
                train_config, train_set, valid_set, run_dir, on_epoch_end=report, rows_name=None
            )
        except DivergedError as error:  # its settings' fault: a trial to prune, not the end
            raise pruned(trial, DIVERGED, f" ({first_line(error)})") from None
    return float(result.valid_accuracy)


def _classical_objective(
    trial: optuna.Trial, config: TuneConfig, train_set: DigitSet, valid_set: DigitSet
) -> float:
    estimator = build_estimator(config.model, seed=config.seed,
                                **suggest_params(trial, config.model))  # fmt: skip
    # Settings these rows cannot fit (100 PCA components of 96 rows) are the trial's fault, as
    # a net's diverging is: pruned, not the study's end, which would lose the trials before it.
    try:
        estimator.fit(train_set.images, train_set.labels)
    except ValueError as error:
        raise pruned(trial, UNFIT, f" ({first_line(error)})") from None
    return float(estimator.score(valid_set.images, valid_set.labels))


def write_plots(study: optuna.Study, out_dir: Path, has_epochs: bool) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; a plot the study cannot support yet is skipped."""
    from optuna.visualization import matplotlib as optuna_plots

    plots = {"optimization_history": optuna_plots.plot_optimization_history}
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    # Importances rank parameters by how the scores vary with them: with one score, or all
    # alike, Optuna draws equal bars that say nothing (and warns).
    if len({trial.value for trial in completed}) > 1:
        plots["param_importances"] = optuna_plots.plot_param_importances
    else:
        log.info("skipped the param_importances plot: it needs trials of two scores or more")
    if has_epochs:
        plots["intermediate_values"] = optuna_plots.plot_intermediate_values
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                log.info("skipped the %s plot: %s", name, error)
                continue
        figure: Figure = axes.figure
        path = out_dir / f"{name}.png"
        save_figure(figure, path)
        plt.close(figure)  # Optuna draws through pyplot, which keeps figures until closed
        written.append(path)
    return written
