"""EDA, augmentation preview, run reports (self-contained HTML) and calibration."""

import base64
import json
import os
import re
import shutil
import threading
import tracemalloc
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from digit_recognizer import eda as eda_module
from digit_recognizer import evaluate as evaluate_module
from digit_recognizer import report as report_module
from digit_recognizer.cli import app
from digit_recognizer.data import kaggle_csv as kaggle_csv_module
from digit_recognizer.data import shards as shards_module
from digit_recognizer.data import stream as stream_module
from digit_recognizer.data.images import at_full_ink
from digit_recognizer.data.kaggle_csv import DigitSet, read_kaggle_csv, write_kaggle_csv
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.eda import _mean_and_std, eda
from digit_recognizer.errors import DataError, OutputError
from digit_recognizer.estimator import build_estimator, save_estimator
from digit_recognizer.evaluate import compute_metrics, evaluate_run
from digit_recognizer.fileio import sha256_file
from digit_recognizer.models.registry import build
from digit_recognizer.models.storage import load_net
from digit_recognizer.pipeline import train_job
from digit_recognizer.predict import PredictConfig, Predictor
from digit_recognizer.report import (
    SourceRows,
    _explain_hint,
    _plot_mistakes_and_grad_cam,
    html_table,
    model_summary,
    reliability,
    write_run_report,
)
from digit_recognizer.train import TrainConfig
from tests.test_images import frame_filling

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def recorded_galleries(monkeypatch) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The report's galleries as drawn, by file name: (images, captions)."""
    galleries = {}
    plot_gallery = report_module.plot_gallery

    def recording(images, captions, path, *args, **kwargs):
        galleries[path.name] = (images, captions)
        plot_gallery(images, captions, path, *args, **kwargs)

    monkeypatch.setattr(report_module, "plot_gallery", recording)
    return galleries


def assert_captions_name_their_rows(galleries, csv: Path) -> None:
    """Each caption's row (`row N`, first line) is the row of ``csv`` holding its image, as
    `digits explain CSV --index N` reads it."""
    rows = read_kaggle_csv(csv).images
    assert {"mistakes.png", "grad_cam.png"} <= set(galleries)
    for images, captions in galleries.values():
        for image, caption in zip(images, captions, strict=True):
            row = int(caption.split("\n")[0].removeprefix("row "))
            np.testing.assert_array_equal(rows[row], image, err_msg=caption)


class ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def stream_every_file(monkeypatch) -> None:
    """Every CSV past STREAM_FILE_BYTES, read a piece at a time: reading one whole (all its
    bytes at once, as every whole-file reader does) fails."""

    def refused(path):
        raise AssertionError(f"{path} was read whole")

    monkeypatch.setattr(shards_module, "STREAM_FILE_BYTES", 1000)
    monkeypatch.setattr(kaggle_csv_module, "_read_bytes", refused)


def inline_pngs(html_path) -> list[bytes]:
    """Every <img> of the page, decoded; fails unless each is a non-empty PNG data URI."""
    parser = ImageSources()
    parser.feed(html_path.read_text(encoding="utf-8"))
    parser.close()
    prefix = "data:image/png;base64,"
    assert parser.sources and all(src.startswith(prefix) for src in parser.sources)
    images = [base64.b64decode(src[len(prefix) :], validate=True) for src in parser.sources]
    assert all(image.startswith(PNG) and len(image) > 1000 for image in images)
    return images


def test_eda_summarises_and_writes_a_self_contained_page(tmp_path, small_train):
    images, labels = small_train.images[:300].copy(), small_train.labels[:300].copy()
    images[10], images[11] = images[0], images[1]  # two duplicates, one with a different label
    labels[10], labels[11] = labels[0], (labels[1] + 1) % 10
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, images, labels)
    summary = eda(csv_path, tmp_path / "eda")
    assert (summary.n_rows, summary.n_columns, summary.n_missing) == (300, 785, 0)
    assert (summary.n_duplicates, summary.n_conflicting_duplicates) == (2, 1)
    assert sum(summary.class_counts.values()) == 300
    assert summary.pixel_mean == pytest.approx(images.mean(), rel=1e-6)
    assert summary.pixel_std == pytest.approx(images.std(), rel=1e-6)
    assert len(summary.figures) == 5 and all(path.is_file() for path in summary.figures.values())
    assert len(inline_pngs(tmp_path / "eda" / "eda.html")) == 5
    # A CSV without one of the digits: its tiles stay blank, without numpy's warnings.
    no_sevens = labels != 7
    write_kaggle_csv(csv_path, images[no_sevens], labels[no_sevens])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eda(csv_path, tmp_path / "eda").class_counts[7] == 0


def test_eda_of_a_csv_past_stream_file_bytes_parses_it_a_piece_at_a_time(
    tmp_path, small_train, monkeypatch
):
    """`digits eda big.csv` and `augment-preview` had read the file whole (eda: 0.96 GB of
    memory for one of 153 MB), where `digits predict` streams it: parsed a piece at a time now,
    the same summary and figures."""
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, small_train.images[:300], small_train.labels[:300])
    whole = eda(csv_path, tmp_path / "whole")
    stream_every_file(monkeypatch)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 64)  # five pieces
    streamed = eda(csv_path, tmp_path / "streamed")
    assert streamed.rows() == whole.rows()
    for title, path in whole.figures.items():
        assert streamed.figures[title].read_bytes() == path.read_bytes(), title
    # augment-preview too: it shows four of the rows.
    preview = eda_module.augment_preview(csv_path, tmp_path / "streamed.png", n=2)
    monkeypatch.undo()
    assert eda_module.augment_preview(csv_path, tmp_path / "whole.png", n=2).read_bytes() == (
        preview.read_bytes()
    )


