"""One scikit-learn interface for every registered model: ``NetClassifier`` wraps ``train()`` for
any net; classical models already are pipelines. ``build_estimator``, ``save_estimator`` and
``load_estimator`` treat both alike, which is what ``compare`` and ``tune`` rely on.

    from digit_recognizer.estimator import build_estimator, load_estimator, save_estimator
    model = build_estimator("cnn", epochs=3).fit(images, labels)      # or "svm", "knn", ...
    save_estimator(model, "runs/cnn"); load_estimator("runs/cnn").predict(images)
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from digit_recognizer.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    check_out_dir,
    read_history,
)
from digit_recognizer.config import load_config, make_config
from digit_recognizer.data.images import check_digits, check_images
from digit_recognizer.data.kaggle_csv import N_PIXELS
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import ConfigError, ModelFileError, first_line
from digit_recognizer.fileio import locked_temporary_dir
from digit_recognizer.models.classical import (
    count_pipeline_parameters,
    fits_the_digits,
    is_pipeline,
    load_pipeline,
    save_pipeline,
)
from digit_recognizer.models.registry import build, get_spec
from digit_recognizer.models.storage import (
    ENSEMBLE_FILE,
    META_FILE,
    load_net,
    read_meta,
    save_net,
)
from digit_recognizer.predict import PredictConfig, Predictor
from digit_recognizer.train import TrainConfig, model_args, train

log = logging.getLogger(__name__)

# NetClassifier parameters that are TrainConfig keys; None means TrainConfig's default.
TRAIN_KEYS = (
    "widths", "dropout", "epochs", "time_budget_s", "batch_size", "optimizer", "lr", "momentum",
    "weight_decay", "schedule", "warmup", "lr_decay", "plateau_factor", "plateau_patience",
    "label_smoothing", "ema_decay", "augment", "elastic", "stroke", "styles", "valid_size",
    "patience", "target_accuracy", "seed", "device", "amp",
)  # fmt: skip


# A fit without a run_dir trains in a temporary folder, locked while it does: one a kill left
# (its checkpoints, megabytes) is removed by the next fit (locked_temporary_dir).
SCRATCH_PREFIX = "digits-net."


class NetClassifier(ClassifierMixin, BaseEstimator):
    """Any registered net as a scikit-learn classifier; ``fit`` runs ``train()``.

    Parameters
    ----------
    model : str, default="cnn"
        Registry name of a net (``digits models``).
    widths, dropout, epochs, time_budget_s, batch_size, optimizer, lr, momentum, weight_decay, \
