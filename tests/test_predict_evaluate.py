import csv
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from digit_recognizer import evaluate as evaluate_module
from digit_recognizer import predict as predict_module
from digit_recognizer.cli import app, predict_config
from digit_recognizer.data import images as images_module
from digit_recognizer.data import shards as shards_module
from digit_recognizer.data import stream as stream_module
from digit_recognizer.data.images import (
    MIN_SETTLED_ROWS,
    MNIST_SLANT,
    conform_to_mnist,
    crosses_stem,
    faint_to_full_ink,
    ink_votes,
    sheared,
    slants,
)
from digit_recognizer.data.kaggle_csv import (
    DigitSet,
    read_kaggle_csv,
    read_submission,
    write_kaggle_csv,
    write_submission,
)
from digit_recognizer.data.shards import Manifest, Shard
from digit_recognizer.data.stream import ShardStream
from digit_recognizer.errors import DataError, ModelFileError, OutputError
from digit_recognizer.evaluate import (
    EVAL_FILES,
    compute_metrics,
    evaluate_run,
    per_class_cells,
    plot_learning_curves,
    read_metrics,
    score_submission,
    write_metrics,
    write_per_class_csv,
)
from digit_recognizer.fileio import sha256_file
from digit_recognizer.predict import (
    JUDGED_SAMPLE,
    PieceConformer,
    PredictConfig,
    Predictor,
    check_probabilities,
    conform_rows,
    file_shear,
    judged_rows,
    orientation_evidence,
    predict_csv,
    predict_distributed,
    predict_images,
    predict_source,
    predict_stream,
    reads_crossing,
    reads_stretched,
    reads_transposed,
    slant_evidence,
    stretch_evidence,
    transposed,
    warn_conformed,
)

from .conftest import accuracy
from .test_images import (
    CONTINENTAL_ONE,
    SEVEN,
    SEVENS_BAR,
    drawn_digit,
    frame_filling,
    frame_hugging_zero,
    semeion_like,
)


def test_probabilities_are_distributions(tiny_run, small_test):
    probas = Predictor.load([tiny_run]).predict_proba(small_test.images[:50])
    assert probas.shape == (50, 10) and probas.dtype == np.float32
    np.testing.assert_allclose(probas.sum(axis=1), 1, atol=1e-5)


def test_a_run_folder_named_in_latin_1_loads(tmp_path, tiny_run, small_test):
    """safetensors' load_file refuses a path that is not UTF-8: a run trained into such a
    folder could not be loaded, its report not written, and it blamed the file."""
    run_dir = tmp_path / os.fsdecode(b"r\xe4n")
    shutil.copytree(tiny_run, run_dir)
    images = small_test.images[:20]
    np.testing.assert_array_equal(Predictor.load([run_dir]).predict(images),
                                  Predictor.load([tiny_run]).predict(images))  # fmt: skip


def test_predictor_takes_rows_and_refuses_digits_scaled_to_0_1(tiny_run, small_test):
    """A notebook's X / 255 (or a binarised X) would otherwise be read as near-black digits
    and misread without a word."""
    predictor = Predictor.load([tiny_run], device="cpu")
    images = small_test.images[:20]
    labels = predictor.predict(images)
    np.testing.assert_array_equal(predictor.predict(images.reshape(20, 784)), labels)
    np.testing.assert_array_equal(predictor.predict(images.astype(np.float64)), labels)
    binarised = images > 128
    for scaled in (images / 255, binarised.astype(np.int64), binarised.astype(np.uint8), binarised):
        with pytest.raises(ValueError, match=r"look scaled: pass \(X \* 255\)"):
            predictor.predict(scaled)
    uci = (images.astype(np.int64) * 17 // 256).astype(np.uint8)  # UCI's 0-16 scale
    with pytest.raises(ValueError, match=r"at most 16, .* pass \(X \* \(255 / 16\)\)"):
        predictor.predict(uci)
    fixed = (uci * (255 / 16)).round().astype(np.uint8)  # the fix it gives, as given
    assert (predictor.predict(fixed) == labels).mean() > 0.8
    # One run may be given alone; none at all is no ensemble (the mean of no model is NaN).
    np.testing.assert_array_equal(Predictor.load(tiny_run).predict(images), labels)
    with pytest.raises(ModelFileError, match="no run directory given"):
        Predictor.load([])


def test_tta_and_ensemble_average_and_stay_accurate(tmp_path, tiny_run, small_train, small_test):
    images, labels = small_test.images[300:], small_test.labels[300:]
    predictor = Predictor.load([tiny_run])
    plain = predictor.predict_proba(images)
    with_tta = Predictor.load([tiny_run], PredictConfig(tta=True)).predict_proba(images)
    assert not np.allclose(plain, with_tta)
    assert accuracy(with_tta.argmax(1), labels) > 0.85
    # TTA is the mean of the shifted views' distributions, each view's borders left blank.
    views = [np.zeros_like(images) for _ in range(5)]
    views[0][:] = images
    views[1][:, 1:], views[2][:, :-1] = images[:, :-1], images[:, 1:]  # down, up a row
    views[3][:, :, 1:], views[4][:, :, :-1] = images[:, :, :-1], images[:, :, 1:]  # right, left
    by_hand = np.mean([predictor.predict_proba(view) for view in views], axis=0)
    np.testing.assert_allclose(with_tta, by_hand, atol=1e-5)
    np.testing.assert_allclose(with_tta.sum(axis=1), 1, atol=1e-5)
    twin = shutil.copytree(tiny_run, tmp_path / "twin")  # the same run twice is refused
    twice = Predictor.load([tiny_run, twin]).predict_proba(images)
    np.testing.assert_allclose(twice, plain, atol=1e-6)
    # Two different models, with TTA: the mean of each one's own TTA, neither one alone.
    from digit_recognizer.estimator import build_estimator, save_estimator

    logreg = build_estimator("logreg").fit(small_train.images[:1000], small_train.labels[:1000])
    save_estimator(logreg, tmp_path, name="logreg")
    few, net = images[:100], with_tta[:100]
    other = Predictor.load([tmp_path], PredictConfig(tta=True)).predict_proba(few)
    pair = Predictor.load([tiny_run, tmp_path], PredictConfig(tta=True)).predict_proba(few)
    np.testing.assert_allclose(pair, (net + other) / 2, atol=1e-5)
    assert not np.allclose(pair, net, atol=1e-3) and not np.allclose(pair, other, atol=1e-3)


def test_submission_is_kaggle_format(tmp_path, tiny_run, small_csvs, caplog):
    out = tmp_path / "submission.csv"
    labels = predict_csv([tiny_run], small_csvs["test"], out)
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 1001
    assert lines[1] == f"1,{labels[0]}" and lines[-1] == f"1000,{labels[-1]}"
    np.testing.assert_array_equal(read_submission(out), labels)
    assert score_submission(small_csvs["solution"], out) > 0.85
    assert "label column" not in caplog.text
    # A labelled file is predicted too, its labels ignored, and the user told so.
    with caplog.at_level("WARNING"):
        predict_csv([tiny_run], small_csvs["train"], tmp_path / "train-labels.csv")
    assert "has a label column, which prediction ignores" in caplog.text


def test_digits_from_another_layout_are_conformed_before_prediction(
    tmp_path, tiny_run, small_test, caplog
):
    """Frame-filling digits (another collection's layout) in a CSV: predicted as accurately as
    MNIST's own once conformed, far worse as they are (--as-is)."""
    images, labels = small_test.images[:300], small_test.labels[:300]
    foreign_csv = tmp_path / "foreign.csv"
    write_kaggle_csv(foreign_csv, np.stack([frame_filling(image) for image in images]))
    with caplog.at_level("WARNING"):
        conformed = predict_csv([tiny_run], foreign_csv, tmp_path / "a.csv")
    assert "300 of 300 digits were not laid out as MNIST's" in caplog.text
    as_is = predict_csv([tiny_run], foreign_csv, tmp_path / "b.csv", PredictConfig(conform=False))
    original = Predictor.load([tiny_run]).predict(images)
    assert accuracy(conformed, labels) > accuracy(original, labels) - 0.03
    assert accuracy(as_is, labels) < accuracy(conformed, labels) - 0.05
    streamed = tmp_path / "streamed.csv"
    predict_stream([tiny_run], foreign_csv, streamed)
    np.testing.assert_array_equal(read_submission(streamed), conformed)


def test_digits_stored_transposed_are_read_transposed(
    tmp_path, tiny_run, small_test, caplog, monkeypatch
):
    """EMNIST's CSVs store their digits transposed. MNIST's layout check cannot tell (a
    transposed digit is as well centred); the model can, and reads them as MNIST's own."""
    images = small_test.images[:300]
    transposed_csv, original_csv = tmp_path / "transposed.csv", tmp_path / "original.csv"
    write_kaggle_csv(transposed_csv, images.transpose(0, 2, 1))
    write_kaggle_csv(original_csv, images)
    with caplog.at_level("WARNING"):
        original = predict_csv([tiny_run], original_csv, tmp_path / "a.csv")
        assert "transposed" not in caplog.text
        read = predict_csv([tiny_run], transposed_csv, tmp_path / "b.csv")
    assert "read as digits only transposed" in caplog.text
    np.testing.assert_array_equal(read, original)
    streamed = tmp_path / "streamed.csv"
    predict_stream([tiny_run], transposed_csv, streamed)
    np.testing.assert_array_equal(read_submission(streamed), original)
    # Judged once for the file: a last piece of 10 rows, too few to judge alone, is transposed.
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 145)
    predict_stream([tiny_run], transposed_csv, streamed)
    np.testing.assert_array_equal(read_submission(streamed), original)
    as_is = predict_csv(
        [tiny_run], transposed_csv, tmp_path / "c.csv", PredictConfig(conform=False)
    )
    assert accuracy(as_is, small_test.labels[:300]) < 0.5


