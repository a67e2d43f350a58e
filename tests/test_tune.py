import json

from typer.testing import CliRunner

from digit_recognizer.cli import app
from digit_recognizer.config import load_config
from digit_recognizer.train import TrainConfig
from digit_recognizer.tune import TuneConfig, tune


def test_classical_study_resumes_from_its_sqlite_storage(tmp_path, small_csvs):
    config = TuneConfig(model="knn", trials=2, seed=0)
    first = tune(config, small_csvs["train"], tmp_path)
    assert first.n_trials == 2 and first.storage.startswith("sqlite:///")
    assert 0.8 < first.best_value <= 1 and set(first.best_params) == {"n_neighbors", "n_components"}
    second = tune(TuneConfig(model="knn", trials=1), small_csvs["train"], tmp_path)
    assert second.n_trials == 3  # the same study, grown
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["model"] == "knn" and (tmp_path / "optimization_history.png").exists()


def test_net_study_writes_a_config_that_train_accepts(tmp_path, small_csvs):
    result = CliRunner().invoke(app, ["tune", "--train", str(small_csvs["train"]), "--model",
        "mlp", "--trials", "2", "--epochs", "1", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 trials" in result.output
    config = load_config(TrainConfig, tmp_path / "best_config.toml")
    assert config.model == "mlp" and 0.02 <= config.lr <= 0.3
    assert (tmp_path / "intermediate_values.png").exists()
