import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from digit_recognizer.config import load_config
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.errors import ConfigError, ModelFileError, UnknownModelError
from digit_recognizer.estimator import (
    NetClassifier,
    build_estimator,
    count_parameters,
    load_estimator,
    save_estimator,
)
from digit_recognizer.fileio import locked_dir, locked_temporary_dir
from digit_recognizer.models import build
from digit_recognizer.models.storage import ENSEMBLE_FILE, read_meta, save_net
from digit_recognizer.train import TrainConfig, train

from .conftest import TINY_RECIPE, accuracy


def test_net_classifier_fits_predicts_and_round_trips(tmp_path, small_train, small_test):
    net = NetClassifier("mlp", **TINY_RECIPE, valid_size=0.1)
    net.fit(small_train.images.reshape(-1, 784), small_train.labels)  # flat pixels work too
    probas = net.predict_proba(small_test.images)
    assert probas.shape == (len(small_test), 10) and list(net.classes_) == list(range(10))
    assert accuracy(net.predict(small_test.images), small_test.labels) > 0.8
    assert net.score(small_test.images, small_test.labels) > 0.8
    assert len(net.history_) == TINY_RECIPE["epochs"] and count_parameters(net) > 100_000
    save_estimator(net, tmp_path)
    loaded = load_estimator(tmp_path)
    assert isinstance(loaded, NetClassifier) and loaded.epochs == TINY_RECIPE["epochs"]
    np.testing.assert_array_equal(loaded.predict_proba(small_test.images), probas)