def test_digits_stretched_to_fill_their_frame_are_read_at_the_width_read_most_surely(
    tmp_path, tiny_run, small_test, caplog, monkeypatch
):
    """Semeion stretches each digit to fill its frame both ways, a 1 as wide as a 0 (read as 7
    or 4). Each tried at its own width and at MNIST's usual ones (NARROWINGS), at the width the
    model reads most surely, Semeion's errors fell from 135 and 110 to 77 and 82 (two default
    models of replica 0). The file is judged on its first piece, whole, streamed or explained."""
    images, labels = small_test.images[:300], small_test.labels[:300]
    write_kaggle_csv(tmp_path / "mnist.csv", images)
    write_kaggle_csv(
        tmp_path / "stretched.csv", np.stack([semeion_like(image) for image in images])
    )
    with caplog.at_level("WARNING"):
        predict_csv([tiny_run], tmp_path / "mnist.csv", tmp_path / "mnist-submission.csv")
        assert "stretched" not in caplog.text
        read = predict_csv([tiny_run], tmp_path / "stretched.csv", tmp_path / "a.csv")
    assert "the digits fill their frame both ways, stretched to it as Semeion's are" in caplog.text
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 145)  # a last piece of 10 rows
    predict_stream([tiny_run], tmp_path / "stretched.csv", tmp_path / "streamed.csv")
    np.testing.assert_array_equal(read_submission(tmp_path / "streamed.csv"), read)
    rows = read_kaggle_csv(tmp_path / "stretched.csv").images
    judge = Predictor.load([tiny_run]).layout_judge
    conformed = conform_rows(rows, PredictConfig(), "stretched.csv", judge)
    row = predict_module.conform_row(rows, rows[7], 7, PredictConfig(), "stretched.csv", judge)
    np.testing.assert_array_equal(row, conformed[7])
    monkeypatch.setattr(predict_module, "STRETCHED_SHARE", 1.01)  # never judged stretched
    as_stretched = predict_csv([tiny_run], tmp_path / "stretched.csv", tmp_path / "b.csv")
    assert accuracy(read, labels) >= accuracy(as_stretched, labels) + 0.03  # 0.90 against 0.86


def test_a_file_whose_digits_lean_far_from_mnists_is_sheared_to_its_slant(
    tmp_path, tiny_run, small_test, caplog, monkeypatch
):
    """ARDIS's Swedish clerks lean forward at -0.50, MNIST's writers at -0.11: sheared to
    MNIST's slant, the two default models of replica 0 misread 99 and 101 of ARDIS's 7,600
    digits, 132 and 145 as written. The file is judged on its first piece, whole, streamed or
    explained; MNIST's own rows and --as-is are left as they are."""
    images, labels = small_test.images[:300], small_test.labels[:300]
    write_kaggle_csv(tmp_path / "leaning.csv", sheared(images, 0.6))  # forward, past ARDIS's
    rows = read_kaggle_csv(tmp_path / "leaning.csv").images
    # Pieces as streamed, for both: the shear comes from the first piece's mean slant, which
    # another piece size would measure on other rows, as it would a little differently.
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 145)  # a last piece of 10 rows
    with caplog.at_level("WARNING"):
        read = predict_csv([tiny_run], tmp_path / "leaning.csv", tmp_path / "a.csv")
    told = re.search(r"leaning.csv: the digits lean (\d+) degrees further forward than "
                     r"MNIST's writers' and were sheared to their slant; --as-is predicts them "
                     r"unchanged", caplog.text)  # fmt: skip
    assert told is not None and 20 <= int(told[1]) <= 30, caplog.text
    judge = Predictor.load([tiny_run]).layout_judge
    conformed = conform_rows(rows, PredictConfig(), "leaning.csv", judge)
    assert abs(slants(conformed).mean() - MNIST_SLANT) < 0.05
    predict_stream([tiny_run], tmp_path / "leaning.csv", tmp_path / "streamed.csv")
    np.testing.assert_array_equal(read_submission(tmp_path / "streamed.csv"), read)
    row = predict_module.conform_row(rows, rows[7], 7, PredictConfig(), "leaning.csv", judge)
    np.testing.assert_array_equal(row, conform_rows(rows, PredictConfig(), "l.csv", judge)[7])
    as_written = conform_rows(rows, PredictConfig(conform=False), "leaning.csv", judge)
    np.testing.assert_array_equal(as_written, rows)
    np.testing.assert_array_equal(conform_rows(images, PredictConfig(), "mnist.csv", judge), images)
    monkeypatch.setattr(predict_module, "SLANT_TOLERANCE", np.inf)  # never judged leaning
    leaning = predict_csv([tiny_run], tmp_path / "leaning.csv", tmp_path / "b.csv")
    assert accuracy(read, labels) >= accuracy(leaning, labels) + 0.01  # 0.96 against 0.95


def test_a_file_leans_past_a_quarter_from_mnists_slant_of_sixteen_digits_or_more(mnist):
    """MNIST's own writer groups, its test set's Census employees and students (-0.01, -0.18),
    are within the tolerance; blank rows are no digits."""
    for group in (mnist.images[60000:65000], mnist.images[65000:]):
        assert file_shear(slant_evidence(group)) == 0
    blank = np.zeros((5, 28, 28), np.uint8)
    n_digits, _ = slant_evidence(np.concatenate([mnist.images[:40], blank]))
    assert n_digits == 40
    tolerance = predict_module.SLANT_TOLERANCE
    forward = MNIST_SLANT - tolerance - 0.01
    assert file_shear(np.array([16, 16 * forward])) == pytest.approx(-tolerance - 0.01)
    assert file_shear(np.array([15, 15 * forward])) == 0
    assert file_shear(np.array([16, 16 * (MNIST_SLANT + tolerance + 0.01)])) > 0
    assert file_shear(np.array([16, 16 * (MNIST_SLANT + tolerance - 0.01)])) == 0


