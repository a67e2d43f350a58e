"""Mistakes a user makes on the command line: each is one line naming the file or flag and the
fix, exit status 1, no traceback."""

from typer.testing import CliRunner

from digit_recognizer.cli import app

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