def test_eda_of_a_file_whose_name_is_not_utf8_writes_its_page(tmp_path, small_train):
    csv_path = tmp_path / os.fsdecode(b"train-\xff.csv")  # a Latin-1 name on a Linux disk
    write_kaggle_csv(csv_path, small_train.images[:20], small_train.labels[:20])
    eda(csv_path, tmp_path / "eda")
    assert "train-\\udcff.csv" in (tmp_path / "eda" / "eda.html").read_text(encoding="utf-8")


def test_eda_summary_rows_state_the_csvs_own_numbers(tmp_path, small_train):
    """Each row of the summary table, exactly: the sums above cannot tell a wrong share of
    background pixels, memory, dtypes, a reordered label count or the wrong balance."""
    labels = small_train.labels[:300]
    keep = (labels != 0) | (np.cumsum(labels == 0) <= 2)  # two zeros: the rarest class is 0
    images, labels = small_train.images[:300][keep], labels[keep]
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, images, labels)
    summary = eda_module._summarise(csv_path, read_kaggle_csv(csv_path))  # eda() less its plots
    counts = np.bincount(labels, minlength=10)
    assert counts.argmin() == 0 and list(counts) != sorted(counts)
    assert summary.zero_fraction == pytest.approx((images == 0).mean(), rel=1e-9)
    assert summary.memory_bytes == images.nbytes + labels.astype(np.int64).nbytes
    assert summary.dtypes == {"label": "int64", "pixel0..pixel783": "uint8"}
    rows = dict(summary.rows())
    assert rows["rows x columns"] == f"{len(images):,} x 785"
    assert rows["background pixels"] == f"{(images == 0).mean():.1%} are exactly 0"
    assert rows["label counts"] == " ".join(f"{d}:{n}" for d, n in enumerate(counts))
    assert rows["balance"] == f"smallest / largest class = {counts.min() / counts.max():.2f}"


def test_eda_counts_as_conflicting_only_the_duplicates_with_another_label(tmp_path, small_train):
    """Two copies of a row under its own label and one under another: one conflict, not two."""
    images, labels = small_train.images[:5], small_train.labels[:5]
    other_label = (labels[1] + 1) % 10
    data = DigitSet(
        images[[0, 1, 2, 3, 4, 0, 0, 1]], np.append(labels, [labels[0], labels[0], other_label])
    )
    summary = eda_module._summarise(tmp_path / "train.csv", data)
    assert (summary.n_duplicates, summary.n_conflicting_duplicates) == (3, 1)
    assert dict(summary.rows())["duplicate images"] == "3 (1 with a different label)"


def test_eda_plots_draw_the_counts_and_the_nets_normalisation(tmp_path, small_train, monkeypatch):
    """The figures' own numbers, read off the matplotlib figure before it is saved: bars per
    digit in digit order, the image count in the title, the histogram's x after normalising."""
    drawn = []
    monkeypatch.setattr(eda_module, "save_figure", lambda fig, _path: drawn.append(fig))
    data = DigitSet(small_train.images[:300], small_train.labels[:300])
    rng = np.random.default_rng(0)
    eda_module._plot_label_distribution(data, rng, tmp_path / "labels.png")
    ax = drawn[-1].axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_array_equal(heights, np.bincount(data.labels, minlength=10))
    assert ax.get_title() == "Label distribution (300 images)"
    eda_module._plot_pixel_histograms(data, rng, tmp_path / "pixels.png")
    after = drawn[-1].axes[1]
    x = [patch.get_x() + patch.get_width() / 2 for patch in after.patches]
    expected = (np.arange(256) / 255 - eda_module.MNIST_MEAN) / eda_module.MNIST_STD
    np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-9)
    # A binarised file: its own 0/1 before, the full ink the nets read after normalising (its
    # ink had been drawn at 1 / 255, near the background).
    binarised = (data.images > 127).astype(np.uint8)
    eda_module._plot_pixel_histograms(DigitSet(binarised, data.labels), rng, tmp_path / "b.png")
    before, after = ([patch.get_height() for patch in ax.patches] for ax in drawn[-1].axes)
    n_ink = int(binarised.sum())
    assert (before[1], before[255]) == (n_ink, 0) and (after[1], after[255]) == (0, n_ink)


