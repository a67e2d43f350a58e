"""Classical models: scikit-learn pipelines registered as ``logreg``, ``knn``, ``svm`` and
``random-forest``, and their storage without pickle.

Every pipeline starts with ``DigitPixels`` (uint8 images -> float32 pixels in [0, 1], deskewed by
default), then PCA where it pays. Replica figures (42,000 / 28,000, validation 0.2, 2 shared CPU
cores, scikit-learn 1.9, torch 2.13, one run; benchmarks/classical_speed.py):

=============  ========  ==================  ==============================================
model          accuracy  fit + predict (s)   recipe
=============  ========  ==================  ==============================================
logreg         0.949     ~6                  deskew, PCA 100, standardise, L-BFGS
knn            0.984     ~6                  deskew, PCA 40, torch top-4 distance-weighted
svm            0.989     ~5                  deskew, PCA 40, RBF C=10, temperature on 10 %
random-forest  0.970     ~23                 deskew, 150 trees on half-size bootstraps
=============  ========  ==================  ==============================================

Deskewing (shearing each digit so its principal axis is vertical) is the classic MNIST trick:
on the replica it lifts k-NN from 0.976 to 0.984 and the SVM from 0.983 to 0.988 at ~2 s.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import secrets
import zipfile
from collections.abc import Iterator
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save_file
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    BaseCrossValidator,
    StratifiedShuffleSplit,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from digit_recognizer.data.images import check_images
from digit_recognizer.data.kaggle_csv import N_PIXELS
from digit_recognizer.errors import ConfigError, ModelFileError, first_line
from digit_recognizer.fileio import xdg_home
from digit_recognizer.models.nets import Deskew
from digit_recognizer.models.registry import register
from digit_recognizer.models.storage import (
    META_FILE,
    WEIGHTS_FILE,
    read_meta,
    read_safetensors,
    write_model_files,
)


def deskew_images(images: NDArray[np.uint8], batch_size: int = 8192) -> NDArray[np.float32]:
    """Shear each image upright and centre it by mass (``nets.Deskew``), in batches.

    Returns float32 of shape (N, 28, 28) in [0, 1].
    """
    # No cap on the slant: the classical figures were measured without one.
    deskew = Deskew(max_slant=float("inf"), centre=True)
    with torch.no_grad():
        # torch.tensor copies a batch: a read-only array (a DataFrame's values) draws a warning
        # from as_tensor, and the copy costs little beside the deskew.
        out = [deskew(torch.tensor(images[start : start + batch_size]).unsqueeze(1) / 255.0)
               for start in range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(out)[:, 0].numpy() if out else np.zeros((0, 28, 28), np.float32)


class DigitPixels(TransformerMixin, BaseEstimator):
    """First step of every classical pipeline: uint8 images -> float32 pixels (N, 784) in [0, 1].

    Parameters
    ----------
    deskew : bool, default=True
        Straighten slanted digits first (``deskew_images``).
    """

    _parameter_constraints: ClassVar[dict] = {"deskew": ["boolean"]}

    def __init__(self, *, deskew: bool = True) -> None:
        self.deskew = deskew

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> DigitPixels:
        self._validate_params()
        check_images(X)
        self.n_features_in_ = N_PIXELS
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float32]:
        check_is_fitted(self)
        images = check_images(X)
        pixels = deskew_images(images) if self.deskew else images.astype(np.float32) / 255
        return pixels.reshape(len(images), N_PIXELS)


class TorchKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest neighbours with batched exact distances in PyTorch.

    Neighbours come from ``|a|^2 - 2 a.b + |b|^2`` as one matrix product per query batch, then
    ``topk``; their votes are weighted by inverse distance, taken from the differences. Same
    answers as scikit-learn's ``KNeighborsClassifier(weights="distance", algorithm="brute")`` up
    to float32 ties, without its per-query Python overhead.

    Parameters
    ----------
    n_neighbors : int, default=4
        Neighbours that vote; 4 was best of 3, 4, 6 on the deskewed replica.
    batch_size : int, default=1024
        Queries per distance matrix (memory: batch_size x n_train floats).
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, n_neighbors: int = 4, batch_size: int = 1024) -> None:
        self.n_neighbors = n_neighbors
        self.batch_size = batch_size

    def fit(self, X: ArrayLike, y: ArrayLike) -> TorchKNeighborsClassifier:
        """Store features X (n_samples, n_features) and labels y (n_samples,)."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, self._y = np.unique(y, return_inverse=True)
        self._fit_X = np.ascontiguousarray(X)
        return self

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float32]:
        """Distance-weighted vote shares (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        train = torch.from_numpy(self._fit_X)
        train_sq = (train * train).sum(1)
        labels = torch.from_numpy(self._y.astype(np.int64))
        k = min(self.n_neighbors, len(train))
        probas = []
        for start in range(0, len(X), self.batch_size):
            query = torch.from_numpy(np.ascontiguousarray(X[start : start + self.batch_size]))
            query_sq = (query * query).sum(1, keepdim=True)
            squared = torch.addmm(train_sq, query, train.T, alpha=-2).add_(query_sq)
            indices = squared.topk(k, dim=1, largest=False).indices
            # From the differences, not the expansion, whose float32 rounding moves with the
            # other queries in the batch: there a stored row's 0 comes out as 0 or 1e-5, and its
            # probabilities move by up to 0.02 between queried alone and amid others.
            distances = (train[indices] - query[:, None]).square().sum(2).sqrt()
            weights = 1 / distances.clamp_min(1e-6)  # an exact match all but decides
            votes = torch.zeros(len(query), len(self.classes_))
            votes.scatter_add_(1, labels[indices], weights)
            probas.append(votes / votes.sum(1, keepdim=True))
        return torch.cat(probas).numpy()  # validate_data refuses 0 rows: never empty

    def predict(self, X: ArrayLike) -> NDArray:
        probas = self.predict_proba(X)  # first: NotFittedError before classes_ is read
        return self.classes_[probas.argmax(axis=1)]


class DigitPipeline(Pipeline):
    """Every classical model's pipeline: scikit-learn's, its probabilities float32 as a net's
    are, whatever its last step's (the calibrated SVM's and the forest's are float64)."""

    def predict_proba(self, X: ArrayLike, **params: Any) -> NDArray[np.float32]:
        """Class probabilities (n_samples, n_classes), columns in ``classes_`` order."""
        return super().predict_proba(X, **params).astype(np.float32, copy=False)