def test_a_stretch_takes_nine_in_ten_digits_filling_the_box_of_sixteen_or_more(small_test):
    stretched, _ = conform_to_mnist(
        np.stack([semeion_like(image) for image in small_test.images[:40]])
    )
    blank = np.zeros((5, 28, 28), np.uint8)
    n_digits, n_filling = stretch_evidence(np.concatenate([stretched, blank]))
    assert n_digits == 40 and n_filling >= 36  # blank rows are no digits
    assert not reads_stretched(stretch_evidence(small_test.images[:300]))  # MNIST's: a fifth
    assert reads_stretched(np.array([16, 15])) and not reads_stretched(np.array([15, 15]))
    assert reads_stretched(np.array([100, 90])) and not reads_stretched(np.array([100, 89]))


def test_a_file_is_judged_on_its_first_piece_whole_streamed_and_explained(
    tmp_path, tiny_run, small_test, caplog, monkeypatch
):
    """A file whose first piece is stored transposed and the rest not: read whole, its
    orientation had been judged on rows spread through it (upright), streamed on its first
    piece (transposed), so the same file got two submissions. Both judge the first piece, and
    so does explain's conform_row."""
    images = small_test.images[:300]
    rows = np.concatenate([transposed(images[:64]), images[64:]])
    write_kaggle_csv(tmp_path / "mixed.csv", rows)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 64)
    with caplog.at_level("WARNING"):
        whole = predict_csv([tiny_run], tmp_path / "mixed.csv", tmp_path / "whole.csv")
    assert "read as digits only transposed" in caplog.text
    predict_stream([tiny_run], tmp_path / "mixed.csv", tmp_path / "streamed.csv")
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    judge = Predictor.load([tiny_run]).layout_judge
    conformed = conform_rows(rows, PredictConfig(), "mixed.csv", judge)
    np.testing.assert_array_equal(conformed[100], images[100].T)
    row = predict_module.conform_row(rows, rows[100], 100, PredictConfig(), "mixed.csv", judge)
    np.testing.assert_array_equal(row, conformed[100])
    np.testing.assert_array_equal(Predictor.load([tiny_run]).predict(conformed), whole)


def test_a_files_pieces_are_conformed_labels_kept_and_told_of_once(small_test, caplog):
    """evaluate and report each conformed a file's pieces and warned of them, in lines of their
    own; PieceConformer.conformed and warn do it for both, as conform_rows does for rows in
    memory."""
    images, labels = small_test.images[:100].copy(), small_test.labels[:100]
    images[:30] = np.stack([frame_filling(image) for image in images[:30]])
    pieces = [DigitSet(images[rows], labels[rows]) for rows in (slice(0, 64), slice(64, 100))]
    with caplog.at_level("WARNING"):
        conformer = PieceConformer(PredictConfig())
        conformed = conformer.conformed(pieces)
        first = next(conformed)
        rest = list(conformed)
        assert not caplog.records  # said of the whole file once read (and reread), by warn
        conformer.warn("f.csv")
    assert [len(piece) for piece in (first, *rest)] == [64, 36]
    np.testing.assert_array_equal(np.concatenate([first.labels, rest[0].labels]), labels)
    told = [record.getMessage() for record in caplog.records]
    assert len(told) == 1 and told[0].startswith("f.csv: 30 of 100 digits were not laid out")
    caplog.clear()
    with caplog.at_level("WARNING"):
        in_memory = conform_rows(images, PredictConfig(), "f.csv")
    assert [record.getMessage() for record in caplog.records] == told
    np.testing.assert_array_equal(np.concatenate([first.images, rest[0].images]), in_memory)


def test_one_row_is_judged_on_the_same_conformed_rows_as_its_file(small_test):
    """explain's conform_row judges a file's orientation as conform_rows does, on its rows
    once conformed: judged as given, a file off MNIST's layout could be read transposed in
    one and not the other."""
    rows = np.stack([frame_filling(image) for image in small_test.images[:40]])
    seen = {"file": [], "row": []}

    def judge_seeing(name: str):
        def predict_proba(images: np.ndarray) -> np.ndarray:
            seen[name].append(images.copy())
            return np.full((len(images), 10), 0.1, np.float32)

        return predict_proba

    conform_rows(rows, PredictConfig(), "f.csv", judge_seeing("file"))
    predict_module.conform_row(rows, rows[3], 3, PredictConfig(), "f.csv", judge_seeing("row"))
    assert len(seen["row"]) == 2  # as given and transposed
    for row_images, file_images in zip(seen["row"], seen["file"], strict=True):
        np.testing.assert_array_equal(row_images, file_images)


def test_what_was_changed_is_told_in_words_that_agree_with_the_count(caplog):
    """explain's one row had been "1 of 1 digits were not laid out as MNIST's ... and were
    redone ...; --as-is predicts them unchanged"."""
    with caplog.at_level("WARNING"):
        warn_conformed("a.csv, row 4", 1, n_faint=1, n_redone=1)
        warn_conformed("b.csv", 2000, n_faint=1, n_redone=1500)
    assert [record.getMessage() for record in caplog.records] == [
        "a.csv, row 4: the digit was faint (pixels all under 32: binarised 0/1, or ink on a "
        "scale such as UCI's 0-16) and was scaled to MNIST's 0-255",
        "a.csv, row 4: the digit was not laid out as MNIST's (fitted to 20 x 20 pixels, centred "
        "by mass) and was redone as MNIST made its own; --as-is predicts it unchanged",
        "b.csv: 1 of 2,000 digits was faint (pixels all under 32: binarised 0/1, or ink on a "
        "scale such as UCI's 0-16) and was scaled to MNIST's 0-255",
        "b.csv: 1,500 of 2,000 digits were not laid out as MNIST's (fitted to 20 x 20 pixels, "
        "centred by mass) and were redone as MNIST made its own; --as-is predicts them "
        "unchanged",
    ]


def test_a_file_of_faint_pixels_is_read_with_full_ink(
    tmp_path, tiny_run, small_test, caplog, monkeypatch
):
    """Rows whose pixels stay under 32 (0/1 as Semeion's, 0-16 as UCI's) would be near-black
    digits read as one class; each is scaled to 255, row by row, so that the file is read alike
    whole and streamed (in pieces of STREAM_ROWS) wherever its faint rows are, and the log
    says how many."""
    images, labels = small_test.images[:600], small_test.labels[:600]
    mixed = images.copy()  # as MNIST's, then 0/1, then 0-16
    mixed[200:400] = images[200:400] > 128
    mixed[400:] = images[400:].astype(np.int64) * 17 // 256
    faint = tmp_path / "faint.csv"
    write_kaggle_csv(faint, mixed)
    with caplog.at_level("WARNING"):
        read = predict_csv([tiny_run], faint, tmp_path / "a.csv")
    assert "400 of 600 digits were faint (pixels all under 32" in caplog.text
    # Whatever faint rows a file holds, none reaches the net under full ink: a file of thin
    # binarised 1s and of a blank cell's noise is predicted, not refused as Predictor's faint
    # arrays are.
    thin_one = np.zeros((28, 28), np.uint8)
    thin_one[4:24, 14] = 1
    noise = np.random.default_rng(0).integers(0, 9, (28, 28)).astype(np.uint8)
    write_kaggle_csv(tmp_path / "thin.csv", np.stack([thin_one, noise]))
    assert len(predict_csv([tiny_run], tmp_path / "thin.csv", tmp_path / "c.csv")) == 2
    assert faint_to_full_ink(np.stack([thin_one]))[0].max() == 255
    assert accuracy(read, labels) > 0.85
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 256)  # the 0/1 rows in two pieces
    predict_stream([tiny_run], faint, tmp_path / "b.csv")
    np.testing.assert_array_equal(read_submission(tmp_path / "b.csv"), read)


def streamed_pieces_seen(monkeypatch, run: Path, csv: Path, out: Path) -> list[np.ndarray]:
    """The images predict_stream reads its nets' probabilities of, piece by piece."""
    seen = []
    read = predict_module.PieceConformer.read

    def read_seen(self, images, probas):
        seen.append(images)
        return read(self, images, probas)

    monkeypatch.setattr(predict_module.PieceConformer, "read", read_seen)
    predict_stream([run], csv, out)
    return seen


