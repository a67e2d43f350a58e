"""Grad-CAM and saliency on the trained tiny run; `digits explain` through the CLI."""

import gzip
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from digit_recognizer import predict as predict_module
from digit_recognizer.cli import app
from digit_recognizer.data import stream as stream_module
from digit_recognizer.data.augment import Augmentation, augment_batch
from digit_recognizer.data.images import conform_to_mnist, load_image
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.explain import (
    _as_its_file_reads_it,
    explain_image,
    explain_run,
    explanation_path,
    grad_cam,
    saliency,
)
from digit_recognizer.fileio import MAX_NAME_BYTES
from digit_recognizer.models.nets import Deskew
from digit_recognizer.models.registry import build
from digit_recognizer.models.storage import load_net
from digit_recognizer.predict import PredictConfig, Predictor, conform_rows

from .test_images import SEVEN, SEVENS_BAR, drawn_digit, frame_filling
from .test_predict_evaluate import file_of_ones_and_sevens, ones_read_as_sevens_unless_crossed

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_net(tiny_run)[0]


def test_grad_cam_maps_have_the_image_shape_and_vary(model, small_test):
    images = small_test.images[:12]
    heatmaps = grad_cam(model, images)
    assert heatmaps.shape == (12, 28, 28) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and np.allclose(heatmaps.max(axis=(1, 2)), 1)
    assert (heatmaps.std(axis=(1, 2)) > 0.05).all()  # non-constant on a trained net
    # The heat sits on the digit: more of it on ink than on background.
    ink = images > 64
    assert (heatmaps * ink).sum() / ink.sum() > (heatmaps * ~ink).sum() / (~ink).sum()


def test_grad_cam_layer_and_target_choices(model, small_test):
    images = small_test.images[:4]
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    default = grad_cam(model, images)
    # The last conv read after its batch norm and activation: the features the next layer sees.
    activated = f"{convs[-1].rsplit('.', 1)[0]}.2"
    assert isinstance(dict(model.named_modules())[activated], torch.nn.GELU)
    np.testing.assert_allclose(grad_cam(model, images, layer=activated), default, atol=1e-5)
    assert not np.allclose(grad_cam(model, images, layer=convs[-1]), default, atol=1e-2)
    first = grad_cam(model, images, layer=dict(model.named_modules())[convs[0]])
    assert first.shape == default.shape and not np.allclose(first, default)
    with torch.no_grad():  # as inference code calls it; gradients are switched back on inside
        predicted = model(to_model_input(torch.as_tensor(images))).argmax(1).tolist()
        np.testing.assert_allclose(grad_cam(model, images, target=predicted), default, atol=1e-5)
        others = [(digit + 1) % 10 for digit in predicted]
        per_image = grad_cam(model, images, target=others)
    assert per_image.shape == (4, 28, 28) and not np.allclose(per_image, default)
    with pytest.raises(ValueError, match=f"conv layers: {convs[0]}"):
        grad_cam(model, images, layer="nope")
    linear = next(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match=r"outputs \(10,\) per image, not feature maps"):
        grad_cam(model, images, layer=linear)  # had been an IndexError from its mean
    # torch's index error; 3.7 was taken as 3; True is no digit, though numpy would cast it to 1
    for target in (10, -1, 3.7, [1, 2, 3, 12], True):
        with pytest.raises(ValueError, match="target must be a digit 0-9"):
            grad_cam(model, images, target=target)
    assert not model.training


def test_saliency_is_the_fallback_for_nets_without_convs(small_test):
    torch.manual_seed(0)
    mlp = build("mlp").eval()
    maps = saliency(mlp, small_test.images[:3])
    assert maps.shape == (3, 28, 28) and maps.max() == pytest.approx(1)
    # |d logit[predicted] / d pixel|, by hand one image at a time, each map over its maximum:
    # the gradient has both signs, and a heatmap has no negative heat.
    for image, heatmap in zip(small_test.images[:3], maps, strict=True):
        x = to_model_input(torch.as_tensor(image[None])).requires_grad_()
        logits = mlp(x)[0]
        logits[logits.argmax()].backward()
        gradient = x.grad[0, 0]
        assert gradient.min() < 0 < gradient.max()
        expected = gradient.abs() / gradient.abs().max()
        assert heatmap.min() >= 0
        np.testing.assert_allclose(heatmap, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_cam(mlp, small_test.images[:3]), maps)
    assert explain_image(mlp, small_test.images[0]).method == "saliency"


