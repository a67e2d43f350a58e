import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from digit_recognizer.data.images import check_images
from digit_recognizer.errors import ConfigError, ModelFileError, OutputError
from digit_recognizer.estimator import build_estimator
from digit_recognizer.models import available, build
from digit_recognizer.models.classical import (
    TRUSTED_FILE,
    CalibrationHoldout,
    DigitPixels,
    TorchKNeighborsClassifier,
    count_pipeline_parameters,
    deskew_images,
    load_pipeline,
    save_pipeline,
)

from .conftest import accuracy, disk_full_at


@pytest.fixture(scope="module")
def fitted(small_train):
    """Every classical model fitted once on 1,500 images (shared by the tests below)."""
    images, labels = small_train.images[:1500], small_train.labels[:1500]
    return {name: build(name).fit(images, labels) for name in available("classical")}


@pytest.mark.parametrize("name", available("classical"))
def test_classical_model_learns_and_survives_save_load(tmp_path, fitted, small_test, name):
    pipeline = fitted[name]
    probas = pipeline.predict_proba(small_test.images)
    assert probas.shape == (len(small_test), 10)
    np.testing.assert_allclose(probas.sum(axis=1), 1, atol=1e-5)
    assert accuracy(pipeline.predict(small_test.images), small_test.labels) > 0.8  # chance: 0.1
    save_pipeline(tmp_path, pipeline, name, {})
    loaded, meta = load_pipeline(tmp_path)
    assert meta["model"] == name and meta["framework"] == "sklearn"
    np.testing.assert_array_equal(loaded.predict_proba(small_test.images), probas)
    # Only trees need the trusted-only file; everything else is arrays + JSON.
    holds_trees = any(hasattr(step, "estimators_") for _, step in pipeline.steps)
    assert (tmp_path / TRUSTED_FILE).exists() == holds_trees


@pytest.mark.parametrize("name", available("classical"))
def test_every_classical_model_gives_float32_probabilities(tmp_path, fitted, small_test, name):
    """As a net's: the calibrated SVM's and the forest's had been float64, the others' float32;
    a pipeline saved before they were made alike loads float32 too."""
    images = small_test.images[:5]
    assert fitted[name].predict_proba(images).dtype == np.float32
    save_pipeline(tmp_path, Pipeline(fitted[name].steps), name, {})  # as saved before
    loaded = load_pipeline(tmp_path)[0]
    assert loaded.predict_proba(images).dtype == np.float32
    np.testing.assert_array_equal(loaded.predict_proba(images), fitted[name].predict_proba(images))