def test_a_files_ink_side_is_voted_once_for_all_its_pieces(
    tmp_path, tiny_run, small_test, monkeypatch
):
    """A stretched 0 whose edges leave the ink's side in doubt takes its file's (data.images.
    conform_to_mnist); streamed, it had taken its piece's, and in a last piece too short to
    vote it was inverted where the whole file read it right."""
    rows = np.stack([semeion_like(image) for image in small_test.images[:35]]
                    + [frame_hugging_zero()])  # fmt: skip
    write_kaggle_csv(tmp_path / "stretched.csv", rows)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 16)  # the 0 in a last piece of 4 rows
    monkeypatch.setattr(predict_module, "STRETCHED_SHARE", 1.01)  # the ink's side alone
    seen = streamed_pieces_seen(monkeypatch, tiny_run, tmp_path / "stretched.csv",
                                tmp_path / "s.csv")  # fmt: skip
    assert len(seen[-1]) < MIN_SETTLED_ROWS  # too few rows to vote alone
    np.testing.assert_array_equal(np.concatenate(seen), conform_to_mnist(rows)[0])


def test_a_files_ink_side_is_voted_by_all_processes_together(
    tmp_path, tiny_run, small_test, monkeypatch
):
    """Under --nproc each process votes on its first piece and the votes are summed: a share of
    a few rows, too few to vote alone, takes the side the other processes' rows settle. Here
    another process's ten light rows are added as all_reduce would add them."""
    rows = np.stack([semeion_like(image) for image in small_test.images[:3]]
                    + [frame_hugging_zero()])  # fmt: skip
    write_kaggle_csv(tmp_path / "share.csv", rows)
    all_reduce = predict_module.all_reduce

    def with_another_process(tensor):
        if tensor.shape == (2,):  # the ink votes (light, dark)
            tensor = tensor + torch.tensor([10.0, 0.0], dtype=tensor.dtype)
        return all_reduce(tensor)

    monkeypatch.setattr(predict_module, "all_reduce", with_another_process)
    seen = streamed_pieces_seen(monkeypatch, tiny_run, tmp_path / "share.csv", tmp_path / "s.csv")
    together = conform_to_mnist(rows, np.add(ink_votes(rows), [10, 0]))[0]
    assert not np.array_equal(together, conform_to_mnist(rows)[0])  # else nothing to see
    np.testing.assert_array_equal(np.concatenate(seen), together)


def test_a_streamed_files_rows_are_each_sided_once(tmp_path, tiny_run, small_test, monkeypatch):
    """The first piece's votes come from the reading of its rows' ink's side that conforms
    them: read twice, it cost a second pass over the piece's rows off MNIST's layout."""
    rows = np.stack([semeion_like(image) for image in small_test.images[:24]])
    write_kaggle_csv(tmp_path / "stretched.csv", rows)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 16)
    sided = []
    row_ink_side = images_module._row_ink_side
    monkeypatch.setattr(images_module, "_row_ink_side",
                        lambda row: sided.append(row) or row_ink_side(row))  # fmt: skip
    predict_stream([tiny_run], tmp_path / "stretched.csv", tmp_path / "s.csv")
    assert len(sided) == len(rows)


def test_too_few_rows_for_one_process_are_judged_by_all_together(tiny_run, small_test):
    """Under --nproc each process reads a share of the rows; their orientation evidence is
    summed before the minimum of rows is applied, as one process judges the whole file."""
    judge = Predictor.load([tiny_run]).layout_judge
    rows = transposed(small_test.images[:20])
    whole = orientation_evidence(rows, judge)
    shares = orientation_evidence(rows[:10], judge) + orientation_evidence(rows[10:], judge)
    np.testing.assert_allclose(shares, whole, rtol=1e-5)
    assert reads_transposed(shares) and reads_transposed(whole)
    assert not reads_transposed(orientation_evidence(rows[:10], judge))  # too few alone


def test_rows_read_transposed_by_a_margin_on_average_not_in_all():
    """ORIENTATION_MARGIN is of each row's top probability: 256 rows read surer transposed by
    0.04 each on average are not transposed, by 0.4 each they are."""
    assert not reads_transposed(np.array([256, 200.0, 210.0], dtype=np.float32))
    assert reads_transposed(np.array([256, 100.0, 200.0], dtype=np.float32))
    # MIN_ORIENTATION_ROWS rows are enough, one fewer is not.
    assert reads_transposed(np.array([16, 4.0, 12.0], dtype=np.float32))
    assert not reads_transposed(np.array([15, 4.0, 12.0], dtype=np.float32))


def test_a_large_piece_is_judged_on_the_rows_it_samples(small_test):
    """A file's orientation is judged on JUDGED_SAMPLE rows spread through its first piece, and
    counted as those: counted as the piece's 1,000, 256 rows' sums could never clear the
    margin."""
    judged = []

    def surer_transposed(images: np.ndarray) -> np.ndarray:  # on its second call, transposed
        judged.append(len(images))
        probas = np.full((len(images), 10), 0.05, np.float32)
        probas[:, 0] = 0.9 if len(judged) % 2 == 0 else 0.2
        return probas

    conformer = PieceConformer(PredictConfig(), surer_transposed)
    conformer(small_test.images)
    assert judged == [JUDGED_SAMPLE] * 2 and conformer.is_transposed
    n_voting, sample = judged_rows(len(small_test.images))
    assert n_voting == 1000 and sample[0] == 0 and sample[-1] == 999 and len(sample) == 256


@pytest.mark.parametrize(("n_file_rows", "n_processes"), [(9000, 3), (30000, 2)])
def test_processes_sharing_a_file_judge_it_on_one_processs_rows(n_file_rows, n_processes):
    """Each of torchrun's processes judges the rows of the file's first piece that its own first
    piece holds (all, some or none): together, the rows one process judges, each once
    (tests/test_distributed.py conforms a file so)."""
    piece = stream_module.STREAM_ROWS
    one_process = judged_rows(piece)
    manifest = Manifest((Shard(Path("rows.csv"), n_file_rows, 0, None),), has_labels=False)
    shares = [ShardStream(manifest, piece, shuffle=False, rank=rank, world_size=n_processes)
              for rank in range(n_processes)]  # fmt: skip
    starts = [share.first_row for share in shares]
    voting, sampled = 0, []
    for first_row, end in zip(starts, [*starts[1:], n_file_rows], strict=True):
        n_voting, sample = judged_rows(min(end - first_row, piece), first_row, n_file_rows)
        voting += n_voting
        sampled.extend(sample + first_row)
    assert voting == one_process[0] == piece
    np.testing.assert_array_equal(sampled, one_process[1])


def test_an_empty_out_made_for_the_submission_is_written(tmp_path, small_csvs):
    """`--out "$(mktemp)"` makes the file before predicting: it is no other file to keep."""
    out = tmp_path / "made.csv"
    out.touch()
    predict_module.check_submission_path(out, small_csvs["test"])
    out.write_text("notes\n")
    with pytest.raises(OutputError, match="exists and is no submission"):
        predict_module.check_submission_path(out, small_csvs["test"])


def test_score_rejects_incomplete_submission(tmp_path, small_csvs):
    short = tmp_path / "short.csv"
    write_submission(short, np.zeros(999, dtype=np.int64))
    with pytest.raises(DataError, match=r"short\.csv"):
        score_submission(small_csvs["solution"], short)