# -- the registered pipelines -------------------------------------------------------------------


def _pca(n_components: int) -> PCA:
    # covariance_eigh: one 784 x 784 eigendecomposition, ~10x faster than a full SVD of 34k rows.
    return PCA(n_components=n_components, svd_solver="covariance_eigh")


@register("logreg", kind="classical")
def logreg(C: float = 1.0, n_components: int = 100, deskew: bool = True) -> Pipeline:
    """Logistic regression on 100 standardised PCA features of deskewed pixels (~0.95)."""
    # On all 784 pixels L-BFGS needs ~80 s for 0.92; PCA + scaling converge in 40 iterations.
    return DigitPipeline([
        ("pixels", DigitPixels(deskew=deskew)),
        ("pca", _pca(n_components)),
        ("scale", StandardScaler()),
        ("classifier", LogisticRegression(C=C, max_iter=300)),
    ])  # fmt: skip


@register("knn", kind="classical")
def knn(n_neighbors: int = 4, n_components: int = 40, deskew: bool = True) -> Pipeline:
    """k-NN (PyTorch distances) on 40 PCA features of deskewed pixels (~0.984)."""
    return DigitPipeline([
        ("pixels", DigitPixels(deskew=deskew)),
        ("pca", _pca(n_components)),
        ("classifier", TorchKNeighborsClassifier(n_neighbors=n_neighbors)),
    ])  # fmt: skip


class CalibrationHoldout(BaseCrossValidator):
    """The SVM's one calibration split, a scikit-learn splitter: ``test_size`` of each digit's
    rows held out, drawn with ``seed``, but at least one row of each digit of two or more rows,
    and never a digit's only row, which the SVC must fit to predict that digit at all.

    scikit-learn's ``StratifiedShuffleSplit`` refuses both: a holdout of fewer rows than digits
    (under ~91 rows for 10 %) and a digit of one row.
    """

    def __init__(self, *, test_size: float = 0.1, seed: int = 0) -> None:
        self.test_size = test_size
        self.seed = seed

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return 1

    def split(
        self, X: ArrayLike, y: ArrayLike, groups: Any = None
    ) -> Iterator[tuple[NDArray[np.intp], NDArray[np.intp]]]:
        """Yields (fit indices, holdout indices) once."""
        y = np.asarray(y)
        digits, counts = np.unique(y, return_counts=True)
        is_single = np.isin(y, digits[counts == 1])
        splittable = np.flatnonzero(~is_single)
        n_held = max(round(self.test_size * len(splittable)), int((counts > 1).sum()))
        fit, held = train_test_split(splittable, test_size=n_held, stratify=y[splittable],
                                     random_state=self.seed)  # fmt: skip
        yield np.sort(np.concatenate([fit, np.flatnonzero(is_single)])), np.sort(held)