def test_no_images_get_no_heatmaps_as_they_get_no_probabilities(model):
    # A filter that kept none (the mistakes of a perfect run): torch.cat of no batches had raised.
    none = np.zeros((0, 28, 28), np.uint8)
    assert Predictor.from_models([model]).predict_proba(none).shape == (0, 10)
    for maps in (grad_cam(model, none), saliency(model, none), grad_cam(build("mlp"), none)):
        assert maps.shape == (0, 28, 28) and maps.dtype == np.float32


def test_explain_command_writes_a_png(tiny_run, small_csvs, tmp_path):
    out = tmp_path / "why.png"
    result = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"]), "--index", "3",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Grad-CAM" in result.output and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for suffix, signature in ((".svg", b"<?xml"), (".pdf", b"%PDF")):  # the format it names
        drawn = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"]), "--index",
                                    "3", "--out", str(out.with_suffix(suffix))])  # fmt: skip
        assert drawn.exit_code == 0 and out.with_suffix(suffix).read_bytes().startswith(signature)
    unknown = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"]), "--index",
                                  "3", "--out", str(tmp_path / "why.docx")])  # fmt: skip
    assert unknown.exit_code == 1 and "why.docx: cannot draw a figure as .docx" in unknown.output
    wrong = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"]), "--index",
                                "1000"])  # fmt: skip
    assert wrong.exit_code == 1
    assert "has 1,000 rows; --index must be 0 to 999" in wrong.output
    from_the_end = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"]),
                                       "--index", "-1"])  # fmt: skip
    assert from_the_end.exit_code == 1 and "--index must be 0 to 999" in from_the_end.output
    no_index = runner.invoke(app, ["explain", str(tiny_run), str(small_csvs["test"])])
    assert (
        no_index.exit_code == 1 and "holds 1,000 digits; pick one with --index" in no_index.output
    )


def test_explain_refuses_its_out_before_reading_the_net_and_rows(
    small_csvs, small_test, tmp_path, monkeypatch
):
    """--out had been checked only when the figure was drawn, after the net and the rows were
    read (minutes for a large CSV), and drawn over the very image it explained."""

    def unread(*_args, **_kwargs):
        raise AssertionError("read before --out was checked")

    for reader in ("load_net", "load_image", "_first_rows_and_row"):
        monkeypatch.setattr(f"digit_recognizer.explain.{reader}", unread)
    photo = tmp_path / "digit.png"
    Image.fromarray(small_test.images[3]).save(photo)
    (tmp_path / "notes").write_text("")
    refused = {
        tmp_path / "why.docx": "why.docx: cannot draw a figure as .docx",
        tmp_path / "notes" / "why.png": f"cannot be written: {tmp_path / 'notes'} is a file",
        photo: "digit.png: is the image to explain; write the figure to another --out",
    }
    for out, message in refused.items():
        source = photo if out == photo else small_csvs["test"]
        index = [] if out == photo else ["--index", "3"]
        result = runner.invoke(app, ["explain", str(tmp_path / "run"), str(source), *index,
                                     "--out", str(out)])  # fmt: skip
        assert result.exit_code == 1 and message in " ".join(result.output.split()), out
    assert np.array_equal(np.asarray(Image.open(photo)), small_test.images[3])


def test_a_run_directory_where_the_digits_belong_is_named(tiny_run, small_csvs, tmp_path):
    """Arguments swapped, or the CSV forgotten after an ensemble's runs: said as such, not as
    a shard directory without its manifest."""
    for args in (["predict", tiny_run, tiny_run], ["evaluate", small_csvs["train"], tiny_run],
                 ["explain", small_csvs["test"], tiny_run, "--index", "3"]):  # fmt: skip
        result = runner.invoke(app, [str(arg) for arg in args])
        assert result.exit_code == 1
        assert f"{tiny_run}: a run directory, where the digits belong" in result.output
    ensemble = tmp_path / "ensemble"  # its ensemble.json alone, no model.json
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(f'{{"members": ["{tiny_run}"]}}')
    result = runner.invoke(app, ["predict", str(tiny_run), str(ensemble)])
    assert result.exit_code == 1
    assert f"{ensemble}: a run directory, where the digits belong" in result.output