def test_eda_statistics_take_little_memory_beside_the_rows(tmp_path):
    """A pixel histogram by one bincount had made an int64 copy of every pixel (6 GB beside a
    million rows), and the duplicate count kept every row's bytes as a key (0.9 GB more)."""
    rng = np.random.default_rng(0)
    data = DigitSet(rng.integers(0, 256, (20_000, 28, 28), np.uint8), rng.integers(0, 10, 20_000))
    tracemalloc.start()
    try:
        summary = eda_module._summarise(tmp_path / "train.csv", data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.n_duplicates == 0
    assert summary.pixel_mean == pytest.approx(data.images.mean(), rel=1e-9)
    assert peak < data.images.nbytes / 2


def test_eda_draws_a_binarised_files_digits_at_full_ink(tmp_path, small_train, monkeypatch):
    """Drawn on 0-255 as they are, the 0/1 digits of a binarised file were black tiles."""
    drawn = []
    monkeypatch.setattr(
        eda_module, "plot_gallery", lambda tiles, *args, **kwargs: drawn.append(tiles)
    )
    monkeypatch.setattr(eda_module, "save_figure", lambda fig, _path: drawn.append(fig))
    binarised = (small_train.images[:100] > 127).astype(np.uint8)
    data = DigitSet(binarised, small_train.labels[:100])
    rng = np.random.default_rng(0)
    eda_module._plot_samples(data, rng, tmp_path / "samples.png")
    eda_module._plot_class_rows(data, rng, tmp_path / "per_class.png")
    samples, per_class = drawn[0], drawn[1].axes[0].images[0].get_array()
    assert set(np.unique(samples)) == {0, 255}
    first_tile = per_class[1:29, 1:29]  # inside montage's 255 separators
    assert set(np.unique(first_tile)) == {0, 255}
    assert eda_module._summarise(tmp_path / "b.csv", data).pixel_mean < 1  # the file's own values


def test_eda_pixel_maps_are_numpys_mean_and_std_computed_in_chunks(small_train):
    images = small_train.images[:300]
    mean, std = _mean_and_std(images, chunk=7)  # chunks that do not divide the rows
    np.testing.assert_allclose(mean, images.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, images.std(axis=0), rtol=1e-6, atol=1e-6)


def test_eda_of_an_unlabelled_file_leaves_no_label_plots_nor_label_counts(tmp_path, small_train):
    """An unlabelled file's eda into the folder of a labelled one's had left its label plots
    there, and its summary said "(0 with a different label)" of rows without labels."""
    labelled, unlabelled = tmp_path / "train.csv", tmp_path / "test.csv"
    write_kaggle_csv(labelled, small_train.images[:50], small_train.labels[:50])
    write_kaggle_csv(unlabelled, np.concatenate([small_train.images[:50]] * 2))
    eda(labelled, tmp_path / "eda")
    summary = eda(unlabelled, tmp_path / "eda")
    assert sorted(path.name for path in (tmp_path / "eda").iterdir()) == [
        "eda.html", "mean_std_images.png", "pixel_histograms.png", "samples.png"
    ]  # fmt: skip
    assert dict(summary.rows())["duplicate images"] == "50"


def test_eda_sample_captions_say_their_rows_count_from_0(tmp_path, small_train, monkeypatch):
    """ "#3" had read as a line of the file, which counts from 1 and has a header above."""
    drawn = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda *args, **kwargs: drawn.append(args))
    data = DigitSet(small_train.images[:5], small_train.labels[:5])
    eda_module._plot_samples(data, np.random.default_rng(0), tmp_path / "samples.png")
    _, titles, _ = drawn[0]
    assert sorted(titles) == [f"row {i}: {small_train.labels[i]}" for i in range(5)]