def test_metrics_on_known_predictions():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    predicted = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 4])
    probas = np.eye(10, dtype=np.float32)[predicted]
    metrics = compute_metrics(labels, probas)
    assert metrics.accuracy == pytest.approx(11 / 12)
    assert metrics.confusion[9][4] == 1 and metrics.confusion[9][9] == 2
    assert metrics.per_class[9]["recall"] == pytest.approx(2 / 3)
    assert metrics.per_class[4]["precision"] == pytest.approx(1 / 2)
    # Macro F1 averages the classes' F1 (eight of 1, the 9's 0.8, the 4's 2/3), not the images'.
    assert metrics.macro_f1 == pytest.approx((8 + 0.8 + 2 / 3) / 10)
    # One-vs-rest AUC by hand: the 9s score 1, 1 and 0 against nine 0s (ties count half): 5/6;
    # the one 4 scores 1 against ten 0s and a 1: 10.5/11; every other digit 1.
    assert metrics.roc_auc_ovr == pytest.approx((8 + 5 / 6 + 10.5 / 11) / 10)
    # Without every digit among the labels there is no one-vs-rest AUC: None, still valid JSON.
    partial = compute_metrics(labels[labels != 7], probas[labels != 7])
    assert partial.roc_auc_ovr is None
    # ... and macro F1 averages over the digits present: a missing 7 is no F1 of 0 (it was).
    assert partial.macro_f1 == pytest.approx((7 + 0.8 + 2 / 3) / 9)
    assert partial.per_class[7]["support"] == 0 and isinstance(partial.per_class[7]["support"], int)
    # Shown (report, `digits evaluate`), a score of no images is n/a, not a 0 read as failure:
    # the 7, neither labelled nor predicted, has none; the 4's recall is of the one 4 labelled.
    cells = per_class_cells(partial)
    assert cells[7] == ("7", "n/a", "n/a", "n/a", "0")
    assert cells[4] == ("4", "0.5000", "1.0000", "0.6667", "1")
    never_predicted = compute_metrics([3, 3, 5], np.eye(10, dtype=np.float32)[[5, 5, 5]])
    assert per_class_cells(never_predicted)[3] == ("3", "n/a", "0.0000", "0.0000", "2")
    # A digit predicted but absent from the labels is present too: its F1 of 0 counts in the
    # mean, as in scikit-learn's f1_score (a 9 called a 7 in a set without 7s: 0.88, not 0.98).
    wrongly_seven = np.eye(10, dtype=np.float32)[[0, 1, 2, 3, 4, 5, 6, 8, 9, 9, 7]]
    no_sevens = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 9, 9])
    assert compute_metrics(no_sevens, wrongly_seven).macro_f1 == pytest.approx((8 + 0.8) / 10)
    with pytest.raises(ValueError, match=r"pass predict_proba's output, not predicted labels"):
        compute_metrics(labels, predicted)  # scikit-learn's order, labels for probabilities
    for n_columns in (9, 11):  # a model of other classes: no column of a digit, or one extra
        wrong_width = np.eye(n_columns, dtype=np.float32)[np.minimum(predicted, n_columns - 1)]
        with pytest.raises(
            ValueError, match=rf"of shape \(n_samples, 10\), got \(12, {n_columns}\)"
        ):
            compute_metrics(labels, wrong_width)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(partial.to_json(), parse_constant=refuse)["roc_auc_ovr"] is None


def test_metrics_take_whole_float_labels_and_refuse_labels_that_are_not_digits():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    probas = np.eye(10, dtype=np.float32)[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 4]]
    # np.loadtxt reads a CSV's labels as floats: the same figures (it had raised IndexError).
    assert compute_metrics(labels.astype(np.float64), probas) == compute_metrics(labels, probas)
    # A -1 had been scored as a second 9 in the macro F1 and left out of the confusion matrix.
    for wrong, found in ((-1, "-1 to 9"), (10, "0 to 10")):
        with pytest.raises(ValueError, match=f"labels must hold the digits 0-9, got .* {found}"):
            compute_metrics(np.append(labels[:-1], wrong), probas)
    with pytest.raises(ValueError, match="labels must hold one label per image: 11 labels for 12"):
        compute_metrics(labels[:-1], probas)


def test_an_evaluation_whose_folder_cannot_take_its_files_is_refused_before_it_predicts(
    tmp_path, tiny_run, small_csvs, monkeypatch
):
    """`digits evaluate RUN test.csv --out afile` (or a read-only run directory) had predicted
    every row, minutes of them with TTA, then failed as "cannot be written (File exists)"."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(predict_module.Predictor, "load", None)  # never reached
    with pytest.raises(OutputError, match=r"afile/eval_metrics\.json: cannot be written: .*afile "
                       "is a file, not a folder"):  # fmt: skip
        evaluate_run([tiny_run], small_csvs["test"], tmp_path / "afile", None,
                     small_csvs["solution"])  # fmt: skip


def test_a_metrics_file_that_is_json_but_no_object_is_named(tmp_path):
    """A list had ended the report in an AttributeError and train_job's merge in a TypeError."""
    (tmp_path / "metrics.json").write_text("[0.99]")
    with pytest.raises(ModelFileError, match=r"metrics\.json: not a run's metrics"):
        read_metrics(tmp_path)


def test_a_runs_later_figures_replace_its_earlier_ones_and_keep_the_rest(tmp_path):
    """A run scored again (train_job's test score after a resume) records the new score."""
    write_metrics(tmp_path, {"test_accuracy": 0.9, "train_csv": "train.csv"})
    write_metrics(tmp_path, {"test_accuracy": 0.95})
    assert read_metrics(tmp_path) == {"test_accuracy": 0.95, "train_csv": "train.csv"}
    write_metrics(tmp_path, {"test_accuracy": 0.97}, merge=False)
    assert read_metrics(tmp_path) == {"test_accuracy": 0.97}


def test_evaluate_run_writes_its_files(tmp_path, tiny_run, small_csvs, caplog):
    solution_labels = read_submission(small_csvs["solution"])

    labelled = tmp_path / "labelled.csv"
    write_kaggle_csv(labelled, read_kaggle_csv(small_csvs["test"]).images, solution_labels)
    metrics = evaluate_run([tiny_run], labelled, tmp_path)
    assert metrics.accuracy > 0.85 and metrics.n_samples == 1000
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved["accuracy"] == metrics.accuracy
    assert (tmp_path / "eval_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # Unlabelled rows are told of --solution, which labels them (the message had not said so).
    with pytest.raises(DataError, match=r"no label column; .*, or their labels with --solution"):
        evaluate_run([tiny_run], small_csvs["test"], tmp_path)
    # A replica's test.csv, labelled by its solution.csv: the same images, the same figures.
    solved = evaluate_run([tiny_run], small_csvs["test"], tmp_path / "s", None,
                          small_csvs["solution"])  # fmt: skip
    assert solved == metrics
    with pytest.raises(DataError, match="has a label column of its own; give it without --sol"):
        evaluate_run([tiny_run], labelled, tmp_path / "s", None, small_csvs["solution"])
    short = tmp_path / "short_solution.csv"
    short.write_text("".join(small_csvs["solution"].read_text().splitlines(True)[:-1]))
    with pytest.raises(DataError, match=str(short)):
        evaluate_run([tiny_run], small_csvs["test"], tmp_path / "s", None, short)
    assert "the file the run trained on" not in caplog.text
    # Scored on its own training file, a run is told so (it had scored 1.0 without a word).
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run_dir / "metrics.json").write_text(json.dumps({"train_sha256": sha256_file(labelled)}))
    evaluate_run([run_dir], labelled, tmp_path)
    assert f"{labelled} is the file {run_dir} trained on" in caplog.text
    (run_dir / "metrics.json").write_text("[1, 2]")  # damaged: no warning, and no stop either
    assert evaluate_run([run_dir], labelled, tmp_path).accuracy == metrics.accuracy


def test_a_csv_past_stream_file_bytes_streams_in_predict_and_evaluate(
    tmp_path, tiny_run, small_csvs, small_test, monkeypatch
):
    """`digits predict` and `evaluate` had read any one CSV whole: 3.0 GB of memory for a
    562 MB file of 308,000 rows. Past STREAM_FILE_BYTES it streams, as shards do, never read
    whole, with the same submission and the same scores."""
    labelled = tmp_path / "labelled.csv"
    write_kaggle_csv(labelled, small_test.images, small_test.labels)
    predict_csv([tiny_run], small_csvs["test"], tmp_path / "whole.csv")
    read_whole = evaluate_run([tiny_run], labelled, tmp_path / "whole")
    assert small_csvs["test"].stat().st_size > 1_000_000
    monkeypatch.setattr(shards_module, "STREAM_FILE_BYTES", 1_000_000)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 512)  # two pieces, of whole batches

    def refused(source):
        raise AssertionError(f"{source} was read whole")

    monkeypatch.setattr(shards_module, "read_kaggle_csv", refused)
    assert predict_source([tiny_run], small_csvs["test"], tmp_path / "streamed.csv") == 1000
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert evaluate_run([tiny_run], labelled, tmp_path / "streamed") == read_whole
    solved = evaluate_run([tiny_run], small_csvs["test"], tmp_path / "solved", None,
                          small_csvs["solution"])  # fmt: skip
    assert solved == read_whole