def test_a_forest_loads_only_as_this_installation_signed_it(tmp_path, fitted, monkeypatch):
    """Its skops file is signed with a key of this installation's: an edited file is refused
    even where its record is rewritten to match (as a recorded SHA-256 could be), and so is a
    file another installation wrote."""
    save_pipeline(tmp_path, fitted["random-forest"], "random-forest", {})
    assert load_pipeline(tmp_path)[0].predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)
    path, meta_path = tmp_path / TRUSTED_FILE, tmp_path / "model.json"
    original = path.read_bytes()
    path.write_bytes(original + b"\0")
    with pytest.raises(ModelFileError, match=r"not signed by this installation's key"):
        load_pipeline(tmp_path)
    meta = json.loads(meta_path.read_text())
    forged = hashlib.sha256(path.read_bytes()).hexdigest()
    for field in ("sha256", "hmac_sha256"):
        record = meta["trusted_file"] | {field: forged}
        meta_path.write_text(json.dumps(meta | {"trusted_file": record}))
        with pytest.raises(ModelFileError, match=r"not signed by this installation's key"):
            load_pipeline(tmp_path)
    path.write_bytes(original)
    old = {"path": TRUSTED_FILE, "sha256": hashlib.sha256(original).hexdigest()}
    meta_path.write_text(json.dumps(meta | {"trusted_file": old}))  # saved before signing
    with pytest.raises(ModelFileError, match=r"saved before digit-recognizer signed .* retrain"):
        load_pipeline(tmp_path)
    meta_path.write_text(json.dumps(meta))
    key = Path(os.environ["XDG_DATA_HOME"]) / "digit-recognizer" / "skops.key"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "elsewhere"))  # another installation
    with pytest.raises(ModelFileError, match=r"no signing key, so .* written elsewhere"):
        load_pipeline(tmp_path)
    damaged = tmp_path / "elsewhere" / "digit-recognizer" / "skops.key"
    assert not damaged.parent.exists()  # a load makes no key (it had, then refused anyway)
    save_pipeline(tmp_path / "here", fitted["random-forest"], "random-forest", {})
    with pytest.raises(ModelFileError, match=r"written elsewhere, or edited"):
        load_pipeline(tmp_path)
    for text in ("", key.read_text()[:10], "not hex"):  # an empty key would sign for anyone
        damaged.write_text(text)
        with pytest.raises(ModelFileError, match=r"signing key is damaged .* delete it"):
            load_pipeline(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", "relative/folder")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ModelFileError, match=r"written elsewhere"):
        load_pipeline(tmp_path)
    assert not (tmp_path / "home" / ".local" / "share" / "digit-recognizer").exists()


@pytest.mark.parametrize("damage", [np.nan, np.inf])
def test_a_pipeline_holding_nan_is_refused(tmp_path, fitted, damage):
    """NaN coefficients had predicted digit 0 for every image, with exit status 0."""
    save_pipeline(tmp_path, fitted["logreg"], "logreg", {})
    arrays = load_file(str(tmp_path / "model.safetensors"))
    largest = max(arrays, key=lambda name: arrays[name].size)
    save_file(arrays | {largest: np.full_like(arrays[largest], damage)},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    with pytest.raises(ModelFileError, match=r"model\.safetensors: holds NaN or infinite"):
        load_pipeline(tmp_path)


def test_model_files_made_elsewhere_are_refused_in_one_line(tmp_path, fitted, small_train):
    """model.json is input: a trusted file elsewhere (/dev/zero would be read without end),
    JSON nested past Python's stack, arrays whose shapes do not fit, labels other than 0-9."""
    save_pipeline(tmp_path / "forest", fitted["random-forest"], "random-forest", {})
    meta_path = tmp_path / "forest" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(
        json.dumps(meta | {"trusted_file": meta["trusted_file"] | {"path": "/dev/zero"}})
    )
    with pytest.raises(ModelFileError, match=r"trusted_file must be model\.trusted\.skops"):
        load_pipeline(tmp_path / "forest")
    meta_path.write_text('{"model": "knn", "pipeline": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_pipeline(tmp_path / "forest")
    save_pipeline(tmp_path / "logreg", fitted["logreg"], "logreg", {})
    arrays = load_file(str(tmp_path / "logreg" / "model.safetensors"))
    widest = max(arrays, key=lambda key: arrays[key].size)
    arrays[widest] = arrays[widest][..., :-1].copy()  # one column cut off
    save_file(arrays, str(tmp_path / "logreg" / "model.safetensors"))
    with pytest.raises(ModelFileError, match="corrupt pipeline"):
        load_pipeline(tmp_path / "logreg")
    one_to_ten = build("logreg").fit(small_train.images[:500], small_train.labels[:500] + 1)
    save_pipeline(tmp_path / "shifted", one_to_ten, "logreg", {})
    with pytest.raises(ModelFileError, match="not a fitted pipeline of the digits 0-9"):
        load_pipeline(tmp_path / "shifted")  # its columns would be read as digits 0-9


@pytest.mark.parametrize("n_rows, single_digit", [(60, None), (300, 5)])
def test_the_svm_calibrates_on_few_rows_and_on_a_digit_of_one_row(small_train, n_rows,
                                                                  single_digit):  # fmt: skip
    """Its 10 % holdout (StratifiedShuffleSplit) had refused fewer rows than ~91 (a holdout of
    fewer rows than digits) and a digit of one row: `digits compare` could not score it."""
    images, labels = small_train.images[:n_rows], small_train.labels[:n_rows]
    if single_digit is not None:
        keep = (labels != single_digit) | (np.cumsum(labels == single_digit) == 1)
        images, labels = images[keep], labels[keep]
    svm = build("svm").fit(images, labels)
    assert svm.predict_proba(images).shape == (len(labels), 10)
    (calibrated,) = svm.named_steps["classifier"].calibrated_classifiers_
    assert calibrated.estimator.classes_.tolist() == list(range(10))  # the single row fitted


def test_the_svm_holds_out_by_its_seed(small_train):
    """Its holdout had been drawn with random_state=0 whatever `--seed` said."""
    images, labels = small_train.images[:300], small_train.labels[:300]
    holdouts = [next(build_estimator("svm", seed=seed).named_steps["classifier"].cv
                     .split(images, labels))[1] for seed in (1, 1, 2)]  # fmt: skip
    np.testing.assert_array_equal(holdouts[0], holdouts[1])
    assert not np.array_equal(holdouts[1], holdouts[2])
    assert len(holdouts[0]) == 30 and set(labels[holdouts[0]]) == set(range(10))  # 10 %, by digit
    assert "cv=CalibrationHoldout(seed=2, test_size=0.1)" in repr(build_estimator("svm", seed=2))


def test_unfitted_knn_says_so():
    with pytest.raises(NotFittedError):
        TorchKNeighborsClassifier().predict(np.zeros((1, 784), np.float32))


def test_knn_refuses_no_queries_as_scikit_learn_does():
    """What predict_proba's batches rely on: at least one query row, else no batch to join."""
    knn = TorchKNeighborsClassifier().fit(np.eye(3, dtype=np.float32), [0, 1, 2])
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\)"):
        knn.predict_proba(np.zeros((0, 3), np.float32))


def test_torch_knn_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    ours = TorchKNeighborsClassifier(n_neighbors=5, batch_size=16).fit(X, y)
    theirs = KNeighborsClassifier(5, weights="distance", algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(ours.predict(queries), theirs.predict(queries))
    np.testing.assert_allclose(ours.predict_proba(queries), theirs.predict_proba(queries),
                               atol=1e-4)  # fmt: skip


def test_torch_knn_reads_an_image_alike_alone_or_in_a_batch():
    """Distances from the expansion |a|^2 - 2 a.b + |b|^2 rounded with the batch: a stored row's
    probabilities moved by up to 0.024 between alone and amid others (features far from the
    origin, as a digit's PCA features are)."""
    rng = np.random.default_rng(0)
    X, y = (rng.normal(size=(300, 40)) + 10).astype(np.float32), rng.integers(0, 10, 300)
    knn = TorchKNeighborsClassifier().fit(X, y)
    alone = np.concatenate([knn.predict_proba(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(knn.predict_proba(X), alone, atol=1e-5)


def test_deskew_straightens_a_slanted_stroke():
    image = np.zeros((1, 28, 28), np.uint8)
    for row in range(6, 22):
        image[0, row, 8 + (row - 6) // 2 : 11 + (row - 6) // 2] = 255  # leaning right
    straight = deskew_images(image)[0]
    columns = [np.average(np.arange(28), weights=r) for r in straight if r.sum() > 1]
    assert np.ptp(columns) < 1.5  # was 8 columns of drift
    rows, cols = np.indices(straight.shape)  # and centred by mass on pixel 14, as MNIST's are
    centre = np.average(rows, weights=straight), np.average(cols, weights=straight)
    np.testing.assert_allclose(centre, (14, 14), atol=0.05)


def test_bad_image_shapes_and_values_say_how_to_fix():
    with pytest.raises(ValueError, match=r"got shape \(2, 10\); reshape with X.reshape"):
        check_images(np.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"integers in 0\.\.255, got dtype float64"):
        check_images(np.full((1, 784), 0.5))
    assert check_images(np.zeros((2, 784), np.int64)).shape == (2, 28, 28)


def test_the_signing_key_is_made_readable_by_its_owner_alone(tmp_path, monkeypatch):
    """Whoever can read the key can sign a forest this installation then loads."""
    from digit_recognizer.models import classical

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    classical._signing_key()
    key = tmp_path / "digit-recognizer" / "skops.key"
    assert key.stat().st_mode & 0o077 == 0, oct(key.stat().st_mode)


def test_a_pipeline_its_loader_would_refuse_is_not_saved(tmp_path, small_train):
    """One holding types outside the allow-list (gradient boosting's TreePredictor) had been
    written as a signed skops file, then refused by load_pipeline: saved, yet no model."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline

    images, labels = small_train.images[:300].reshape(300, -1), small_train.labels[:300]
    pipeline = make_pipeline(HistGradientBoostingClassifier(max_iter=2)).fit(images, labels)
    with pytest.raises(
        ConfigError,
        match=r"^boosted: its pipeline holds types that load_pipeline "
        r"does not trust \(sklearn\.ensemble\._hist_gradient_boosting",
    ):
        save_pipeline(tmp_path, pipeline, "boosted", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("before", "after"), [("knn", "logreg"), ("random-forest", "random-forest")]
)
def test_a_pipelines_files_are_replaced_together(tmp_path, fitted, small_test, monkeypatch, before,
                                                 after):  # fmt: skip
    """Written one after the other, a full disk at model.json had left the new model's weights
    beside the older model's model.json: a 'corrupt pipeline' from then on, or a forest 'not
    signed by this installation's key', the model saved before lost."""
    save_pipeline(tmp_path, fitted[before], before, {})
    earlier = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    disk_full_at(monkeypatch, ".model.json.")  # its temporary file
    refitted = build(after).fit(small_test.images, small_test.labels)
    with pytest.raises(OutputError, match=r"model\.json: cannot be written: no space left"):
        save_pipeline(tmp_path, refitted, after, {})
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier
    assert load_pipeline(tmp_path)[1]["model"] == before


# Each builder setting (what `digits tune` and `build_estimator` set) and where in the pipeline it
# must land (the SVM's seed: test_the_svm_holds_out_by_its_seed).
BUILDER_SETTINGS = {
    "logreg": {"C": ("classifier__C", 0.3), "n_components": ("pca__n_components", 20),
               "deskew": ("pixels__deskew", False)},
    "knn": {"n_neighbors": ("classifier__n_neighbors", 7),
            "n_components": ("pca__n_components", 20), "deskew": ("pixels__deskew", False)},
    "svm": {"C": ("classifier__estimator__C", 3.0), "gamma": ("classifier__estimator__gamma", 0.02),
            "n_components": ("pca__n_components", 20), "deskew": ("pixels__deskew", False)},
    "random-forest": {"n_estimators": ("classifier__n_estimators", 7),
                      "max_samples": ("classifier__max_samples", 0.25),
                      "deskew": ("pixels__deskew", False), "seed": ("classifier__random_state", 5)},
}  # fmt: skip


@pytest.mark.parametrize("name", available("classical"))
def test_every_classical_builder_setting_reaches_its_step(name):
    settings = BUILDER_SETTINGS[name]
    params = build(name, **{key: value for key, (_, value) in settings.items()}).get_params()
    for key, (where, value) in settings.items():
        assert params[where] == value, key


def test_digit_pixels_scale_to_0_1_and_deskew_only_when_asked(small_test):
    images = small_test.images[:8]
    plain = DigitPixels(deskew=False).fit(images).transform(images)
    np.testing.assert_array_equal(plain, images.reshape(8, 784).astype(np.float32) / 255)
    deskewed = DigitPixels().fit(images).transform(images)
    np.testing.assert_array_equal(deskewed, deskew_images(images).reshape(8, 784))
    none = DigitPixels().fit(images).transform(np.zeros((0, 28, 28), np.uint8))
    assert none.shape == (0, 784) and none.dtype == np.float32


def test_knn_with_fewer_stored_rows_than_neighbours_lets_them_all_vote():
    """A small cross-validation fold or `digits tune`'s n_neighbors can ask for more neighbours
    than rows: all of them vote, rather than topk failing."""
    knn = TorchKNeighborsClassifier(n_neighbors=4).fit(np.eye(3, dtype=np.float32), [0, 1, 1])
    probas = knn.predict_proba(np.array([[1, 0, 0]], np.float32))
    assert probas[0, 0] > 0.99 and probas[0, 1] > 0  # the exact match all but decides


def test_the_calibration_holdout_holds_out_its_test_size():
    labels = np.repeat(np.arange(10), 30)
    _, held = next(CalibrationHoldout(test_size=0.5).split(labels, labels))
    assert len(held) == 150 and set(np.bincount(labels[held])) == {15}


def test_the_parameter_count_includes_a_forests_nodes_and_a_calibrated_svms_support_vectors(
    fitted,
):
    """What `digits compare` and the API report as a classical model's size."""
    forest = fitted["random-forest"].named_steps["classifier"]
    nodes = sum(tree.tree_.node_count for tree in forest.estimators_)
    assert count_pipeline_parameters(fitted["random-forest"]) >= nodes
    (calibrated,) = fitted["svm"].named_steps["classifier"].calibrated_classifiers_
    assert count_pipeline_parameters(fitted["svm"]) >= calibrated.estimator.support_vectors_.size