def test_eda_and_augment_preview_commands(tmp_path, small_csvs):
    result = runner.invoke(app, ["eda", str(small_csvs["test"]), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "1,000 x 784" in result.output  # test.csv: unlabelled, no label plots
    assert len(inline_pngs(tmp_path / "e" / "eda.html")) == 3
    out = tmp_path / "augmented.png"
    result = runner.invoke(app, ["augment-preview", str(small_csvs["train"]), "--n", "5",
                                 "--elastic", "1.5", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG)


def test_augment_preview_names_the_flag_a_bad_setting_came_from(tmp_path, small_csvs):
    """`--elastic inf` had been refused as "elastic_px must be a finite number", the name of
    no flag; the settings are now checked as training checks its flags."""
    refusals = [
        (("--elastic", "inf"), "--elastic must be a finite number, got inf"),
        (("--augment", "5"), r"--augment \(the strength\) must be in \[0, 3.33\)"),
    ]
    for flags, said in refusals:
        result = runner.invoke(app, ["augment-preview", str(small_csvs["train"]),
                                     "--out", str(tmp_path / "p.png"), *flags])  # fmt: skip
        assert result.exit_code == 1
        assert re.match(rf"error: {said}", result.output), result.output
    assert not (tmp_path / "p.png").exists()


def test_augment_preview_shows_a_1_a_7_and_a_9_where_it_draws_styles(tmp_path, small_train,
                                                                     monkeypatch):  # fmt: skip
    """The styles draw on 1s, 7s and 9s alone: four random rows often held none of them."""
    from digit_recognizer import eda

    shown = []
    monkeypatch.setattr(eda, "plot_gallery", lambda tiles, *args, **kwargs: shown.append(tiles))
    labels = small_train.labels
    others = np.flatnonzero(~np.isin(labels, (1, 7, 9)))[:294]
    rows = np.concatenate([others, *(np.flatnonzero(labels == digit)[:2] for digit in (1, 7, 9))])
    images, labels = small_train.images[rows], labels[rows]
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, images, labels)
    for seed in range(3):
        eda.augment_preview(csv, tmp_path / "p.png", n=2, seed=seed)
        originals = shown[-1][::3]  # each original, then its n augmentations
        found = {int(labels[(images == image).all(axis=(1, 2))][0]) for image in originals}
        assert {1, 7, 9} <= found, found


def test_augment_preview_shows_faint_rows_at_full_ink_as_training_augments_them(
    tmp_path, small_train, monkeypatch
):
    """A 0/1 CSV's rows were drawn as they are on a 0-255 scale: black tiles."""
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    csv = tmp_path / "binarised.csv"
    write_kaggle_csv(csv, (small_train.images[:50] > 128).astype(np.uint8), small_train.labels[:50])
    eda_module.augment_preview(csv, tmp_path / "p.png", n=2)
    originals = shown[-1][::3]  # each original, then its n augmentations
    assert set(np.unique(originals)) == {0, 255} and shown[-1].max(axis=(1, 2)).min() >= 32


def test_augment_preview_holds_the_rows_it_shows_alone(tmp_path, small_train, monkeypatch):
    """The preview had held every image of the file to show four (and a binarised file's had
    been scaled to full ink, all of them): it reads the pieces of the rows it shows alone, and
    where it seeks a 1, a 7 and a 9 to draw the styles on, it holds every row's label, not its
    image."""
    monkeypatch.setattr(eda_module, "plot_gallery", lambda *_, **__: None)
    stream_every_file(monkeypatch)
    monkeypatch.setattr(shards_module, "CHUNK_BYTES", 1 << 16)  # the file's scan, in small reads
    binarised = DigitSet((small_train.images > 128).astype(np.uint8), small_train.labels)
    csv = tmp_path / "binarised.csv"
    write_kaggle_csv(csv, binarised.images, binarised.labels)
    read = []

    def pieces_of_100_rows(_shard, _has_labels, start, stop):
        """The file's rows, as views of ``binarised``: parsing costs seconds, and memory."""
        for first in range(start, stop, 100):
            read.append(piece := binarised.take(slice(first, min(first + 100, stop))))
            yield piece

    monkeypatch.setattr(shards_module, "read_chunks", pieces_of_100_rows)
    eda_module.augment_preview(csv, tmp_path / "p.png", n=2, styles=0)
    assert 0 < sum(map(len, read)) <= eda_module.PREVIEW_ROWS * 100
    read.clear()
    tracemalloc.start()
    try:
        eda_module.augment_preview(csv, tmp_path / "p.png", n=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(map(len, read)) > len(binarised)  # every label, then the rows shown
    assert peak < binarised.images.nbytes / 2, peak


def test_augment_preview_shows_the_rows_it_showed_when_it_held_them_all(
    tmp_path, small_train, monkeypatch
):
    """Read a piece at a time, a seed draws the same rows as when the file was held whole, the
    1, the 7 and the 9 put in where the styles draw on them included."""
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, small_train.images[:300], small_train.labels[:300])
    for seed, styles, rows in ((0, 0.3, [80, 152, 15, 189]), (0, 0.0, [80, 152, 252, 189]),
                               (2, 0.3, [38, 248, 87, 77])):  # fmt: skip
        eda_module.augment_preview(csv, tmp_path / "p.png", n=2, seed=seed, styles=styles)
        np.testing.assert_array_equal(shown[-1][::3], small_train.images[rows])


def test_report_command_with_data_and_without(tmp_path, tiny_run, small_test):
    labelled = tmp_path / "labelled.csv"
    write_kaggle_csv(labelled, small_test.images[:400], small_test.labels[:400])
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config_toml = run_dir / "config.toml"  # an lr left to the optimizer, as runs now record it
    config_toml.write_text(config_toml.read_text().replace("\nlr = 0.02\n", '\nlr = "none"\n'))
    # tiny_run was made by train() alone: no metrics.json names its data, so --data is needed.
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 1 and "give --data LABELLED_CSV" in result.output
    unlabelled = tmp_path / "unlabelled.csv"
    write_kaggle_csv(unlabelled, small_test.images[:10])
    result = runner.invoke(app, ["report", str(run_dir), "--data", str(unlabelled)])
    assert result.exit_code == 1 and "has no label column" in result.output
    result = runner.invoke(app, ["report", str(run_dir), "--data", str(labelled)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    for heading in ("Configuration and model", "Learning curves", "Per-class precision",
                    "ROC and precision-recall", "Calibration", "Most confident mistakes",
                    "Grad-CAM"):  # fmt: skip
        assert heading in page
    assert f"{labelled}: 400 images" in page
    assert "<td>lr</td><td>none: 0.05, sgd&#x27;s default</td>" in page  # not "lr none"
    assert f"row of {labelled}, counted from 0: digits explain {run_dir} {labelled} --index" in page
    assert len(inline_pngs(run_dir / "report.html")) == 6
    # Digits laid out as another collection's are read as evaluate reads them: redone as MNIST's.
    filled = tmp_path / "filled.csv"
    write_kaggle_csv(filled, np.stack([frame_filling(image) for image in small_test.images[:400]]),
                     small_test.labels[:400])  # fmt: skip
    evaluated = evaluate_run([run_dir], filled, tmp_path / "eval")
    write_run_report(run_dir, filled)
    n_wrong = round((1 - evaluated.accuracy) * 400)
    assert f"{evaluated.accuracy:.4f} ({n_wrong} wrong)" in (run_dir / "report.html").read_text()
    # --as-is, as evaluate --as-is: the rows as they are (the report had always conformed them).
    as_is = evaluate_run([run_dir], filled, tmp_path / "eval", PredictConfig(conform=False))
    assert as_is.accuracy < evaluated.accuracy
    result = runner.invoke(app, ["report", str(run_dir), "--as-is"])
    assert result.exit_code == 1 and "without --data" in result.output
    result = runner.invoke(app, ["report", str(run_dir), "--data", str(filled), "--as-is"])
    n_wrong = round((1 - as_is.accuracy) * 400)
    assert result.exit_code == 0, result.output
    assert f"{as_is.accuracy:.4f} ({n_wrong} wrong)" in (run_dir / "report.html").read_text()
    # Rows of one digit have no one-vs-rest curve: a note says so (the figure had been two blank
    # axes), and no legend warns of nothing to show.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_digit = DigitSet(small_test.images[:1], small_test.labels[:1])
        page = write_run_report(run_dir, data=one_digit).read_text()
    assert f"None: every image is a {one_digit.labels[0]}, and a digit&#x27;s curves" in page
    assert len(inline_pngs(run_dir / "report.html")) == 4  # no ROC, no mistakes: right
    # A digit neither labelled nor predicted has no scores, which had shown as 0.0000 each.
    absent = (one_digit.labels[0] + 1) % 10
    assert f"<tr><td>{absent}</td><td>n/a</td><td>n/a</td><td>n/a</td><td>0</td></tr>" in page


def test_report_of_a_csv_past_stream_file_bytes_parses_it_a_piece_at_a_time(
    tmp_path, tiny_run, small_test, monkeypatch, caplog
):
    """`digits report RUN --data big.csv` had read the file whole, where evaluate streams it:
    parsed a piece at a time now, its rows conformed as evaluate conforms them, the same page."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    labelled = tmp_path / "labelled.csv"
    images = small_test.images[:200].copy()
    images[:80] = np.stack([frame_filling(image) for image in images[:80]])
    write_kaggle_csv(labelled, images, small_test.labels[:200])
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 64)  # four pieces, the last one short
    whole = write_run_report(run_dir, labelled).read_bytes()
    stream_every_file(monkeypatch)
    with caplog.at_level("WARNING"):
        assert write_run_report(run_dir, labelled).read_bytes() == whole
    assert "80 of 200 digits were not laid out" in caplog.text


def test_report_rebuilds_the_validation_split(tmp_path, tiny_run, small_csvs, monkeypatch):
    galleries = recorded_galleries(monkeypatch)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    train_csv = tmp_path / "train.csv"
    shutil.copy(small_csvs["train"], train_csv)
    recorded = {"train_csv": str(train_csv), "train_sha256": sha256_file(train_csv)}
    (run_dir / "metrics.json").write_text(json.dumps(recorded))
    config_toml = run_dir / "config.toml"  # a run of seed 3: its split is not seed 0's
    config_toml.write_text(config_toml.read_text().replace("\nseed = 0\n", "\nseed = 3\n"))
    page = write_run_report(run_dir).read_text()
    assert f"validation split of {train_csv} (valid_size 0.05, seed 3): 150" in page
    # The captions' rows are train.csv's, which the note tells `digits explain` to read (they
    # had given none; the split's own order is no row of any file).
    assert_captions_name_their_rows(galleries, train_csv)
    assert f"digits explain {run_dir} {train_csv} --index ROW explains it" in page
    # Scored on that very split (config.toml's valid_size and seed), not on another drawing of
    # 150 rows, which would score otherwise: the page's figures are those of these images.
    _, valid = split_for_training(read_kaggle_csv(train_csv), 0.05, 3)
    probas = Predictor.load([run_dir]).predict_proba(valid.images)  # as `digits evaluate`
    metrics = compute_metrics(valid.labels, probas)
    n_wrong = int((probas.argmax(axis=1) != valid.labels).sum())
    ece = reliability(probas, valid.labels).ece
    for name, value in [("accuracy", f"{metrics.accuracy:.4f} ({n_wrong} wrong)"),
                        ("macro F1", f"{metrics.macro_f1:.4f}"),
                        ("ROC-AUC (one-vs-rest)", f"{metrics.roc_auc_ovr:.5f}"),
                        ("expected calibration error", f"{ece:.4f} (15 bins)")]:  # fmt: skip
        assert f"<tr><td>{name}</td><td>{value}</td></tr>" in page, name
    # Kaggle's train.csv is past STREAM_FILE_BYTES: read a piece at a time (it had been read
    # whole), the same page.
    with monkeypatch.context() as streamed:
        stream_every_file(streamed)
        assert write_run_report(run_dir).read_text() == page
    # Not from another file of that name, nor from the file changed since.
    with open(train_csv, "a") as changed:
        changed.write(Path(small_csvs["train"]).read_text().splitlines()[1] + "\n")
    with pytest.raises(DataError, match=r"changed since .* \(SHA-256 differs\)"):
        write_run_report(run_dir)
    train_csv.unlink()
    with pytest.raises(DataError, match="is not a CSV file here"):
        write_run_report(run_dir)


def test_the_split_of_a_faint_csv_is_scored_at_full_ink_as_it_trained(tmp_path, tiny_run,
                                                                      small_train):  # fmt: skip
    """A training CSV of 0/1 pixels trains at full ink (pipeline.ink_as_predicted): its rebuilt
    validation split is scored so too, not as near-blank images."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    faint_csv = tmp_path / "faint.csv"
    write_kaggle_csv(faint_csv, (small_train.images > 127).astype(np.uint8), small_train.labels)
    recorded = {"train_csv": str(faint_csv), "train_sha256": sha256_file(faint_csv)}
    (run_dir / "metrics.json").write_text(json.dumps(recorded))
    page = write_run_report(run_dir).read_text()
    _, valid = split_for_training(at_full_ink(read_kaggle_csv(faint_csv)), 0.05, 0)
    probas = Predictor.load([run_dir]).predict_proba(valid.images)  # as `digits evaluate`
    metrics = compute_metrics(valid.labels, probas)
    n_wrong = int((probas.argmax(axis=1) != valid.labels).sum())
    assert f"<td>accuracy</td><td>{metrics.accuracy:.4f} ({n_wrong} wrong)</td>" in page


def test_train_job_writes_the_report(tmp_path, small_train, monkeypatch):
    """The report names the split it scored (it had been left to a default wording), and both
    learning curves, the run's PNG and the report's, say the train loss is label-smoothed
    (the legend had said so only where plot_learning_curves was called by hand). Its captions
    give each image's row of the training CSV, for `digits explain --index`."""
    galleries = recorded_galleries(monkeypatch)
    legends = []
    save_figure = evaluate_module.save_figure

    def recording(fig, path):
        legends.extend(text.get_text() for ax in fig.axes if ax.get_legend()
                       for text in ax.get_legend().get_texts())  # fmt: skip
        save_figure(fig, path)

    monkeypatch.setattr(evaluate_module, "save_figure", recording)
    csv_path = tmp_path / "train.csv"
    write_kaggle_csv(csv_path, small_train.images[:640], small_train.labels[:640])
    config = TrainConfig(epochs=1, batch_size=64, lr=0.02, valid_size=0.25)
    train_job(config, csv_path, tmp_path / "run")
    assert len(inline_pngs(tmp_path / "run" / "report.html")) == 6
    page = (tmp_path / "run" / "report.html").read_text()
    assert "validation split (valid_size 0.25, seed 0): 160 images" in page
    assert legends.count("train (augmented, label smoothing 0.1)") == 2
    assert_captions_name_their_rows(galleries, csv_path)
    assert f"digits explain {tmp_path / 'run'} {csv_path} --index ROW" in page


def test_the_explain_command_suggested_runs_from_any_folder(tmp_path, monkeypatch):
    """Trained as `digits train data/train.csv --out runs/cnn`, the report had suggested
    `digits explain runs/cnn data/train.csv`, which fails from any folder but that one."""
    monkeypatch.chdir(tmp_path)
    rows = SourceRows(Path("data/my train.csv"), np.arange(3))
    hint = _explain_hint(Path("runs/cnn"), rows)
    command = f"digits explain {tmp_path / 'runs/cnn'} '{tmp_path / 'data/my train.csv'}'"
    assert f"{command} --index ROW explains it" in hint


def test_model_summary_lists_layers_with_shapes_and_parameters(tiny_run):
    model = load_net(tiny_run)[0]
    rows = model_summary(model)
    assert rows[-1] == (rows[-1][0], "Linear", "(1, 10)", rows[-1][3])
    assert ("Conv2d", "(1, 32, 28, 28)") in [(kind, shape) for _, kind, shape, _ in rows]
    assert sum(row[3] for row in rows) == sum(p.numel() for p in model.parameters())
    model.train()  # a net in training (train_job reports on the net it trained) keeps training
    model_summary(model)
    assert model.training


def test_table_cells_are_text_not_markup():
    """A CSV named ``a<b>&c.csv`` (the report's "evaluated on") shows as named, not as a tag."""
    cells = html_table([("evaluated on", "a<b>&c.csv")], header=("<key>", "value"))
    assert cells == ("<table><tr><th>&lt;key&gt;</th><th>value</th></tr><tr><td>evaluated on"
                     "</td><td>a&lt;b&gt;&amp;c.csv</td></tr></table>")  # fmt: skip


def calibrated_toy(confidence: np.ndarray, accuracy: np.ndarray, rng: np.random.Generator):
    """Probabilities with top class 0 at ``confidence``; the label is 0 with prob. ``accuracy``."""
    probas = np.repeat(((1 - confidence) / 9)[:, None], 10, axis=1)
    probas[:, 0] = confidence
    correct = rng.random(len(confidence)) < accuracy
    labels = np.where(correct, 0, rng.integers(1, 10, len(confidence)))
    return probas, labels


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.15, 1.0, 200_000)
    probas, labels = calibrated_toy(confidence, confidence, rng)  # accuracy == confidence
    assert reliability(probas, labels).ece < 0.005
    overconfident = calibrated_toy(np.full(10_000, 0.99), np.full(10_000, 0.5), rng)
    assert reliability(*overconfident).ece == pytest.approx(0.49, abs=0.02)
    diagram = reliability(probas, labels, n_bins=10)
    assert diagram.counts.sum() == len(labels) and np.isnan(diagram.accuracy[0])  # empty bin
    np.testing.assert_allclose(diagram.accuracy[2:], diagram.confidence[2:], atol=0.01)
    # Bins are closed on the right, as the paper's: a top probability of 0.5 (a tie between two
    # digits) is in (0.4, 0.5], the bin of confidence 0.5 and under.
    tie = np.array([[0.5, 0.5] + [0.0] * 8])
    assert reliability(tie, np.array([0]), n_bins=10).counts.tolist() == [0] * 4 + [1] + [0] * 5


def test_a_report_that_cannot_be_written_is_refused_before_its_figures(
    tmp_path, tiny_run, monkeypatch
):
    """`digits report` of a run on a read-only mount (or whose report.html is read-only) had
    predicted its images and drawn every figure, then failed writing the page."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run_dir / "report.html").write_text("an earlier report")
    (run_dir / "report.html").chmod(0o444)
    monkeypatch.setattr(report_module.Predictor, "load", None)  # never reached
    with pytest.raises(OutputError, match=r"report\.html: read-only \(mode 0444\)"):
        write_run_report(run_dir)


def test_report_names_a_corrupt_metrics_file(tmp_path, tiny_run):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "metrics.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 1 and "metrics.json: not valid JSON" in result.output


def test_report_reads_a_history_with_a_bom_and_names_a_corrupt_one(tmp_path, tiny_run, small_test):
    """A history.csv saved by a spreadsheet (a BOM) had raised KeyError 'epoch', a cell
    short a TypeError: tracebacks, where the file is what to name."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    labelled = tmp_path / "labelled.csv"
    write_kaggle_csv(labelled, small_test.images[:100], small_test.labels[:100])
    history = run_dir / "history.csv"
    text = history.read_text()
    history.write_text("\ufeff" + text)
    assert "Learning curves" in write_run_report(run_dir, labelled).read_text()
    history.write_text(text.splitlines()[0] + "\n1,2\n")
    result = runner.invoke(app, ["report", str(run_dir), "--data", str(labelled)])
    assert result.exit_code == 1
    assert "history.csv: not a history written by training" in result.output


def test_a_classical_models_directory_is_named_as_one(tmp_path, small_train):
    """It has no config.toml, which the report had named, asking whether it was a run."""
    logreg = build_estimator("logreg", n_components=20).fit(small_train.images[:300],
                                                            small_train.labels[:300])  # fmt: skip
    save_estimator(logreg, tmp_path / "logreg", name="logreg")
    result = runner.invoke(app, ["report", str(tmp_path / "logreg")])
    assert result.exit_code == 1
    assert "'logreg' is a scikit-learn model, not a net" in result.output


def test_the_grad_cam_gallery_title_counts_the_right_and_wrong_it_shows(tmp_path, small_test,
                                                                         monkeypatch):  # fmt: skip
    """With fewer than 8 right it had claimed '8 right (first row)', mistakes filling that row."""
    titles = {}

    def record(
        images: np.ndarray, captions: list[str], path: Path, title: str, **_: object
    ) -> None:
        titles[path.name] = title

    monkeypatch.setattr(report_module, "plot_gallery", record)
    data = DigitSet(small_test.images[:11], small_test.labels[:11])
    predicted = np.where(np.arange(11) < 3, data.labels, (data.labels + 1) % 10)
    probas = np.eye(10, dtype=np.float32)[predicted] * 0.9 + 0.01
    _plot_mistakes_and_grad_cam(build("cnn-tiny").eval(), data, probas, tmp_path, np.arange(11))
    assert titles["grad_cam.png"] == (
        "Grad-CAM for the predicted digit: 3 right, then the 8 most confident mistakes"
    )
    # None wrong: no "then the 0 most confident mistakes", no blank "0 of 0 mistakes" figure.
    titles.clear()
    _plot_mistakes_and_grad_cam(build("cnn-tiny").eval(), data, np.eye(10)[data.labels], tmp_path,
                                np.arange(11))  # fmt: skip
    assert titles == {"grad_cam.png": "Grad-CAM for the predicted digit: 8 right"}


def test_a_gallery_title_wider_than_its_columns_wraps_inside_the_figure(tmp_path, monkeypatch):
    """augment-preview --n 2 (or any --elastic) had cut its title off at both sides."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    figures = []
    monkeypatch.setattr(report_module, "save_figure", lambda fig, path: figures.append(fig))
    title = "Training augmentation, strength 1: rotation ±12°, zoom ±12%, shear ±0.15, shift ±2.5"
    images = np.zeros((3, 28, 28), np.uint8)
    report_module.plot_gallery(images, ["a", "b", "c"], tmp_path / "g.png", columns=3, title=title)
    canvas = FigureCanvasAgg(figures[0])
    canvas.draw()
    [shown] = [text for text in figures[0].findobj(Text) if text.get_text() == title]
    extent = shown.get_window_extent(canvas.get_renderer())
    assert extent.x0 >= 0 and extent.x1 <= figures[0].bbox.width


def test_report_names_the_digits_the_run_never_trained_on(tmp_path, tiny_run, small_test):
    """As `digits evaluate` does: a run of 0-4 scored on all ten had shown a low accuracy alone."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    meta = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps(meta | {"train_class_counts": [9] * 9 + [0]}))
    data = DigitSet(small_test.images[:60], small_test.labels[:60])
    assert 9 in data.labels
    page = write_run_report(run_dir, data=data).read_text()
    assert "<td>never trained on</td><td>9: the model reads each as another digit" in page
    (run_dir / "model.json").write_text(json.dumps(meta))  # as trained: on all ten
    assert "never trained on" not in write_run_report(run_dir, data=data).read_text()


def test_augment_preview_of_a_pipe_shows_the_rows_of_the_file_it_carries(
    tmp_path, small_train, monkeypatch
):
    """A pipe is read whole, once: its rows are drawn as a file's are, a 1, a 7 and a 9 put in
    where the styles draw on them alone, not where they are off."""
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, small_train.images[:300], small_train.labels[:300])
    for styles in (0.0, 0.3):
        eda_module.augment_preview(csv, tmp_path / "p.png", n=1, styles=styles)
        from_file = shown[-1][::2]
        pipe = tmp_path / f"pipe-{styles}"
        os.mkfifo(pipe)
        # A daemon: were the pipe never opened, its writer would block the test run's end.
        writer = threading.Thread(
            target=lambda path=pipe: path.write_bytes(csv.read_bytes()), daemon=True
        )
        writer.start()
        eda_module.augment_preview(pipe, tmp_path / "p.png", n=1, styles=styles)
        writer.join(timeout=30)
        np.testing.assert_array_equal(shown[-1][::2], from_file)


def test_augment_preview_draws_up_to_40_augmentations_an_image(tmp_path, small_csvs, monkeypatch):
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    eda_module.augment_preview(small_csvs["train"], tmp_path / "p.png", n=40)
    assert len(shown[-1]) == eda_module.PREVIEW_ROWS * 41


def test_augment_preview_of_a_file_of_fewer_rows_than_it_shows_shows_them_all(
    tmp_path, small_train, monkeypatch
):
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, small_train.images[:3], small_train.labels[:3])
    eda_module.augment_preview(csv, tmp_path / "p.png", n=1)
    originals = shown[-1][::2]
    assert sorted(map(bytes, originals)) == sorted(map(bytes, small_train.images[:3]))


def test_augment_preview_titles_the_elastic_distortion_and_styles_it_draws(
    tmp_path, small_csvs, monkeypatch
):
    """The styles only where the file has the labels they are drawn by; the elastic distortion
    where it is on."""
    titles = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda *_, title, **__: titles.append(title))
    for csv in (small_csvs["train"], small_csvs["test"]):
        for elastic in (0.0, 1.5):
            eda_module.augment_preview(csv, tmp_path / "p.png", n=1, elastic=elastic, styles=0.3)
    labelled, labelled_elastic, unlabelled, unlabelled_elastic = titles
    assert labelled.endswith(", styles 30%") and "elastic" not in labelled
    assert labelled_elastic.endswith(", elastic 1.5 px, styles 30%")
    assert "styles" not in unlabelled and "elastic" not in unlabelled
    assert unlabelled_elastic.endswith(", elastic 1.5 px")