def test_an_evaluation_that_cannot_write_all_its_files_leaves_the_earlier_ones_as_they_were(
    tmp_path, tiny_run, small_csvs, small_train, monkeypatch
):
    """Written one after another, a full disk at the confusion matrix had left the new
    evaluation's eval_metrics.json and per-class CSV beside the earlier one's matrix."""
    evaluate_run([tiny_run], small_csvs["test"], tmp_path, None, small_csvs["solution"])
    earlier = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert sorted(earlier) == sorted(EVAL_FILES)
    other = tmp_path.parent / f"{tmp_path.name}-other.csv"
    write_kaggle_csv(other, small_train.images[:200], small_train.labels[:200])

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OutputError, match=r"eval_confusion_matrix\.png: cannot be written: no sp"):
        evaluate_run([tiny_run], other, tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier


def test_an_ensemble_put_together_by_hand_scored_on_its_members_training_file_is_told_so(
    tmp_path, small_csvs, caplog
):
    # Its ensemble.json alone, no metrics.json: its members' training file went unnoticed.
    ensemble = tmp_path / "ensemble"
    (ensemble / "member-1").mkdir(parents=True)
    (ensemble / "member-1" / "metrics.json").write_text(
        json.dumps({"train_sha256": sha256_file(small_csvs["train"])})
    )
    (ensemble / "ensemble.json").write_text('{"members": ["member-1"]}')
    evaluate_module.warn_if_trained_on([ensemble], small_csvs["train"])
    assert f"{small_csvs['train']} is the file {ensemble / 'member-1'} trained on" in caplog.text
    caplog.clear()
    (ensemble / "ensemble.json").write_text('{"members": []}')  # Predictor.load names it
    evaluate_module.warn_if_trained_on([ensemble], small_csvs["train"])
    assert "trained on" not in caplog.text
    # An ensemble trained as one (`--preset best`) records the file itself: it is named,
    # as given, rather than one of its members.
    (ensemble / "ensemble.json").write_text('{"members": ["member-1"]}')
    (ensemble / "metrics.json").write_text((ensemble / "member-1" / "metrics.json").read_text())
    evaluate_module.warn_if_trained_on([ensemble], small_csvs["train"])
    assert f"{small_csvs['train']} is the file {ensemble} trained on" in caplog.text


def test_classical_run_directories_predict_and_mix_with_nets(tmp_path, tiny_run, small_train,
                                                            small_test):  # fmt: skip
    from digit_recognizer.estimator import build_estimator, save_estimator

    pipeline = build_estimator("logreg").fit(small_train.images, small_train.labels)
    save_estimator(pipeline, tmp_path, name="logreg")
    images, labels = small_test.images[300:], small_test.labels[300:]
    classical = Predictor.load([tmp_path]).predict_proba(images)
    np.testing.assert_allclose(classical, pipeline.predict_proba(images), atol=1e-6)
    assert accuracy(classical.argmax(1), labels) > 0.8
    mixed = Predictor.load([tmp_path, tiny_run]).predict_proba(images)
    net = Predictor.load([tiny_run]).predict_proba(images)
    np.testing.assert_allclose(mixed, (classical + net) / 2, atol=1e-5)
    # No images (a filter that kept none): no rows, as of nets, not PCA's "0 sample(s)" error.
    assert Predictor.load([tmp_path]).predict_proba(images[:0]).shape == (0, 10)
    # Only nets judge whether a file is stored transposed: an SVM is surer of transposed digits.
    assert Predictor.load([tmp_path]).layout_judge is None
    assert Predictor.load([tmp_path, tiny_run]).layout_judge is None
    assert Predictor.load([tiny_run]).layout_judge is not None


def test_batch_norm_folding_follows_the_config(tiny_run):
    """Grad-CAM hooks the net's own convolutions and batch norms: with fuse_batch_norm=False
    they must stay, where the default folds each batch norm into the layer before it."""

    def n_batch_norms(config: PredictConfig) -> int:
        net = Predictor.load([tiny_run], config).models[0]
        return sum(isinstance(module, nn.BatchNorm2d) for module in net.modules())

    assert n_batch_norms(PredictConfig(fuse_batch_norm=False)) > 0
    assert n_batch_norms(PredictConfig()) == 0


def test_probabilities_not_numbers_for_some_images_alone_are_refused():
    """A net overflowing on a few images predicts digit 0 for them (argmax of NaN), unless
    refused: one row of NaN among numbers is as damaged as all."""
    probas = np.full((3, 10), 0.1, np.float32)
    assert check_probabilities(probas) is probas
    probas[1, 4] = np.nan
    with pytest.raises(ModelFileError, match="probabilities are not numbers"):
        check_probabilities(probas)
    probas[1, 4] = np.inf
    with pytest.raises(ModelFileError, match="probabilities are not numbers"):
        check_probabilities(probas)


def test_image_files_are_predicted_with_the_callers_settings(tmp_path, tiny_run, small_test):
    """predict_images takes a PredictConfig, as predict_csv does: TTA asked for applies to
    image files too."""
    path = tmp_path / "digit.png"
    Image.fromarray(255 - np.kron(small_test.images[0], np.ones((3, 3), np.uint8))).save(path)
    digit = images_module.load_image(path)[None]
    with_tta = PredictConfig(tta=True)
    expected = Predictor.load([tiny_run], with_tta).predict_proba(digit)[0]
    assert not np.allclose(expected, Predictor.load([tiny_run]).predict_proba(digit)[0])
    [result] = predict_images([tiny_run], [path], with_tta)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)