def test_a_fit_killed_outright_leaves_its_scratch_folder_to_the_next_fit(
    tmp_path, small_train, monkeypatch
):
    """A fit without a run_dir trains in a temporary folder; one a kill left (its checkpoints)
    stayed in /tmp for good. Locked while it trains, it goes at the next fit once no process
    holds its lock; a live fit's stays."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = tmp_path / "digits-net.x1y2z3ab"
    killed.mkdir()
    (killed / ".lock").write_text("process 12345\n")  # its holder gone: the lock is free
    (killed / "checkpoint.pt").write_bytes(b"weights")
    with locked_dir(tmp_path / "digits-net.q9w8e7rt"):  # another fit's, training
        NetClassifier("mlp", **TINY_RECIPE, valid_size=0).fit(
            small_train.images, small_train.labels
        )
        assert [path.name for path in tmp_path.glob("digits-net.*")] == ["digits-net.q9w8e7rt"]


def test_a_live_fits_scratch_folder_is_not_taken_for_a_killed_ones(
    tmp_path, small_train, monkeypatch
):
    """A fit's scratch folder is locked while it trains: unlocked, another fit starting
    meanwhile (compare's next model, a second process) took it for a killed fit's and removed
    it, checkpoints and all, from under the training."""
    import tempfile

    from digit_recognizer import estimator as estimator_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_train = estimator_module.train
    seen = []

    def another_fit_starts_meanwhile(config, train_set, valid_set, run_dir):
        with locked_temporary_dir(estimator_module.SCRATCH_PREFIX):
            pass
        seen.append(run_dir.is_dir())
        return real_train(config, train_set, valid_set, run_dir)

    monkeypatch.setattr(estimator_module, "train", another_fit_starts_meanwhile)
    NetClassifier("mlp", **TINY_RECIPE, valid_size=0).fit(small_train.images, small_train.labels)
    assert seen == [True]


def test_net_classifier_follows_scikit_learn_conventions():
    net = NetClassifier("cnn", epochs=2)
    assert clone(net).get_params() == net.get_params()
    with pytest.raises(NotFittedError):
        net.predict(np.zeros((1, 28, 28), np.uint8))
    # Named as its parameters, not as the command line's flags ("--epochs must be >= 1").
    with pytest.raises(ConfigError, match=r"^NetClassifier: epochs must be >= 1"):
        NetClassifier("cnn", epochs=0).fit(np.zeros((4, 28, 28), np.uint8), np.arange(4))
    with pytest.raises(ConfigError, match=r"^NetClassifier: model 'knn' is not a net"):
        NetClassifier("knn").train_config()
    images = np.zeros((4, 28, 28), np.uint8)
    for labels in (np.array(["0", "1", "2", "3"]), np.array([0.0, 1.5, 2.0, 3.0])):
        with pytest.raises(ValueError, match="y must hold the digits 0-9 as integers"):
            net.fit(images, labels)  # refused before training, not cast
    with pytest.raises(ValueError, match=r"missing \(NaN\) or infinite labels"):
        net.fit(images, np.array([0.0, np.nan, 2.0, np.inf]))  # had read -9223372036854775808
    with pytest.raises(ValueError, match="one label per image: 3 labels for 4 images"):
        net.fit(images, np.arange(3))
    for labels, found in (
        (np.array([0, 1, 2, 10]), "0 to 10"),
        (np.array([-1, 1, 2, 3]), "-1 to 3"),
    ):
        with pytest.raises(
            ValueError, match=f"y must hold the digits 0-9, got labels from {found}"
        ):
            net.fit(images, labels)  # not a digit: refused, not trained on
    with pytest.raises(ValueError, match=r"4 images are too few, .* valid_size=0\.05 of them"):
        net.fit(images, np.arange(4))  # not the CLI's --valid-size, which it had named
    with pytest.raises(ValueError, match="fit needs at least one image"):
        net.fit(images[:0], labels[:0])


def test_net_classifier_sets_the_nets_widths_dropout_ema_and_amp(tmp_path, small_train):
    """widths, dropout, ema_decay and amp, which `digits train` sets by flag, had no parameter:
    a net of other widths, or one without bf16, could not be fitted from Python."""
    recipe = {"widths": (48, 24), "dropout": 0.3, "ema_decay": 0.9, "amp": False}
    net = NetClassifier("mlp", **recipe, epochs=1, batch_size=64, valid_size=0)
    assert clone(net).get_params() == net.get_params()
    assert {key: getattr(net.train_config(), key) for key in recipe} == recipe
    net.set_params(widths=(16,))
    with pytest.raises(ConfigError, match=r"^NetClassifier: dropout must be in \[0, 1\)"):
        clone(net).set_params(dropout=1.5).train_config()
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    net.fit(subset.images, subset.labels)
    assert [layer.out_features for layer in net.module_.modules()
            if isinstance(layer, torch.nn.Linear)] == [16, 10]  # fmt: skip
    assert {key: net.config_[key] for key in recipe} == recipe | {"widths": (16,)}
    save_estimator(net, tmp_path / "net")
    loaded = load_estimator(tmp_path / "net")
    assert clone(loaded).train_config() == net.train_config()


def test_net_classifier_sets_the_training_recipe_that_digits_train_does(
    tmp_path, small_train, monkeypatch
):
    """momentum, warmup, the schedules' decay settings, target_accuracy and the elastic, stroke
    and styles augmentations had no parameter: a net could not be fitted from Python with the
    recipe `digits train` sets by flag or config."""
    from digit_recognizer import estimator as estimator_module

    recipe = {"momentum": 0.8, "warmup": 0.3, "lr_decay": 0.7, "plateau_factor": 0.3,
              "plateau_patience": 2, "target_accuracy": 0.995, "elastic": 1.5, "stroke": 0.4,
              "styles": 0.2}  # fmt: skip
    # target_accuracy acts on validation accuracy: a validation set, a share of 160 rows.
    net = NetClassifier("mlp", **recipe, epochs=1, batch_size=64, valid_size=0.2,
                        run_dir=tmp_path / "run")  # fmt: skip
    assert clone(net).get_params() == net.get_params()
    real_train, trained_with = estimator_module.train, []

    def recording_train(config, train_set, valid_set, run_dir):
        trained_with.append(config)
        return real_train(config, train_set, valid_set, run_dir)

    monkeypatch.setattr(estimator_module, "train", recording_train)
    net.fit(small_train.images[:160], small_train.labels[:160])
    assert {key: getattr(trained_with[0], key) for key in recipe} == recipe
    assert {key: net.config_[key] for key in recipe} == recipe
    # A run loaded from its directory refits with the recipe it recorded.
    refit = clone(load_estimator(tmp_path / "run")).train_config()
    assert {key: getattr(refit, key) for key in recipe} == recipe
    with pytest.raises(ConfigError, match=r"^NetClassifier: styles must be in \[0, 1\], got -0.3"):
        clone(net).set_params(styles=-0.3).train_config()


def test_build_estimator_covers_every_kind(tmp_path, small_train, small_test):
    assert isinstance(build_estimator("seed-cnn", epochs=1), NetClassifier)
    knn = build_estimator("knn", n_neighbors=3)
    assert isinstance(knn, Pipeline) and knn.get_params()["classifier__n_neighbors"] == 3
    knn.fit(small_train.images, small_train.labels)
    save_estimator(knn, tmp_path, "knn", {"n_neighbors": 3})
    np.testing.assert_array_equal(load_estimator(tmp_path).predict(small_test.images),
                                  knn.predict(small_test.images))  # fmt: skip
    # A pipeline fitted on fewer digits is refused when saved, not when loaded as corrupt.
    few = small_train.labels < 5
    knn.fit(small_train.images[few], small_train.labels[few])
    with pytest.raises(ValueError, match="fitted on the digits 0-9, it was on"):
        save_estimator(knn, tmp_path / "few", "knn", {"n_neighbors": 3})
    # Saved under another model's name, it had loaded and predicted as that model.
    with pytest.raises(ValueError, match="'logreg' in a LogisticRegression: give its own"):
        save_estimator(knn, tmp_path / "named", "logreg")
    with pytest.raises(UnknownModelError, match="Did you mean 'knn'"):
        save_estimator(knn, tmp_path / "named", "KNN")
    with pytest.raises(ValueError, match="'mlp' is a net"):
        save_estimator(knn, tmp_path / "named", "mlp")
    with pytest.raises(ValueError, match="got a TorchKNeighborsClassifier: build_estimator"):
        save_estimator(knn[-1], tmp_path / "named", "knn")  # its last step alone, no pipeline
    assert not (tmp_path / "named").exists()
    # One that cannot read (N, 28, 28) digits had saved, then failed to load as "corrupt".
    flat = make_pipeline(StandardScaler(), LogisticRegression(max_iter=20)).fit(
        small_train.images.reshape(len(small_train), -1), small_train.labels)  # fmt: skip
    with pytest.raises(ValueError, match=r"does not read digits \(N, 28, 28\)"):
        save_estimator(flat, tmp_path / "flat", "logreg")
    # `compare --seed` and `tune --seed` seed the models that draw at random, not only splits.
    assert build_estimator("seed-cnn", seed=4).get_params()["seed"] == 4
    forest = build_estimator("random-forest", seed=4)
    assert forest.get_params()["classifier__random_state"] == 4
    assert isinstance(build_estimator("knn", seed=4), Pipeline)  # nothing random: no seed


def test_fit_never_trains_over_a_run_directory_that_holds_a_run(tiny_run):
    weights = (tiny_run / "model.safetensors").read_bytes()
    net = NetClassifier("cnn", epochs=1, run_dir=tiny_run)
    with pytest.raises(ConfigError, match="already holds a training run"):
        net.fit(np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10)
    assert (tiny_run / "model.safetensors").read_bytes() == weights
    # Nor does saving another estimator over it (its config, history, report would stay).
    with pytest.raises(ConfigError, match="holds a training run"):
        save_estimator(load_estimator(tiny_run), tiny_run)
    assert (tiny_run / "model.safetensors").read_bytes() == weights


def test_an_estimator_is_not_saved_over_an_ensemble(tmp_path, tiny_run):
    # Its model.json had made the ensemble directory a single model's: predict read it alone.
    shutil.copytree(tiny_run, tmp_path / "member-1")
    (tmp_path / ENSEMBLE_FILE).write_text('{"members": ["member-1"]}')
    with pytest.raises(
        ConfigError, match=r"holds a training run or an ensemble \(ensemble\.json\)"
    ):
        save_estimator(load_estimator(tiny_run), tmp_path)
    assert not (tmp_path / "model.json").exists()


def test_a_net_fitted_into_its_run_dir_saves_there(tmp_path, small_train):
    run_dir = tmp_path / "run"
    net = NetClassifier("cnn-tiny", epochs=1, valid_size=0, run_dir=run_dir)
    net.fit(small_train.images[:128], small_train.labels[:128])
    save_estimator(net, run_dir)  # its own run: the weights it trained, with its parameters
    assert load_estimator(run_dir).get_params()["epochs"] == 1


def test_a_digits_train_run_loads_with_its_recorded_recipe(tiny_run):
    """config_ is the run's config.toml, and a clone refits with the settings it takes."""
    recorded = load_config(TrainConfig, tiny_run / "config.toml")
    loaded = load_estimator(tiny_run)
    assert loaded.config_ == asdict(recorded)
    assert clone(loaded).train_config().batch_size == recorded.batch_size
    # ... and history_ its history.csv (it had been empty), as fit's would be.
    assert [row["epoch"] for row in loaded.history_] == [1, 2]
    assert all(isinstance(row["step"], int) for row in loaded.history_)  # as fit's rows


def test_a_damaged_history_leaves_history_empty_not_the_weights_unloaded(
    tmp_path, tiny_run, caplog
):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run_dir / "history.csv").write_text("epoch,step\n1\n")
    loaded = load_estimator(run_dir)
    assert loaded.history_ == [] and "history.csv: not a history written by training" in caplog.text
    assert loaded.predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)
    (run_dir / "history.csv").write_text("epoch,step\n" + "x" * 200_000 + ",1\n")  # csv's limit
    assert load_estimator(run_dir).history_ == []