def test_explain_an_image_file(tiny_run, small_test, tmp_path):
    """A user's own digit: read as predict-image reads it, no --index."""
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")  # the PNG goes into the run
    photo = tmp_path / "my digit.png"
    Image.fromarray(255 - np.kron(small_test.images[3], np.ones((4, 4), np.uint8))).save(photo)
    result = runner.invoke(app, ["explain", str(run_dir), str(photo)])
    assert result.exit_code == 0, result.output
    (figure,) = run_dir.glob("explain-my_digit-png-*.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predicted = int(result.output.split("predicted ")[1].split()[0])
    assert predicted == Predictor.load([run_dir]).predict(load_image(photo)[None])[0]
    wrong = runner.invoke(app, ["explain", str(run_dir), str(photo), "--index", "0"])
    assert wrong.exit_code == 1 and "--index picks a row of a CSV" in wrong.output
    # --as-is had been ignored: the photo explained redone as MNIST's, as if it were not given.
    as_is = runner.invoke(app, ["explain", str(run_dir), str(photo), "--as-is"])
    assert as_is.exit_code == 1
    assert f"{photo}: --as-is takes a CSV's rows in their own layout" in as_is.output


def test_explain_names_the_figures_of_two_images_of_one_name_apart(tiny_run, small_test, tmp_path):
    """photo.png and photo.jpg had both been drawn to RUN_DIR/explain-photo.png, the second
    over the first."""
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    written = {}
    for suffix, row in ((".png", 3), (".jpg", 4)):
        photo = tmp_path / f"photo{suffix}"  # a white sheet, as a scan or a photo is
        digit = 255 - np.kron(small_test.images[row], np.ones((4, 4), np.uint8))
        Image.fromarray(digit).save(photo)
        result = runner.invoke(app, ["explain", str(run_dir), str(photo)])
        assert result.exit_code == 0, result.output
        written[suffix] = run_dir / f"explain-photo-{suffix[1:]}.png"
        assert result.output.rstrip().endswith(f" -> {written[suffix]}")
    assert written[".png"].read_bytes() != written[".jpg"].read_bytes()
    assert explanation_path(run_dir, tmp_path / "photo", None).name == "explain-photo.png"


def test_explain_names_its_figure_after_the_csv_and_row(tiny_run, small_test, tmp_path):
    """Row 3 of two CSVs had both been drawn to RUN_DIR/explain-3.png, the second over the
    first; the path printed is the one written."""
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    written = {}
    for name, rows in (("valid", slice(0, 10)), ("test", slice(10, 20))):
        csv = tmp_path / f"{name}.csv"
        write_kaggle_csv(csv, small_test.images[rows], small_test.labels[rows])
        result = runner.invoke(app, ["explain", str(run_dir), str(csv), "--index", "3"])
        assert result.exit_code == 0, result.output
        written[name] = run_dir / f"explain-{name}-row3.png"
        assert result.output.rstrip().endswith(f" -> {written[name]}")
    assert written["valid"].read_bytes() != written["test"].read_bytes()
    assert explanation_path(run_dir, tmp_path / "shards" / "manifest.json", 3) == (
        run_dir / "explain-shards-row3.png"
    )
    assert re.fullmatch(
        r"explain-part-_-[0-9a-f]{8}-row0\.png",
        explanation_path(run_dir, tmp_path / "part-*.csv", 0).name,
    )


def test_explain_names_a_figure_with_no_character_a_shell_or_a_glob_reads(tmp_path):
    """A CSV's name with a space, a quote or a glob's wildcard had gone into the figure's
    (explain-my digits-row3.png, one to quote in a shell); the glob of a directory's CSVs had
    been drawn to explain-_-row3.png, a name of nothing. A name so rewritten is followed by 8
    hex digits of a hash of the name as given, which tell it from the name typed with _."""
    run_dir = tmp_path / "run"
    hashed = "-[0-9a-f]{8}"
    named = {
        "my digits.csv": f"explain-my_digits{hashed}-row3.png",
        "it's.csv": f"explain-it_s{hashed}-row3.png",
        'say "3".csv': f"explain-say_3_{hashed}-row3.png",
        "a*b.csv": f"explain-a_b{hashed}-row3.png",
        "scan [1].csv": f"explain-scan_1_{hashed}-row3.png",
        "-.csv": "explain---row3.png",
        "données.csv": "explain-données-row3.png",
        "part-*.csv": f"explain-part-_{hashed}-row3.png",
        "*.csv": "explain-kaggle-row3.png",  # a glob of the folder's CSVs: named after it
    }
    folder = tmp_path / "kaggle"
    folder.mkdir()
    for source, figure in named.items():
        path = explanation_path(run_dir, folder / source, 3)
        assert path.parent == run_dir and re.fullmatch(figure.replace(".", r"\."), path.name)
    (folder / "my digits").mkdir()  # a shard directory
    assert re.fullmatch(
        rf"explain-my_digits{hashed}-row3\.png",
        explanation_path(run_dir, folder / "my digits" / "manifest.json", 3).name,
    )
    assert re.fullmatch(
        rf"explain-my_digit-png{hashed}\.png",
        explanation_path(run_dir, folder / "my digit.png", None).name,
    )


def test_explain_draws_two_names_that_differ_only_in_characters_written_as_an_underscore_apart(
    tiny_run, small_test, tmp_path
):
    """'my digit.png' and 'my_digit.png' had both been drawn to explain-my_digit-png.png, the
    second over the first without a word; so had row 3 of 'a b.csv', 'a  b.csv' and 'a_b.csv'.
    A name that needs no rewriting keeps its figure's name."""
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    written = []
    for name, row in (("my digit.png", 3), ("my_digit.png", 4)):
        photo = tmp_path / name
        Image.fromarray(255 - np.kron(small_test.images[row], np.ones((4, 4), np.uint8))).save(
            photo
        )
        result = runner.invoke(app, ["explain", str(run_dir), str(photo)])
        assert result.exit_code == 0, result.output
        written.append(Path(result.output.rstrip().rsplit(" -> ", 1)[1]))
    assert written[1] == run_dir / "explain-my_digit-png.png"
    assert written[0] != written[1] and written[0].name.startswith("explain-my_digit-")
    assert written[0].read_bytes() != written[1].read_bytes()  # the first was not drawn over
    rows = {
        explanation_path(run_dir, tmp_path / name, 3) for name in ("a b.csv", "a  b.csv", "a_b.csv")
    }
    assert len(rows) == 3 and run_dir / "explain-a_b-row3.png" in rows
    # The same name is the same figure each time: explaining it again replaces its own.
    assert explanation_path(run_dir, tmp_path / "my digit.png", None) == written[0]


def test_explain_cuts_a_long_name_to_a_figure_name_the_file_system_takes(
    tiny_run, small_test, tmp_path
):
    """An image or CSV whose name was over ~240 bytes had a default figure name too long for
    the file system, and explain failed to write it. Cut, at a whole character of a name in
    UTF-8, the name ends in a hash of the name given: two names alike up to the cut are two
    figures. A name that fits the file system's 255 bytes is kept whole."""
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    photo = tmp_path / f"{'a' * 240}.png"
    Image.fromarray(255 - np.kron(small_test.images[3], np.ones((4, 4), np.uint8))).save(photo)
    result = runner.invoke(app, ["explain", str(run_dir), str(photo)])
    assert result.exit_code == 0, result.output
    (figure,) = run_dir.glob("explain-aaaa*.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert re.fullmatch(r"explain-a{200,}-[0-9a-f]{8}\.png", figure.name)
    assert len(figure.name) == MAX_NAME_BYTES == 255
    for long in ("字" * 80, "é" * 119, "b" * 250):  # 3- and 2-byte characters, cut in two
        paths = {explanation_path(run_dir, tmp_path / f"{long}{end}.csv", 123) for end in "xy"}
        assert len(paths) == 2
        for path in paths:
            assert len(path.name.encode()) <= MAX_NAME_BYTES
            assert path.name.startswith(f"explain-{long[:50]}")
            assert re.search(r"-[0-9a-f]{8}-row123\.png$", path.name)
    fits = "c" * (MAX_NAME_BYTES - len("explain--row3.png"))
    assert explanation_path(run_dir, tmp_path / f"{fits}.csv", 3).name == f"explain-{fits}-row3.png"


def test_explain_sees_a_csv_row_as_predict_does(tiny_run, small_test, tmp_path):
    """A row from another collection's layout is explained conformed, as `digits predict` reads
    it, unless --as-is."""
    foreign = np.stack([frame_filling(image) for image in small_test.images[:3]])
    foreign_csv = tmp_path / "foreign.csv"
    write_kaggle_csv(foreign_csv, foreign)
    conformed = explain_run(tiny_run, foreign_csv, 2, tmp_path / "a.png")
    np.testing.assert_array_equal(conformed.image, conform_to_mnist(foreign)[0][2])
    as_is = explain_run(tiny_run, foreign_csv, 2, tmp_path / "b.png", conform=False)
    np.testing.assert_array_equal(as_is.image, foreign[2])
    result = runner.invoke(app, ["explain", str(tiny_run), str(foreign_csv), "--index", "2",
                                 "--as-is", "--out", str(tmp_path / "c.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"predicted {as_is.predicted} " in result.output
    # A file stored transposed (EMNIST's layout) is read upright, as predict reads it.
    transposed_csv = tmp_path / "transposed.csv"
    write_kaggle_csv(transposed_csv, small_test.images[:300].transpose(0, 2, 1))
    upright = explain_run(tiny_run, transposed_csv, 7, tmp_path / "d.png")
    np.testing.assert_array_equal(upright.image, small_test.images[7])


def test_explain_reads_a_file_whose_name_says_csv_as_rows_as_the_other_commands_do(
    tiny_run, small_test, tmp_path
):
    """A CSV named '.csv' or '.CSV' (Path.suffix '') had been read as an image ("--index picks
    a row of a CSV"), and a gzipped 'rows.csv.gz' been told only that it is no image; now the
    first two are explained as rows, and the third is refused as `digits predict` refuses it."""
    for name in (".csv", ".CSV"):
        csv = tmp_path / name.lstrip(".") / name
        csv.parent.mkdir()
        write_kaggle_csv(csv, small_test.images[:5], small_test.labels[:5])
        explanation = explain_run(tiny_run, csv, 3, tmp_path / f"{name[1:]}.png")
        np.testing.assert_array_equal(explanation.image, small_test.images[3])
        assert explanation.label == small_test.labels[3]
    gzipped = tmp_path / "rows.csv.gz"
    gzipped.write_bytes(gzip.compress((tmp_path / "csv" / ".csv").read_bytes()))
    predicted = runner.invoke(app, ["predict", str(tiny_run), str(gzipped)])
    explained = runner.invoke(app, ["explain", str(tiny_run), str(gzipped), "--index", "3",
                                    "--out", str(tmp_path / "gz.png")])  # fmt: skip
    refusal = f"{gzipped}: gzip-compressed, not CSV text; gunzip it first"
    assert predicted.exit_code == explained.exit_code == 1
    assert refusal in predicted.output and refusal in explained.output


def test_explain_conforms_the_row_it_shows_and_a_sample_not_the_whole_file(
    tiny_run, small_test, tmp_path, monkeypatch
):
    """Every row of the CSV had been conformed to show one: minutes for a large file off
    MNIST's layout. A file's ink votes come from a sample, its orientation from another."""
    import digit_recognizer.predict as predict_module

    foreign = np.stack([frame_filling(image) for image in small_test.images[:60]]).transpose(
        0, 2, 1
    )
    foreign_csv = tmp_path / "foreign.csv"
    write_kaggle_csv(foreign_csv, foreign)
    model = load_net(tiny_run)[0]
    judge = Predictor.from_models([model], PredictConfig()).layout_judge
    expected = conform_rows(foreign, PredictConfig(), foreign_csv, judge)[7]
    monkeypatch.setattr(predict_module, "JUDGED_SAMPLE", 16)
    n_conformed = []

    def counted(images, votes=None, n_voting=None):
        n_conformed.append(len(images))
        return conform_to_mnist(images, votes, n_voting)

    monkeypatch.setattr(predict_module, "conform_to_mnist", counted)
    explanation = explain_run(tiny_run, foreign_csv, 7, tmp_path / "a.png")
    assert sorted(n_conformed) == [1, 16]  # the row shown, and the orientation's sample
    np.testing.assert_array_equal(explanation.image, expected)


def test_grad_cam_of_a_deskewing_net_lies_over_the_digit_as_written(mnist):
    only_shear = Augmentation(
        rotation_deg=0, scale=0, shear=0.4, translate_px=0, contrast=0, stroke=0
    )
    x = to_model_input(torch.as_tensor(mnist.images[:16]))
    slanted = augment_batch(x, only_shear, torch.Generator().manual_seed(0))
    images = (slanted[:, 0] * 255).round().to(torch.uint8).numpy()
    # A net whose Grad-CAM is exactly what its convolution saw: the deskewed digit.
    conv, head = torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.Linear(784, 10, bias=False)
    torch.nn.init.ones_(conv.weight), torch.nn.init.ones_(head.weight)
    model = torch.nn.Sequential(Deskew(), conv, torch.nn.Flatten(), head)
    heatmaps = grad_cam(model, images)
    upright = Deskew()(to_model_input(torch.as_tensor(images)))[:, 0]

    def correlation(a, b) -> float:
        return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])

    for heatmap, image, straightened in zip(heatmaps, images, upright.numpy(), strict=True):
        assert correlation(heatmap, image) > 0.95
        assert correlation(heatmap, image) > correlation(heatmap, straightened)


class SharedActivation(torch.nn.Module):
    """One ReLU module after the conv and after the dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.act(self.conv(x))
        return self.act(self.fc(features.amax(dim=(2, 3))))


def test_grad_cam_reads_an_activation_module_the_net_calls_twice_after_the_conv(small_test):
    """Its last call's output, the dense layer's (N, 10), had been taken for the features."""
    net = SharedActivation().eval()
    heatmaps = grad_cam(net, small_test.images[:2])
    assert heatmaps.shape == (2, 28, 28) and np.isfinite(heatmaps).all()


def test_grad_cam_reads_the_activation_past_an_identity_after_the_conv(small_test):
    """A net whose conv is followed by an nn.Identity (a switched-off norm) and then its
    activation: the features are read after the activation, as with a batch norm there."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Identity(),
                              torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 28 * 28, 10)).eval()  # fmt: skip
    images = small_test.images[:3]
    np.testing.assert_allclose(grad_cam(net, images), grad_cam(net, images, layer="2"), atol=1e-6)
    assert not np.allclose(grad_cam(net, images, layer="0"), grad_cam(net, images), atol=1e-2)


def test_a_net_that_looks_nowhere_gets_blank_heatmaps(small_test):
    """All-zero maps stay zero when scaled to their maximum, not 0 / 0 = NaN."""
    torch.manual_seed(0)
    net = build("cnn-tiny").eval()
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.zero_()
    heatmaps = grad_cam(net, small_test.images[:2])
    assert heatmaps.shape == (2, 28, 28) and not heatmaps.any()


def test_grad_cam_shows_features_for_the_digit_not_those_against_it(small_test):
    """Grad-CAM's ReLU (Selvaraju et al.): where the weighted features lower the target's logit
    there is no heat, rather than heat as for those that raise it. Here they are 0.5 less the
    ink (0-1), and every one adds to digit 0's logit: the paper is for a 0, full ink against."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Flatten(),
                              torch.nn.Linear(784, 10, bias=False))  # fmt: skip
    with torch.no_grad():
        net[0].weight.fill_(-1)
        net[0].bias.fill_(0.5)
        net[2].weight.fill_(1)
    images = small_test.images[:2]
    heatmaps = grad_cam(net, images, target=0, layer="0")
    assert (heatmaps[images == 0] == 1).all() and (heatmaps[images == 255] == 0).all()


def test_grad_cam_targets_follow_their_images_across_batches(model, small_test, monkeypatch):
    """One target per image stays with its image past the first batch (batches of 2 here)."""
    images = small_test.images[:5]
    targets = [3, 1, 4, 1, 5]
    alone = np.concatenate([grad_cam(model, image[None], target=t)
                            for image, t in zip(images, targets, strict=True)])  # fmt: skip
    monkeypatch.setattr("digit_recognizer.explain.BATCH_SIZE", 2)
    np.testing.assert_allclose(grad_cam(model, images, target=targets), alone, atol=1e-5)


def test_grad_cam_rejects_a_layer_of_another_model_and_restores_training_mode(small_test):
    """A conv of another net never runs, so its hook would capture nothing: refused by name.
    A net in training keeps training after the explanation switched it to eval."""
    torch.manual_seed(0)
    net, other = build("cnn-tiny"), build("cnn-tiny")
    stranger = next(m for m in other.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError, match="layer is not a module of this model"):
        grad_cam(net, small_test.images[:2], layer=stranger)
    net.train()
    grad_cam(net, small_test.images[:2])
    assert net.training


def test_explain_image_maps_the_digit_its_probabilities_predict(model, small_test, monkeypatch):
    """The heatmap is of the predicted digit even where grad_cam's own fp32 pass would pick
    another (a near tie): here the probabilities are made to favour a digit it does not."""
    image = small_test.images[0]
    with torch.no_grad():
        own = int(model(to_model_input(torch.as_tensor(image[None]))).argmax())
    favoured = (own + 1) % 10
    probas = np.full((1, 10), 0.01, np.float32)
    probas[0, favoured] = 0.91

    class Fixed:
        def predict_proba(self, _images):
            return probas

    monkeypatch.setattr(Predictor, "from_models", staticmethod(lambda _models: Fixed()))
    explanation = explain_image(model, image)
    assert explanation.predicted == favoured
    expected = grad_cam(model, image[None], target=favoured)[0]
    np.testing.assert_allclose(explanation.heatmap, expected, atol=1e-5)


def test_explain_run_keeps_the_label_of_a_labelled_row(tiny_run, small_csvs, small_train, tmp_path):
    """A train.csv row is explained with its true digit (shown in the title as `true N`)."""
    explanation = explain_run(tiny_run, small_csvs["train"], 5, tmp_path / "why.png")
    assert explanation.label == int(small_train.labels[5])


def test_explain_parses_the_first_rows_and_the_row_shown_not_the_whole_file(
    tiny_run, small_test, tmp_path, monkeypatch
):
    """A 562 MB CSV had been read whole (3 GB at the peak) to show one row: only the rows that
    judge the file's layout and the piece holding the row are parsed, and the row is shown as
    when the whole file was read. A pipe, read once, is read whole."""
    import digit_recognizer.data.kaggle_csv as kaggle_csv_module
    import digit_recognizer.data.shards as shards_module
    import digit_recognizer.data.stream as stream_module

    foreign = np.stack([frame_filling(image) for image in small_test.images[:400]])
    foreign_csv = tmp_path / "foreign.csv"
    write_kaggle_csv(foreign_csv, foreign)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 64)  # the rows judging it, and those read
    monkeypatch.setattr(shards_module, "CHUNK_BYTES", 16 << 10)  # pieces of ~10 rows
    judge = Predictor.load([tiny_run]).layout_judge
    expected = conform_rows(foreign, PredictConfig(), foreign_csv, judge)[350]
    parsed, parse_body = [], kaggle_csv_module.parse_body

    def counted(body, *args, **kwargs):
        parsed.append(len(data := parse_body(body, *args, **kwargs)))
        return data

    for module in (kaggle_csv_module, shards_module):  # a file read whole, or in pieces
        monkeypatch.setattr(module, "parse_body", counted)
    explanation = explain_run(tiny_run, foreign_csv, 350, tmp_path / "a.png")
    np.testing.assert_array_equal(explanation.image, expected)
    assert 64 < sum(parsed) < 100  # the first 64 rows, and the pieces holding them and row 350
    fifo = tmp_path / "rows.csv"  # what `digits explain RUN <(gzip -dc test.csv.gz)` is given
    os.mkfifo(fifo)
    writer = threading.Thread(
        target=lambda: fifo.write_bytes(foreign_csv.read_bytes()), daemon=True
    )
    writer.start()
    try:
        from_a_pipe = explain_run(tiny_run, fifo, 350, tmp_path / "b.png")
    finally:  # failing before it opened the pipe, it would leave the writer waiting forever
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=30)
    np.testing.assert_array_equal(from_a_pipe.image, expected)


def test_explain_keeps_a_names_dots_and_names_a_relative_glob_after_its_folder(
    tmp_path, monkeypatch
):
    """A name's dots are kept (no shell or glob reads them); '*.csv' typed inside the folder
    of its CSVs is named after that folder, as 'kaggle/*.csv' is, not drawn to an empty name."""
    run_dir = tmp_path / "run"
    assert explanation_path(run_dir, tmp_path / "mnist.v2.csv", 3).name == (
        "explain-mnist.v2-row3.png"
    )
    assert explanation_path(run_dir, tmp_path / "scan.2.png", None).name == (
        "explain-scan.2-png.png"
    )
    folder = tmp_path / "kaggle"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert explanation_path(run_dir, Path("*.csv"), 3) == run_dir / "explain-kaggle-row3.png"


def test_explain_reads_a_row_as_predict_reads_a_file_whose_writers_cross_their_sevens(
    model, tiny_run, tmp_path, monkeypatch, caplog
):
    """A continental 1 the net reads as 7, else 1, in a file sorted by digit whose crossed 7s
    all lie past the rows that judge its layout: explained as `digits predict` reads it, a 1
    (the heatmap of the 1; the net's 7 said), where it had been explained as the net's 7. In a
    file of uncrossed 7s, or --as-is, as the net reads it."""
    monkeypatch.setattr(Predictor, "predict_proba", ones_read_as_sevens_unless_crossed)
    monkeypatch.setattr(stream_module, "STREAM_ROWS", 8)  # the 7s in the last pieces
    n_sevens = predict_module.MIN_SURE_SEVENS
    crossed_csv, uncrossed_csv = tmp_path / "crossed.csv", tmp_path / "uncrossed.csv"
    for csv, seven in ((crossed_csv, drawn_digit(*SEVEN, SEVENS_BAR)),
                       (uncrossed_csv, drawn_digit(*SEVEN))):  # fmt: skip
        write_kaggle_csv(csv, file_of_ones_and_sevens(seven, n_sevens, np.zeros(10))[0])
    with caplog.at_level("WARNING"):
        reread = explain_run(tiny_run, crossed_csv, 3, tmp_path / "a.png")
    assert (reread.predicted, reread.net_predicted) == (1, 7)
    assert f"{crossed_csv}, row 3: the writers cross their 7s" in caplog.text
    expected = grad_cam(model, reread.image[None], target=1)[0]
    np.testing.assert_allclose(reread.heatmap, expected, atol=1e-5)
    for csv, conform in ((uncrossed_csv, True), (crossed_csv, False)):
        as_the_net = explain_run(tiny_run, csv, 3, tmp_path / "b.png", conform=conform)
        assert (as_the_net.predicted, as_the_net.net_predicted) == (7, None)
    result = runner.invoke(app, ["explain", str(tiny_run), str(crossed_csv), "--index", "3",
                                 "--out", str(tmp_path / "c.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "predicted 1 (" in result.output
    assert "the net's 7, read as its file is" in result.output
    # A pipe's rows, read once, are judged as they were read, not read again.
    rows = file_of_ones_and_sevens(drawn_digit(*SEVEN, SEVENS_BAR), n_sevens, np.zeros(10))[0]
    predictor = Predictor.from_models([model])
    reading = _as_its_file_reads_it(tmp_path / "gone.csv", 3, rows[3], predictor,
                                    PredictConfig(), DigitSet(rows, None))  # fmt: skip
    assert reading is not None and reading.argmax() == 1