def test_read_only_images_predict_without_warnings():
    # torch warns once per process when it wraps a read-only array (what pandas' to_numpy and
    # memory-mapped files give), so the check runs in a process of its own.
    script = (
        "import numpy as np\n"
        "from digit_recognizer.models.registry import build\n"
        "from digit_recognizer.predict import PredictConfig, Predictor\n"
        "images = np.zeros((4, 28, 28), np.uint8)\n"
        "images.setflags(write=False)\n"
        "predictor = Predictor.from_models([build('cnn-tiny').eval()], PredictConfig(tta=True))\n"
        "assert predictor.predict(images).shape == (4,)\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_reversed_and_flipped_views_predict_as_copies_do(tiny_run, small_test):
    """torch.as_tensor refuses negative strides: X[::-1] or np.flip(X, 2) had crashed."""
    predictor = Predictor.load(tiny_run, device="cpu")
    images = small_test.images[:8]
    for view in (images[::-1], np.flip(images, 2), np.rot90(images, axes=(1, 2))):
        np.testing.assert_array_equal(predictor.predict(view), predictor.predict(view.copy()))


def test_per_class_csv_has_one_row_per_digit_with_its_scores(tmp_path):
    """eval_per_class.csv: a row per digit 0-9, in order, with that digit's own figures."""
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    predicted = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 4])
    metrics = compute_metrics(labels, np.eye(10, dtype=np.float32)[predicted])
    write_per_class_csv(metrics, tmp_path / "per_class.csv")
    with open(tmp_path / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["digit", "precision", "recall", "f1", "support"]
    assert [int(row["digit"]) for row in rows] == list(range(10))
    assert float(rows[9]["recall"]) == pytest.approx(2 / 3) and float(rows[9]["support"]) == 3
    assert float(rows[4]["precision"]) == pytest.approx(1 / 2)
    assert float(rows[4]["f1"]) == pytest.approx(2 / 3) and float(rows[0]["f1"]) == 1


def test_evaluate_conforms_rows_of_another_layout_by_default(
    tmp_path, tiny_run, small_test, caplog
):
    """`digits evaluate` without --as-is scores what `digits predict` would submit: the rows
    conformed to MNIST's layout, not the frame-filling digits as they are, and says so."""
    images = np.stack([frame_filling(image) for image in small_test.images[:120]])
    labels = small_test.labels[:120]
    labelled = tmp_path / "filled-labelled.csv"
    write_kaggle_csv(labelled, images, labels)
    predictor = Predictor.load([tiny_run])
    conformed = conform_rows(images, PredictConfig(), "", predictor.layout_judge)
    expected = accuracy(predictor.predict(conformed), labels)
    assert expected != accuracy(predictor.predict(images), labels)  # else it could not be seen
    assert evaluate_run([tiny_run], labelled, tmp_path).accuracy == pytest.approx(expected)
    assert f"{labelled}: 120 of 120 digits were not laid out as MNIST's" in caplog.text


def test_distributed_predict_hands_every_setting_on(tmp_path, tiny_run, small_csvs, monkeypatch):
    """`digits predict --nproc 2 --tta --as-is --device cpu` had each process predict without
    them, and a caller's batch size, amp and batch-norm folding were lost: every process must
    read the whole resolved config."""
    launched = []

    def fake_torchrun(nproc, module, args, config):  # run_torchrun writes it for --config
        launched.append((nproc, args, config))

    monkeypatch.setattr(predict_module, "run_torchrun", fake_torchrun)
    config = PredictConfig(tta=True, conform=False, device="cpu", batch_size=17, amp=False,
                           fuse_batch_norm=False, ddp_timeout_s=9)  # fmt: skip
    predict_distributed(2, [tiny_run], small_csvs["test"], tmp_path / "s.csv", config)
    predict_distributed(2, [tiny_run], small_csvs["test"], tmp_path / "s.csv")
    (nproc, args, received), (_, _, default) = launched
    assert nproc == 2 and args[args.index("--out") + 1] == str(tmp_path / "s.csv")
    assert received == config and default == PredictConfig()


def test_predict_and_evaluate_read_a_config_file_that_flags_override(tmp_path, tiny_run,
                                                                    small_csvs):  # fmt: skip
    toml = tmp_path / "predict.toml"
    toml.write_text('tta = true\nbatch_size = 33\ndevice = "cpu"\n')
    assert predict_config(toml, None, False, None) == PredictConfig(tta=True, batch_size=33,
                                                                    device="cpu")  # fmt: skip
    assert predict_config(toml, None, True, "auto").conform is False
    assert predict_config(None, None, False, None) == PredictConfig()
    toml.write_text("batch_sise = 33\n")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(tiny_run),
            str(small_csvs["test"]),
            "--config",
            str(toml),
            "--out",
            str(tmp_path / "s.csv"),
        ],
    )
    assert result.exit_code == 1 and "did you mean 'batch_size'?" in result.output


def test_predict_and_evaluate_take_batch_size_and_amp_flags_over_the_toml(
    tmp_path, small_csvs, monkeypatch
):
    """batch_size and amp had been set by a --config TOML alone: predict and evaluate take
    --batch-size and --amp/--no-amp, as train does, over the TOML's, refused in its words."""
    loaded = []

    def load(run_dirs, config, device=None):
        loaded.append((config.batch_size, config.amp))
        raise ModelFileError("stopped where the models load")

    monkeypatch.setattr(Predictor, "load", load)
    toml = tmp_path / "predict.toml"
    toml.write_text("batch_size = 33\namp = false\n")
    run_dir = tmp_path / "run"
    for command, data, out in (("predict", small_csvs["test"], tmp_path / "s.csv"),
                               ("evaluate", small_csvs["train"], tmp_path / "eval")):  # fmt: skip
        for flags in ((), ("--batch-size", "7", "--amp"), ("--no-amp",), ("--batch-size", "9")):
            args = [command, run_dir, data, "--out", out, "--config", toml, *flags]
            result = CliRunner().invoke(app, [str(arg) for arg in args])
            assert result.exit_code == 1 and "stopped where the models load" in result.output
        for flag, value in (("--batch-size", "0"), ("--batch-size", "-3")):
            result = CliRunner().invoke(app, [command, str(run_dir), str(data), flag, value])
            refused = f"error: {flag} must be >= 1, got {value}\n"
            assert (result.exit_code, result.output) == (1, refused), command
    assert loaded == [(33, False), (7, True), (33, False), (9, False)] * 2
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "eval").exists()


def test_the_learning_curves_say_the_train_loss_is_smoothed(tmp_path, monkeypatch):
    """With label smoothing 0.1 the train loss cannot fall below ~0.5 while the validation
    loss (plain cross-entropy) can: drawn on one axis unlabelled, it looked like a gap."""
    figures = []
    monkeypatch.setattr(evaluate_module, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"epoch": epoch, "train_loss": 0.6, "train_accuracy": 0.99, "valid_loss": 0.05,
                "valid_accuracy": 0.99, "lr": 0.01} for epoch in (1, 2)]  # fmt: skip
    plot_learning_curves(history, tmp_path / "curves.png", label_smoothing=0.1)
    plot_learning_curves(history, tmp_path / "curves.png")
    legends = [[[text.get_text() for text in ax.get_legend().get_texts()] for ax in fig.axes[:2]]
               for fig in figures]  # fmt: skip
    assert legends[0] == [["train (augmented, label smoothing 0.1)", "validation"],
                          ["train (augmented)", "validation"]]  # fmt: skip
    assert legends[1] == [["train (augmented)", "validation"]] * 2


def test_an_out_its_glob_matches_is_refused_however_each_is_written(tmp_path, monkeypatch):
    """`digits predict RUN "$PWD/*.csv" --out submission.csv` writes where the glob reads:
    refused, though one path is relative and the other not. A file whose name holds brackets
    is no pattern, and a submission beside it is not refused as one it matches."""
    from digit_recognizer.errors import OutputError
    from digit_recognizer.predict import check_submission_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="matches it, and would read the submission as rows"):
        check_submission_path(Path("submission.csv"), f"{tmp_path}/*.csv")
    bracketed = tmp_path / "scan[1].csv"
    bracketed.write_text("pixel0\n0\n")
    check_submission_path(tmp_path / "scan1.csv", bracketed)  # its own name, matched as written


def test_evaluate_names_the_labelled_digits_the_model_never_trained_on(
    tmp_path, tiny_run, small_test, caplog
):
    """A run trained on 0-4 and scored on all ten had reported a low accuracy alone."""
    labelled = tmp_path / "labelled.csv"
    write_kaggle_csv(labelled, small_test.images[:200], small_test.labels[:200])
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "low"))
    meta = json.loads((run_dir / "model.json").read_text())
    meta["train_class_counts"] = [100] * 5 + [0] * 5
    (run_dir / "model.json").write_text(json.dumps(meta))
    n_high = int((small_test.labels[:200] >= 5).sum())
    evaluate_run([run_dir], labelled, tmp_path / "low-eval")
    assert (f"{labelled}: {n_high} of its images are of 5, 6, 7, 8, 9, which the model never "
            "trained on") in caplog.text  # fmt: skip
    # One member of an ensemble that saw them, a run that does not say (trained before the
    # counts were recorded), or all ten trained on: nothing to say.
    for runs in ([run_dir, tiny_run], [tiny_run]):
        caplog.clear()
        evaluate_run(runs, labelled, tmp_path / "eval")
        assert "never trained on" not in caplog.text
    del meta["train_class_counts"]
    (run_dir / "model.json").write_text(json.dumps(meta))
    evaluate_run([run_dir], labelled, tmp_path / "eval")
    assert "never trained on" not in caplog.text


def test_rows_one_past_a_whole_piece_are_all_conformed(small_test, monkeypatch):
    """The row past the last whole piece (STREAM_ROWS + 1 rows) is a piece of its own: none of
    the rows in memory is left out of what conform_rows returns."""
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 64)
    images = small_test.images[:65]
    conformed = conform_rows(images, PredictConfig(), "f.csv")
    np.testing.assert_array_equal(conformed, images)