@pytest.mark.parametrize("edit", [{"train_config": "x"}, {"estimator_params": {"nope": 1}},
                                  {"estimator_params": [1, 2]}])  # fmt: skip
def test_an_edited_model_json_fails_to_load_as_an_estimator_in_one_line(tmp_path, tiny_run, edit):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    meta = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps(meta | edit))
    with pytest.raises(ModelFileError, match=r"model\.json: not a net's settings as training"):
        load_estimator(run_dir)


def test_a_saved_estimator_names_the_net_it_trained(tmp_path, small_train):
    """model.json must describe the weights: "auto" as the net it chose, a run's widths as
    trained, so that what save_estimator writes loads again."""
    subset = DigitSet(small_train.images[:256], small_train.labels[:256])
    narrow = TrainConfig(**TINY_RECIPE | {"epochs": 1, "widths": (8, 16, 24)})
    train(narrow, subset, None, tmp_path / "narrow")
    auto = NetClassifier("auto", epochs=1, valid_size=0).fit(subset.images, subset.labels)
    for name, estimator in (("narrow", load_estimator(tmp_path / "narrow")), ("auto", auto)):
        save_estimator(estimator, tmp_path / f"{name}-again")
        weights = load_estimator(tmp_path / f"{name}-again").module_.state_dict()
        for key, value in estimator.module_.state_dict().items():
            assert torch.equal(weights[key], value.cpu()), key
    assert read_meta(tmp_path / "auto-again")["model"] == auto.config_["model"] != "auto"
    # And the digits it trained on, which `digits evaluate` names the unseen of: saved again, a
    # net had dropped them.
    for name in ("narrow", "auto"):
        counts = read_meta(tmp_path / f"{name}-again").get("train_class_counts")
        assert counts == np.bincount(subset.labels, minlength=10).tolist(), name