@register("svm", kind="classical")
def svm(
    C: float = 10.0,
    gamma: float | str = "scale",
    n_components: int = 40,
    deskew: bool = True,
    seed: int = 0,
) -> Pipeline:
    """RBF SVM on 40 PCA features of deskewed pixels, temperature-calibrated (~0.989)."""
    # Probabilities (scikit-learn 1.9 deprecates SVC(probability=True) for this): one SVC fit
    # on 90 % of the rows, its temperature on the other 10 %. 3-fold calibration plus a refit
    # on all rows cost 3.7x the time (11.4 s against 3.1 s) for the same accuracy.
    holdout = CalibrationHoldout(test_size=0.1, seed=seed)
    return DigitPipeline([
        ("pixels", DigitPixels(deskew=deskew)),
        ("pca", _pca(n_components)),
        ("classifier", CalibratedClassifierCV(SVC(C=C, gamma=gamma), method="temperature",
                                              cv=holdout, ensemble=True)),
    ])  # fmt: skip


@register("random-forest", kind="classical")
def random_forest(
    n_estimators: int = 150, max_samples: float = 0.5, deskew: bool = True, seed: int = 0
) -> Pipeline:
    """Random forest of 150 trees on deskewed pixels (~0.970); saved as a trusted-only file."""
    # Half-size bootstraps: 0.970 in 23 s against 0.972 in 36 s for 100 full-size trees.
    forest = RandomForestClassifier(
        n_estimators=n_estimators, max_samples=max_samples, n_jobs=-1, random_state=seed
    )
    return DigitPipeline([("pixels", DigitPixels(deskew=deskew)), ("classifier", forest)])


# -- storage: arrays + JSON, never pickle; forests via skops, trusted-only ----------------------

TRUSTED_FILE = "model.trusted.skops"
KEY_BYTES = 32  # of the installation's signing key (HMAC-SHA256)
# The only classes a pipeline saved as JSON may name; decoding instantiates nothing else.
_SKOPS_TRUSTED = {"sklearn.tree._tree.Tree"}  # a forest's trees: node arrays, no code
_SAFE_CLASSES = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (DigitPipeline, Pipeline, DigitPixels, PCA, StandardScaler, LogisticRegression,
                SVC, CalibratedClassifierCV, CalibrationHoldout, TorchKNeighborsClassifier,
                StratifiedShuffleSplit)  # the SVM's holdout in pipelines saved before its own
}  # fmt: skip
for _name in ("_CalibratedClassifier", "_TemperatureScaling", "_SigmoidCalibration"):
    _SAFE_CLASSES[f"sklearn.calibration.{_name}"] = getattr(
        importlib.import_module("sklearn.calibration"), _name
    )


class _NotPlainDataError(TypeError):
    """A fitted attribute is neither an array, plain JSON, nor an allow-listed object."""


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-able tree of ``value``; ndarrays go to ``arrays`` and are referenced by key."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":  # before float: a subclass
        return {"__scalar__": value.item(), "dtype": value.dtype.str}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        key = f"a{len(arrays)}"
        # Keep the memory layout: BLAS sums in another order on a copy, and the loaded model
        # would differ from the saved one in the last bit.
        is_fortran = value.flags.f_contiguous and not value.flags.c_contiguous
        arrays[key] = np.ascontiguousarray(value.T if is_fortran else value)
        return {"__array__": key, "fortran": is_fortran}
    if isinstance(value, list | tuple):
        items = [_encode(item, arrays) for item in value]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"__dict__": {key: _encode(item, arrays) for key, item in value.items()}}
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if name not in _SAFE_CLASSES:
        raise _NotPlainDataError(name)
    return {"__object__": name, "state": _encode(vars(value), arrays)["__dict__"]}