def read_as_written(
    images: np.ndarray, probas: np.ndarray, judge: bool = True
) -> tuple[np.ndarray, PieceConformer]:
    """``probas`` of ``images`` as PieceConformer conforms and reads them, in two pieces, with a
    judge of their layout (as nets have; one sure of neither orientation) or without (as
    classical models), and the conformer."""
    judged = (lambda rows: np.full((len(rows), 10), 0.1, np.float32)) if judge else None
    conformer = PieceConformer(PredictConfig(), judged)
    read = [conformer.read(conformer(images[rows]), probas[rows])
            for rows in np.array_split(np.arange(len(images)), 2)]  # fmt: skip
    return conformer.reread(np.concatenate(read)), conformer


def model_reading(n: int, sevens: float, ones: float, nines: float = 0.0) -> np.ndarray:
    """``n`` rows of probabilities: of 7, 1 and 9 as given, the rest shared by the other digits."""
    probas = np.full((n, 10), (1 - sevens - ones - nines) / 7, np.float32)
    probas[:, [7, 1, 9]] = sevens, ones, nines
    return probas


def file_of_ones_and_sevens(
    seven: np.ndarray, n_sevens: int, ones_read: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A file sorted by digit: 10 continental 1s (a long flag, no foot), read as ``ones_read``
    says, then ``n_sevens`` of ``seven``, each read as 7 surely."""
    images = np.stack([drawn_digit(*CONTINENTAL_ONE)] * 10 + [seven] * n_sevens)
    return images, np.concatenate([np.repeat(ones_read[None], 10, axis=0),
                                   model_reading(n_sevens, 0.95, 0.02)])  # fmt: skip


def test_where_the_writers_cross_their_sevens_an_uncrossed_seven_else_one_reads_as_one(caplog):
    """The file's 1s are read as 7, else 1, and its 7s are crossed, all in its last piece:
    judged on every piece, the 1s read as 1 and nothing else changes."""
    crossed = drawn_digit(*SEVEN, SEVENS_BAR)
    n_sevens = predict_module.MIN_SURE_SEVENS
    images, probas = file_of_ones_and_sevens(crossed, n_sevens, model_reading(1, 0.6, 0.35)[0])
    with caplog.at_level("WARNING"):
        read, conformer = read_as_written(images, probas)
        conformer.warn("f.csv")
    np.testing.assert_array_equal(read.argmax(axis=1), [1] * 10 + [7] * n_sevens)
    np.testing.assert_allclose(read.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(read[10:], probas[10:])
    told = caplog.records[-1].getMessage()
    assert told.startswith("f.csv: the writers cross their 7s, as much of Europe does; 10 of 26")
    assert "--as-is reads them as the model does" in told


def test_sevens_are_read_as_the_model_reads_them_unless_the_writers_cross_them():
    """Too few sure 7s to judge, 7s not crossed, a classical model, or an uncrossed digit read
    as 7, else 9: the model's probabilities, as they are."""
    crossed, uncrossed = drawn_digit(*SEVEN, SEVENS_BAR), drawn_digit(*SEVEN)
    enough = predict_module.MIN_SURE_SEVENS
    seven_else_one = model_reading(1, 0.6, 0.35)[0]
    seven_else_nine = model_reading(1, 0.6, 0.05, 0.3)[0]
    for seven, n_sevens, ones_read, judge in (
        (crossed, enough - 1, seven_else_one, True),
        (uncrossed, enough, seven_else_one, True),
        (crossed, enough, seven_else_one, False),
        (crossed, enough, seven_else_nine, True),
    ):
        images, probas = file_of_ones_and_sevens(seven, n_sevens, ones_read)
        read, conformer = read_as_written(images, probas, judge)
        np.testing.assert_array_equal(read, probas)
        assert conformer.n_uncrossed == 0


def ones_read_as_sevens_unless_crossed(_predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """A net's reading (Predictor.predict_proba's) of crossed digits as 7 surely, of the others as
    7, else 1."""
    crossed = crosses_stem(np.asarray(images).reshape(-1, 28, 28))[:, None]
    return np.where(crossed, model_reading(len(crossed), 0.95, 0.02),
                    model_reading(len(crossed), 0.6, 0.35))  # fmt: skip


def test_predict_streamed_predict_and_evaluate_read_writers_who_cross_their_sevens_alike(
    tmp_path, tiny_run, monkeypatch
):
    """The sorted file again, written as a CSV and read by a net that takes its 1s for 7s, else
    1s: predict, whole and in pieces, and evaluate each read its 1s as 1."""
    monkeypatch.setattr(Predictor, "predict_proba", ones_read_as_sevens_unless_crossed)
    n_sevens = predict_module.MIN_SURE_SEVENS
    images, _ = file_of_ones_and_sevens(drawn_digit(*SEVEN, SEVENS_BAR), n_sevens, np.zeros(10))
    labels = np.array([1] * 10 + [7] * n_sevens)
    write_kaggle_csv(tmp_path / "sorted.csv", images, labels)
    whole = predict_csv([tiny_run], tmp_path / "sorted.csv", tmp_path / "whole.csv")
    np.testing.assert_array_equal(whole, labels)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 8)  # the 7s in the last pieces
    predict_stream([tiny_run], tmp_path / "sorted.csv", tmp_path / "streamed.csv")
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert evaluate_run([tiny_run], tmp_path / "sorted.csv", tmp_path / "eval").accuracy == 1


def test_images_predicted_together_are_read_as_their_writers_cross_their_sevens(
    tmp_path, tiny_run, monkeypatch, caplog
):
    """predict-image's files are one writer's, or one collection's, as a CSV's rows are: with
    their crossed 7s, the continental 1s read as 1; alone, as the net reads them."""
    monkeypatch.setattr(Predictor, "predict_proba", ones_read_as_sevens_unless_crossed)
    one, crossed = drawn_digit(*CONTINENTAL_ONE), drawn_digit(*SEVEN, SEVENS_BAR)
    paths = []
    for index, digit in enumerate([one] * 3 + [crossed] * predict_module.MIN_SURE_SEVENS):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(255 - digit).save(paths[-1])  # dark ink on white paper, as scanned
    with caplog.at_level("WARNING"):
        together = [result.probabilities.argmax() for result in predict_images([tiny_run], paths)]
    assert together == [1] * 3 + [7] * predict_module.MIN_SURE_SEVENS
    assert "the 19 images: the writers cross their 7s" in caplog.text
    assert "predicting each image alone reads them as the model does" in caplog.text
    [alone] = predict_images([tiny_run], paths[:1])
    assert alone.probabilities.argmax() == 7


def test_images_predicted_together_lean_as_a_file_of_leaning_digits_does(
    tmp_path, tiny_run, small_test, caplog
):
    """predict-image's files, read together, are sheared to MNIST's slant where they lean far
    from it, as a file's rows are; one alone is read as it leans."""
    paths = []
    for index, digit in enumerate(sheared(small_test.images[:20], 0.45)):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(255 - digit).save(paths[-1])  # dark ink on white paper, as scanned
    with caplog.at_level("WARNING"):
        together = predict_images([tiny_run], paths)
    assert "the 20 images: the digits lean" in caplog.text
    assert "and were sheared to their slant; predicting each image alone" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        [alone] = predict_images([tiny_run], paths[:1])
    assert "lean" not in caplog.text
    assert not np.allclose(alone.probabilities, together[0].probabilities)


def test_writers_cross_their_sevens_from_a_share_of_their_sure_ones():
    n_sure = predict_module.MIN_SURE_SEVENS
    share = predict_module.CROSSED_SHARE
    assert reads_crossing(np.array([n_sure, np.ceil(share * n_sure)], np.float32))
    assert not reads_crossing(np.array([n_sure, np.ceil(share * n_sure) - 1], np.float32))
    assert not reads_crossing(np.array([n_sure - 1, n_sure - 1], np.float32))