def test_a_net_predicts_on_the_device_and_with_the_amp_it_was_given(tiny_run, monkeypatch):
    """`amp` and `device` hold for predict too (the class says so): amp=False must predict in
    fp32, not in bf16 as prediction's default would."""
    from digit_recognizer import estimator as estimator_module

    real_from_models, used = estimator_module.Predictor.from_models, []

    def recording_from_models(models, config):
        used.append(config)
        return real_from_models(models, config)

    monkeypatch.setattr(estimator_module.Predictor, "from_models", recording_from_models)
    net = load_estimator(tiny_run).set_params(amp=False, device="cpu")
    net.predict(np.zeros((1, 28, 28), np.uint8))
    assert (used[0].amp, used[0].device) == (False, "cpu")
    load_estimator(tiny_run).predict(np.zeros((1, 28, 28), np.uint8))  # neither given
    assert (used[1].amp, used[1].device) == (True, "auto")


def test_a_net_saved_without_a_training_record_loads_as_its_model_json_describes(tmp_path):
    """A run directory holding only model.json and the weights (save_net's, no config.toml):
    its widths come from model.json, and saving it again keeps them, as the weights need."""
    save_net(tmp_path / "bare", build("cnn", widths=(8, 16, 24)), "cnn", {"widths": [8, 16, 24]})
    loaded = load_estimator(tmp_path / "bare")
    assert tuple(loaded.get_params()["widths"]) == (8, 16, 24)
    save_estimator(loaded, tmp_path / "again")
    assert read_meta(tmp_path / "again")["params"]["widths"] == [8, 16, 24]
    assert load_estimator(tmp_path / "again").predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)


def test_a_net_is_saved_into_its_own_run_dir_however_the_path_is_spelled(
    tmp_path, tiny_run, monkeypatch
):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    net = load_estimator(run_dir).set_params(run_dir="run")  # relative; saved to the absolute
    save_estimator(net, run_dir)
    assert load_estimator(run_dir).predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)


def test_an_unfitted_nets_parameters_are_not_counted():
    with pytest.raises(NotFittedError):
        count_parameters(NetClassifier("cnn"))