schedule, warmup, lr_decay, plateau_factor, plateau_patience, label_smoothing, ema_decay, \
augment, elastic, stroke, styles, valid_size, patience, target_accuracy, seed, device, amp : \
optional
        ``TrainConfig`` keys, as `digits train` takes them (flags or config.toml); ``None`` keeps
        the recipe default.
        ``valid_size`` is carved out of the data given to ``fit`` for validation (and the best
        epoch, where one is picked). ``amp`` and ``device`` hold for ``predict`` too.
    run_dir : str or Path, optional
        Where ``train()`` writes its run directory, which must not hold a run already (as for
        ``digits train``: nothing is overwritten); ``None`` trains in a temporary folder.

    Attributes
    ----------
    classes_ : ndarray of shape (10,)
        Always the digits 0-9: the nets have ten outputs.
    module_ : torch.nn.Module
        The trained net (the epoch ``train()`` keeps).
    history_ : list of dict
        One row per epoch, as history.csv.
    config_ : dict
        The resolved ``TrainConfig``.
    class_counts_ : list of int or None
        Rows of each digit 0-9 trained on (model.json's ``train_class_counts``, from which
        `digits evaluate` names the digits scored that the net never saw); None where not known.
    """

    def __init__(
        self, model: str = "cnn", *, widths: tuple[int, ...] | None = None,
        dropout: float | None = None, epochs: int | None = None,
        time_budget_s: float | None = None, batch_size: int | None = None,
        optimizer: str | None = None, lr: float | None = None, momentum: float | None = None,
        weight_decay: float | None = None, schedule: str | None = None,
        warmup: float | None = None, lr_decay: float | None = None,
        plateau_factor: float | None = None, plateau_patience: int | None = None,
        label_smoothing: float | None = None,
        ema_decay: float | None = None, augment: float | None = None,
        elastic: float | None = None, stroke: float | None = None, styles: float | None = None,
        valid_size: float | None = None, patience: int | None = None,
        target_accuracy: float | None = None, seed: int | None = None, device: str | None = None,
        amp: bool | None = None, run_dir: str | Path | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self.widths = widths
        self.dropout = dropout
        self.epochs = epochs
        self.time_budget_s = time_budget_s
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup = warmup
        self.lr_decay = lr_decay
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.label_smoothing = label_smoothing
        self.ema_decay = ema_decay
        self.augment = augment
        self.elastic = elastic
        self.stroke = stroke
        self.styles = styles
        self.valid_size = valid_size
        self.patience = patience
        self.target_accuracy = target_accuracy
        self.seed = seed
        self.device = device
        self.amp = amp
        self.run_dir = run_dir

    def train_config(self) -> TrainConfig:
        """The ``TrainConfig`` these parameters resolve to (checked: wrong values raise)."""
        params = {key: getattr(self, key) for key in ("model", *TRAIN_KEYS)}
        # Named as parameters of this class: as flags (load_config's), NetClassifier(epochs=0)
        # would say "--epochs must be >= 1".
        given = {key: value for key, value in params.items() if value is not None}
        return make_config(TrainConfig, given, source=type(self).__name__)

    def fit(self, X: ArrayLike, y: ArrayLike) -> NetClassifier:
        """Train on uint8 images X (n_samples, 28, 28) or (n_samples, 784) and digits y."""
        config = self.train_config()
        if self.run_dir is not None:
            check_out_dir(Path(self.run_dir), resume=False, ensemble=False)
        digits = check_digits(X, y)
        if not len(digits):
            raise ValueError("fit needs at least one image, got none")
        try:
            train_set, valid_set = split_for_training(digits, config.valid_size, config.seed)
        except ConfigError:  # its message names the CLI's --valid-size, not this parameter
            raise ValueError(
                f"{len(digits):,} images are too few, or a digit among them too rare, to hold "
                f"out valid_size={config.valid_size} of them by digit; give more images, or "
                "valid_size=0 (no validation)"
            ) from None
        if self.run_dir is not None:
            result = train(config, train_set, valid_set, Path(self.run_dir))
        else:
            with locked_temporary_dir(SCRATCH_PREFIX) as scratch:
                result = train(config, train_set, valid_set, scratch)
        self.module_ = result.model
        self.history_ = result.history
        self.config_ = result.config
        self.class_counts_ = result.class_counts
        self.classes_ = np.arange(10)
        self.n_features_in_ = N_PIXELS
        return self

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float32]:
        """Softmax probabilities (n_samples, 10), columns in ``classes_`` order."""
        check_is_fitted(self)
        # As `digits run` predicts: where, and as, the net trained.
        given = {key: getattr(self, key) for key in ("device", "amp")}
        settings = {key: value for key, value in given.items() if value is not None}
        predictor = Predictor.from_models([self.module_], PredictConfig(**settings))
        return predictor.predict_proba(check_images(X))

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """Predicted digits (n_samples,)."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)


def build_estimator(name: str, seed: int | None = None, **params: Any) -> NetClassifier | Pipeline:
    """An unfitted estimator by registry name: ``NetClassifier(name, **params)`` for nets (params
    are ``TrainConfig`` keys), the registered pipeline for classical models (builder arguments).
    ``seed`` seeds the models that draw at random (nets, the random forest, the SVM's
    calibration holdout); others ignore it.
    """
    spec = get_spec(name)
    if seed is not None and (spec.kind == "net" or "seed" in signature(spec.builder).parameters):
        params["seed"] = seed
    if spec.kind == "net":
        return NetClassifier(name, **params)
    return build(name, **params)