def _decode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(tree, list):
        return [_decode(item, arrays) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        array = arrays[tree["__array__"]]
        return array.T if tree.get("fortran") else array
    if "__scalar__" in tree:
        return np.dtype(tree["dtype"]).type(tree["__scalar__"])
    if "__tuple__" in tree:
        return tuple(_decode(item, arrays) for item in tree["__tuple__"])
    if "__dict__" in tree:
        return {key: _decode(item, arrays) for key, item in tree["__dict__"].items()}
    if tree.get("__object__") not in _SAFE_CLASSES:
        raise ModelFileError(f"saved model names class {tree.get('__object__')!r}, not allowed")
    obj = object.__new__(_SAFE_CLASSES[tree["__object__"]])
    obj.__dict__.update({key: _decode(item, arrays) for key, item in tree["state"].items()})
    return obj


def fits_the_digits(pipeline: Any) -> bool:
    """Whether ``pipeline`` is fitted on the digits 0-9, the probability columns Predictor
    reads."""
    classes = getattr(pipeline, "classes_", None) if isinstance(pipeline, Pipeline) else None
    return classes is not None and list(classes) == list(range(10))


def is_pipeline(meta: dict[str, Any]) -> bool:
    """Whether a model.json (``read_meta``) is a pipeline's, as ``save_pipeline`` writes it."""
    return meta.get("framework") == "sklearn"


def count_pipeline_parameters(pipeline: Pipeline) -> int:
    """Learned numbers in a fitted pipeline: every fitted array (PCA components, coefficients,
    support vectors, k-NN's stored features) and tree nodes."""
    total = 0
    for _, step in pipeline.steps:
        for attribute in _fitted_objects(step):
            tree = getattr(attribute, "tree_", None)
            total += tree.node_count if tree is not None else 0
            for value in vars(attribute).values():
                total += value.size if isinstance(value, np.ndarray) else 0
    return total


def _fitted_objects(step: Any) -> list[Any]:
    """The step and the estimators fitted inside it (calibrated SVMs, a forest's trees)."""
    inner = getattr(step, "estimators_", None) or [
        calibrated.estimator for calibrated in getattr(step, "calibrated_classifiers_", [])
    ]
    return [step, *inner]


def save_pipeline(run_dir: Path, pipeline: Pipeline, name: str, params: dict[str, Any]) -> None:
    """Write a fitted pipeline to ``run_dir``: model.json plus model.safetensors, or plus
    model.trusted.skops for a forest.

    Fitted arrays (PCA components, scaler statistics, coefficients, support vectors, stored
    k-NN features) go to safetensors and everything else to JSON; nothing is pickled. Trees are
    Cython objects with no such form: those pipelines go to a skops file signed with this
    installation's key (``_signing_key``), and ``load_pipeline`` refuses a file whose signature
    does not match: skops trusts every scikit-learn estimator, and a tree's node indices are not
    bounds-checked, so an edited file could crash the process or compute anything.
    """
    run_dir = Path(run_dir)
    meta: dict[str, Any] = {"format_version": 1, "framework": "sklearn", "model": name,
                            "params": params, "classes": pipeline.classes_.tolist(),
                            "n_parameters": count_pipeline_parameters(pipeline)}  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    try:
        meta["pipeline"] = _encode(pipeline, arrays)
    except _NotPlainDataError:
        import skops.io

        content = skops.io.dumps(pipeline)
        # Refused now rather than when loaded: a file the loader would refuse is no model.
        if unknown := _unknown_types(skops.io.get_untrusted_types(data=content)):
            raise ConfigError(f"{name}: its pipeline holds types that load_pipeline does not "
                              f"trust ({', '.join(unknown)}); a type of plain arrays goes in "
                              "classical._SAFE_CLASSES, one only a signed file may hold (a "
                              "tree's nodes) in _SKOPS_TRUSTED, once read") from None  # fmt: skip
        meta["trusted_file"] = {"path": TRUSTED_FILE, "hmac_sha256": _sign(content),
                                "format": "skops"}  # fmt: skip
        weights = (run_dir / TRUSTED_FILE, lambda file: file.write_bytes(content))
    else:
        weights = (run_dir / WEIGHTS_FILE, lambda file: save_file(arrays, str(file)))
    # Together, as a net's, else a full disk at model.json leaves another model's model.json
    # beside the new weights, a "corrupt pipeline" (or a forest "not signed" here) from then on.
    write_model_files(*weights, meta)


def load_pipeline(run_dir: Path) -> tuple[Pipeline, dict[str, Any]]:
    """Rebuild a pipeline written by ``save_pipeline``; returns (pipeline, meta).

    ``ModelFileError`` for anything else: files edited, truncated or made elsewhere."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    try:
        if "trusted_file" in meta:
            pipeline = _load_trusted(run_dir, meta["trusted_file"])
        else:
            arrays = read_safetensors(run_dir / WEIGHTS_FILE, load_arrays)
            if not all(np.isfinite(array).all() for array in arrays.values()):
                raise ModelFileError(f"{run_dir / WEIGHTS_FILE}: holds NaN or infinite values: a "
                                     "damaged file; refit the model")  # fmt: skip
            pipeline = _decode(meta["pipeline"], arrays)
        if type(pipeline) is Pipeline:  # saved before DigitPipeline: float64 from SVMs, forests
            pipeline = DigitPipeline(pipeline.steps)
        if not fits_the_digits(pipeline):
            raise ModelFileError(f"{run_dir / META_FILE}: not a fitted pipeline of the digits 0-9")
        # One blank digit shows that the fitted arrays fit one another (an edited shape fails
        # here, not amid a prediction).
        pipeline.predict_proba(np.zeros((1, 28, 28), np.uint8))
    except (
        KeyError,
        TypeError,
        AttributeError,
        ValueError,
        IndexError,
        RecursionError,
        OverflowError,  # an edited scalar too large for its dtype
        RuntimeError,  # torch's, in the k-NN's search over edited arrays
        zipfile.BadZipFile,
    ) as error:
        raise ModelFileError(f"{run_dir / META_FILE}: corrupt pipeline ({error!r:.200})") from None
    return pipeline, meta


def _signing_key(make_key: bool = True) -> bytes:
    """This installation's secret, made on its first save (``make_key``): a file signed with it was
    written here, which a hash recorded beside the file cannot show (whoever swaps the file
    rewrites it). Without one, a load refuses the file without making one."""
    path = xdg_home("XDG_DATA_HOME", ".local/share") / "digit-recognizer" / "skops.key"
    if not path.exists() and not make_key:
        raise ModelFileError(f"{path}: no signing key, so no random forest was saved on this "
                             "installation; refusing to load a model file written elsewhere "
                             "(retrain it here)")  # fmt: skip
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        made = path.with_name(f".skops.key.{os.getpid()}")
        descriptor = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())  # a crash must not leave an empty key behind its name
        try:
            os.link(made, path)  # in one step, and once: of two processes, the first key stays
        except FileExistsError:
            pass
        finally:
            made.unlink()
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as error:
        key = b""
        why = first_line(error)
    else:
        why = f"{len(key)} bytes where it has {KEY_BYTES}"
    if len(key) != KEY_BYTES:  # an empty key would sign for anyone
        raise ModelFileError(f"{path}: this installation's signing key is damaged ({why}); "
                             "delete it, and retrain the random forests it signed (a new key "
                             "is made on the next save)")  # fmt: skip
    return key


def _sign(content: bytes, make_key: bool = True) -> str:
    return hmac.new(_signing_key(make_key), content, hashlib.sha256).hexdigest()


def _load_trusted(run_dir: Path, record: dict[str, str]) -> Pipeline:
    import skops.io

    # Only the file save_pipeline writes, never a path the record names: /dev/zero would be
    # read without end before its hash could be compared.
    if record["path"] != TRUSTED_FILE:
        raise ModelFileError(f"{run_dir / META_FILE}: trusted_file must be {TRUSTED_FILE}")
    path = run_dir / TRUSTED_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: not found")
    content = path.read_bytes()
    if "hmac_sha256" not in record:
        raise ModelFileError(f"{path}: saved before digit-recognizer signed random forests' "
                             "files, and not loaded unsigned; retrain it")  # fmt: skip
    if not hmac.compare_digest(_sign(content, make_key=False), str(record["hmac_sha256"])):
        raise ModelFileError(
            f"{path}: not signed by this installation's key (the signature in {META_FILE} does "
            "not match); refusing to load a model file written elsewhere, or edited (retrain it)"
        )
    untrusted = skops.io.get_untrusted_types(data=content)
    if unknown := _unknown_types(untrusted):
        raise ModelFileError(f"{path}: names types outside the allow-list: {', '.join(unknown)}")
    return skops.io.loads(content, trusted=untrusted)


def _unknown_types(untrusted: list[str]) -> list[str]:
    """Of the types a skops file names that skops does not trust by itself (it trusts
    scikit-learn's estimators and numpy's functions), those that are not ours either
    (``_SAFE_CLASSES``, ``_SKOPS_TRUSTED``): even signed, a file naming one is refused."""
    return [name for name in untrusted if name not in _SAFE_CLASSES.keys() | _SKOPS_TRUSTED]