def test_augment_preview_keeps_a_7_it_drew_where_it_puts_in_a_1(tmp_path, small_train, monkeypatch):
    """Where the styles are drawn, the 1 sought goes in the place of a row that is neither: a 7
    among the rows drawn stays."""
    shown = []
    monkeypatch.setattr(eda_module, "plot_gallery", lambda tiles, *_, **__: shown.append(tiles))
    labels = small_train.labels
    seven, one = np.flatnonzero(labels == 7)[0], np.flatnonzero(labels == 1)[:50]
    zeros = np.flatnonzero(labels == 0)[:250]
    drawn = np.random.default_rng(0).choice(300, size=eda_module.PREVIEW_ROWS, replace=False)
    rows = np.concatenate([one, zeros])  # 1s and 0s, the 7 where the seed's first draw falls
    rows = np.insert(rows[: 300 - 1], drawn[0], seven)
    rows[np.setdiff1d(drawn[1:], drawn[0])] = zeros[0]  # the other rows drawn: 0s
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, small_train.images[rows], labels[rows])
    eda_module.augment_preview(csv, tmp_path / "p.png", n=1, seed=0, styles=0.3)
    originals = shown[-1][::2]
    np.testing.assert_array_equal(originals[0], small_train.images[seven])
    assert any((originals == small_train.images[row]).all(axis=(1, 2)).any() for row in one)


def test_augment_preview_out_under_a_file_names_the_file(tmp_path, small_csvs, monkeypatch):
    """augment-preview --out under a regular file had said "cannot be written (File exists)",
    after the augmentations were drawn; other commands name the file in the way, up front:
    before a row of the CSV is read."""
    read = []
    monkeypatch.setattr(eda_module, "_preview_rows", lambda *args: read.append(args))
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("")
    out = in_the_way / "preview.png"
    result = runner.invoke(app, ["augment-preview", str(small_csvs["train"]), "--out", str(out)])
    assert result.exit_code == 1
    assert (
        result.output == f"error: {out}: cannot be written: {in_the_way} is a file, not a folder\n"
    )
    assert read == []


def test_augment_preview_out_a_folder_asks_for_a_files_path(tmp_path, small_csvs):
    """A folder as --out had been "cannot be written (Is a directory)", leaving the fix out."""
    result = runner.invoke(
        app, ["augment-preview", str(small_csvs["train"]), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert (
        result.output
        == f"error: {tmp_path}: a folder, where a file is to be written; give a file's path\n"
    )