def save_estimator(
    estimator: NetClassifier | Pipeline, run_dir: str | Path, name: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write a fitted estimator to ``run_dir`` (model.json + weights).

    Nets: model.safetensors via ``models/storage.py``. Classical pipelines: fitted arrays as
    model.safetensors plus JSON, no pickle; a random forest as a skops file that loads only
    where it was written, signed with that installation's key (``models.classical``).
    ``name`` and ``params`` (builder arguments) are needed for pipelines only.
    """
    run_dir = Path(run_dir)
    own_run = isinstance(estimator, NetClassifier) and estimator.run_dir is not None
    is_own_run = own_run and Path(estimator.run_dir).resolve() == run_dir.resolve()
    # A run's weights replaced, its config, history and report left: a run contradicting
    # itself; an ensemble's model.json would be read instead of its members, without a word.
    held = [name for name in (CHECKPOINT_FILE, ENSEMBLE_FILE) if (run_dir / name).exists()]
    if held and not is_own_run:
        raise ConfigError(f"{run_dir} holds a training run or an ensemble ({held[0]}); save the "
                          "estimator into another directory")  # fmt: skip
    if isinstance(estimator, NetClassifier):
        check_is_fitted(estimator)
        extra = {"estimator_params": estimator.get_params(), "train_config": estimator.config_,
                 "train_class_counts": estimator.class_counts_}  # fmt: skip
        extra["estimator_params"]["run_dir"] = None
        # The net as trained ("auto" resolved, its widths), which the parameters may not say.
        save_net(run_dir, estimator.module_, estimator.config_["model"],
                 model_args(estimator.config_), extra)  # fmt: skip
        return
    if name is None:
        raise ValueError("save_estimator needs the registry name of a classical pipeline")
    if get_spec(name).kind != "classical":  # an unknown name: UnknownModelError, with the names
        raise ValueError(f"'{name}' is a net; a pipeline is saved under a classical model's name")
    if not isinstance(estimator, Pipeline):  # else a bare model raises AttributeError (steps)
        raise ValueError(f"save_estimator saves a NetClassifier or a fitted pipeline, got a "
                         f"{type(estimator).__name__}: build_estimator('{name}') makes "
                         "one")  # fmt: skip
    # The name is what /model, the report and errors call it: a logreg saved as "knn" would
    # load and predict under the wrong name.
    registered = type(build(name).steps[-1][1]).__name__
    if type(estimator.steps[-1][1]).__name__ != registered:
        raise ValueError(f"the pipeline ends in a {type(estimator.steps[-1][1]).__name__}, "
                         f"'{name}' in a {registered}: give its own model's name")  # fmt: skip
    check_is_fitted(estimator)
    if not fits_the_digits(estimator):  # load_pipeline would refuse it as corrupt
        raise ValueError(f"a saved pipeline must be fitted on the digits 0-9, it was on "
                         f"{getattr(estimator, 'classes_', None)}")  # fmt: skip
    try:  # as load_pipeline tries it, else a pipeline saves, then loads as "corrupt"
        estimator.predict_proba(np.zeros((1, 28, 28), np.uint8))
    except (ValueError, TypeError) as error:
        raise ValueError(f"the pipeline does not read digits (N, 28, 28) "
                         f"({first_line(error)}); the registry's begin with "
                         "models.classical.DigitPixels") from None  # fmt: skip
    save_pipeline(run_dir, estimator, name, params or {})


def load_estimator(run_dir: str | Path) -> NetClassifier | Pipeline:
    """Load what ``save_estimator`` (or ``digits train``) wrote, ready to predict.

    A ``digits train`` run's ``config_`` is its config.toml, and its parameters the keys of it
    that NetClassifier takes (TRAIN_KEYS): a clone refits with those, the rest (channels_last,
    compile, ...) at TrainConfig's defaults."""
    run_dir = Path(run_dir)
    if is_pipeline(read_meta(run_dir)):
        return load_pipeline(run_dir)[0]
    module, meta = load_net(run_dir)
    recorded = meta.get("train_config")
    if recorded is None and (run_dir / CONFIG_FILE).is_file():
        recorded = asdict(load_config(TrainConfig, run_dir / CONFIG_FILE))
    try:
        # What model.json says of the net, which weights that saving this again needs.
        recorded = {"model": meta["model"], **meta.get("params", {}), **(recorded or {})}
        params = meta.get("estimator_params") or {
            key: recorded[key] for key in TRAIN_KEYS if recorded.get(key) is not None
        }
        estimator = NetClassifier(meta["model"])
        estimator.set_params(**{k: v for k, v in params.items() if k != "model"})
    except (TypeError, ValueError, AttributeError) as error:  # an edited model.json
        raise ModelFileError(f"{run_dir / META_FILE}: not a net's settings as training wrote "
                             f"them ({first_line(error)})") from None  # fmt: skip
    estimator.module_ = module
    estimator.history_ = _saved_history(run_dir / HISTORY_FILE)
    estimator.config_ = recorded
    estimator.class_counts_ = meta.get("train_class_counts")
    estimator.classes_ = np.arange(10)
    estimator.n_features_in_ = N_PIXELS
    return estimator


def _saved_history(path: Path) -> list[dict[str, float]]:
    """A run's history.csv; none (save_estimator writes none) or a damaged one: [], as the
    weights load all the same."""
    if not path.is_file():
        return []
    try:
        return read_history(path)
    except ModelFileError as error:
        log.warning("%s; history_ left empty", error)
        return []


def count_parameters(estimator: NetClassifier | Pipeline) -> int:
    """Learned numbers in a fitted model: net weights; for pipelines every fitted array
    (PCA components, coefficients, support vectors, k-NN's stored features) and tree nodes."""
    if isinstance(estimator, NetClassifier):
        check_is_fitted(estimator)
        return sum(p.numel() for p in estimator.module_.parameters())
    return count_pipeline_parameters(estimator)
