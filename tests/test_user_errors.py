"""Mistakes a user makes on the command line: each is one line naming the file or flag and the
fix, exit status 1, no traceback."""

import json

from typer.testing import CliRunner

from digit_recognizer.cli import app
from digit_recognizer.models import build
from digit_recognizer.models.storage import save_net

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def test_augment_preview_out_under_a_file_names_the_file(tmp_path, small_csvs):
    """augment-preview --out under a regular file had said "cannot be written (File exists)",
    after the augmentations were drawn; other commands name the file in the way, up front."""
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("")
    out = in_the_way / "preview.png"
    result = invoke("augment-preview", small_csvs["train"], "--out", out)
    assert result.exit_code == 1
    assert (
        result.output == f"error: {out}: cannot be written: {in_the_way} is a file, not a folder\n"
    )


def test_augment_preview_out_a_folder_asks_for_a_files_path(tmp_path, small_csvs):
    """A folder as --out had been "cannot be written (Is a directory)", leaving the fix out."""
    result = invoke("augment-preview", small_csvs["train"], "--out", tmp_path)
    assert result.exit_code == 1
    assert (
        result.output
        == f"error: {tmp_path}: a folder, where a file is to be written; give a file's path\n"
    )


def test_tune_refuses_an_empty_storage(tmp_path, small_csvs):
    """tune --storage "" had been taken for OUT/study.db without OUT made: "unable to open
    database file", naming a database the user never gave."""
    result = invoke("tune", "--train", small_csvs["train"], "--model", "logreg", "--storage", "",
                    "--out", tmp_path / "tune")  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("error: --storage is empty; give an Optuna URL")
    assert list(tmp_path.iterdir()) == []


def test_predict_names_model_json_whose_params_its_net_refuses(tmp_path):
    """A model.json whose params the net's builder refuses (2 widths for 3 stages) had said
    "widths [1, 2]: ... give 3 widths", as if a flag were wrong, naming no file."""
    save_net(tmp_path, build("cnn-tiny"), "cnn-tiny", {})
    meta_path = tmp_path / "model.json"
    meta_path.write_text(
        json.dumps(json.loads(meta_path.read_text()) | {"params": {"widths": [1, 2]}})
    )
    csv = tmp_path / "test.csv"
    csv.write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["0"] * 784) + "\n")
    result = invoke("predict", tmp_path, csv, "--out", tmp_path / "submission.csv")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {meta_path}: cannot build 'cnn-tiny' from")
