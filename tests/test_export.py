"""ONNX export and the onnxruntime predictor (export.py) against PyTorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from digit_recognizer import export
from digit_recognizer.cli import app as cli_app
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.errors import ModelFileError, OutputError
from digit_recognizer.export import ONNX_FILE, OnnxPredictor, export_onnx, onnx_is_current
from digit_recognizer.models import build
from digit_recognizer.models.storage import save_net
from digit_recognizer.predict import PredictConfig, Predictor


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny run with its model.onnx exported once."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("export") / "run"))
    export_onnx(run_dir)
    return run_dir


def test_onnx_matches_torch_within_1e4(run_dir: Path, small_test: DigitSet) -> None:
    images = small_test.images[:300]
    expected = Predictor.load([run_dir], PredictConfig(amp=False)).predict_proba(images)
    onnx_predictor = OnnxPredictor.load(run_dir)
    probas = onnx_predictor.predict_proba(images)
    assert probas.dtype == np.float32 and probas.shape == (300, 10)
    np.testing.assert_allclose(probas, expected, atol=1e-4)
    np.testing.assert_array_equal(onnx_predictor.predict(images), expected.argmax(axis=1))


def test_deskewing_net_exports_too(tmp_path: Path, small_test: DigitSet) -> None:
    # Its first layer is a per-image grid_sample, which ONNX has had since opset 16.
    save_net(tmp_path, build("cnn-deskew").eval(), "cnn-deskew", {})
    export_onnx(tmp_path)
    images = small_test.images[:100]
    expected = Predictor.load([tmp_path], PredictConfig(amp=False)).predict_proba(images)
    np.testing.assert_allclose(OnnxPredictor.load(tmp_path).predict_proba(images), expected,
                               atol=1e-4)  # fmt: skip


def test_exported_and_saved_files_are_whole_and_readable_by_all(tmp_path: Path) -> None:
    """Written through a temporary file renamed over the target, with a plain open()'s mode
    (mkstemp's 0600, which safetensors also gives a file it writes, would hide them from a
    server running as another user)."""
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    export_onnx(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "model.json", ONNX_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_dynamic_batch_axis(run_dir: Path, small_test: DigitSet) -> None:
    model = onnx.load(run_dir / ONNX_FILE)
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [28, 28]
    # The file says so itself: model.json beside it describes the net's float32 (N, 1, 28, 28).
    recorded = OnnxPredictor.load(run_dir).session.get_modelmeta().custom_metadata_map
    contract = json.loads(recorded["digit_recognizer.preprocessing"])
    assert contract["input"] == "images: uint8 (N, 28, 28), pixels 0-255, white ink on black"
    assert contract["output"] == "probas: float32 (N, 10), the probabilities of digits 0-9"
    meta = json.loads((run_dir / "model.json").read_text())
    assert contract["layout"] == meta["preprocessing"]["layout"]
    predictor = OnnxPredictor(OnnxPredictor.load(run_dir).session, {}, batch_size=7)
    whole = predictor.predict_proba(small_test.images[:20])  # batches of 7, 7 and 6
    assert whole.shape == (20, 10)
    # Each row as the default batch (all 20 at once) scores it, the ragged last batch's too.
    at_once = OnnxPredictor.load(run_dir).predict_proba(small_test.images[:20])
    np.testing.assert_allclose(whole, at_once, atol=1e-6)
    for n in (1, 3):
        np.testing.assert_allclose(
            predictor.predict_proba(small_test.images[:n]), whole[:n], atol=1e-6
        )


def test_the_server_gets_the_threads_it_asks_for_and_an_empty_batch(tmp_path: Path) -> None:
    """`digits serve --backend onnx` runs on ServeConfig's n_threads (1), not one per core;
    a request of no images is answered with no rows."""
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    for n_threads in (1, 3):
        predictor = OnnxPredictor.load(tmp_path, n_threads)
        assert predictor.session.get_session_options().intra_op_num_threads == n_threads
    probas = predictor.predict_proba(np.zeros((0, 28, 28), np.uint8))
    assert probas.shape == (0, 10) and probas.dtype == np.float32


def test_load_exports_when_missing_or_stale(run_dir: Path, tmp_path: Path) -> None:
    fresh = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (fresh / ONNX_FILE).unlink()
    assert not onnx_is_current(fresh)
    OnnxPredictor.load(fresh)
    assert onnx_is_current(fresh)
    weights_time = (fresh / "model.safetensors").stat().st_mtime
    os.utime(fresh / ONNX_FILE, (weights_time - 10, weights_time - 10))
    assert onnx_is_current(fresh)  # by the weights it was exported from, not by dates
    # Other weights, restored with their own (older) date, as `cp -p`, tar or rsync do.
    weights = fresh / "model.safetensors"
    shutil.copy2(weights, tmp_path / "kept.safetensors")
    save_file({key: value + 1 for key, value in load_file(weights).items()}, weights)
    os.utime(weights, (weights_time - 20, weights_time - 20))
    assert not onnx_is_current(fresh)  # re-trained weights make the export stale
    shutil.copy2(tmp_path / "kept.safetensors", weights)
    assert onnx_is_current(fresh)
    # Exported before the hash was recorded: judged by dates, as then (not re-exported at
    # every start, nor failing where the directory is read-only).
    older = onnx.load(fresh / ONNX_FILE)
    del older.metadata_props[:]
    onnx.save(older, fresh / ONNX_FILE)
    assert onnx_is_current(fresh)
    os.utime(fresh / ONNX_FILE, (weights_time - 10, weights_time - 10))
    assert not onnx_is_current(fresh)
    deployed = tmp_path / "deployed"  # model.json and model.onnx, without PyTorch's weights
    deployed.mkdir()
    for name in ("model.json", ONNX_FILE):
        shutil.copy(fresh / name, deployed / name)
    assert onnx_is_current(deployed)
    whole = OnnxPredictor.load(fresh).predict_proba(np.zeros((1, 28, 28), np.uint8))
    alone = OnnxPredictor.load(deployed).predict_proba(np.zeros((1, 28, 28), np.uint8))
    np.testing.assert_array_equal(alone, whole)


def test_an_out_of_date_model_onnx_that_cannot_be_rewritten_is_refused_saying_why(
    run_dir: Path, tmp_path: Path
) -> None:
    """A read-only run whose model.onnx is not from its weights: export's 'model.onnx: read-only'
    had not said that it was out of date, nor why serving it was to write it."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    weights = run / "model.safetensors"
    save_file({key: value + 1 for key, value in load_file(weights).items()}, weights)  # retrained
    (run / ONNX_FILE).chmod(0o444)
    with pytest.raises(OutputError) as error:
        OnnxPredictor.load(run)
    assert str(error.value) == (
        f"{run / ONNX_FILE} is out of date (not exported from the weights model.safetensors "
        "holds now) and cannot be exported as the run loads: read-only (mode 0444); make the "
        f"run writable and run `digits export {run}`, or serve with --backend torch"
    )


def test_corrupt_onnx_file(run_dir: Path, tmp_path: Path) -> None:
    """Beside the weights it came from, a corrupt export is made again; alone (a deployment of
    model.json and model.onnx), it is named."""
    broken = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (broken / ONNX_FILE).write_bytes(b"not a protobuf")
    OnnxPredictor.load(broken)
    assert onnx_is_current(broken)
    (broken / ONNX_FILE).write_bytes(b"not a protobuf")
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"model.onnx: not a loadable ONNX model"):
        OnnxPredictor.load(broken)


@pytest.mark.parametrize(
    ("name", "pixels", "shape", "described"),
    [("input", onnx.TensorProto.FLOAT, ["N", 1, 28, 28], "tensor(float) ['N', 1, 28, 28]"),
     ("images", onnx.TensorProto.UINT8, [1, 28, 28], "tensor(uint8) [1, 28, 28]")],
)  # fmt: skip
def test_a_graph_that_is_not_an_export_of_ours_is_refused_naming_what_it_takes(
    tmp_path: Path, name: str, pixels: int, shape: list[str | int], described: str
) -> None:
    """A deployment's model.onnx from another exporter (float32 (N, 1, 28, 28), or a fixed
    batch) had been served, and failed on its first prediction with onnxruntime's traceback.
    An export older than the metadata that describes the graph is served (above)."""
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    (tmp_path / "model.safetensors").unlink()  # model.json and model.onnx alone
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [name], ["probas"])], "another exporter's",
        [onnx.helper.make_tensor_value_info(name, pixels, shape)],
        [onnx.helper.make_tensor_value_info("probas", pixels, shape)],
    )  # fmt: skip
    opset = onnx.helper.make_opsetid("", export.OPSET)
    path = tmp_path / ONNX_FILE
    onnx.save(onnx.helper.make_model(graph, opset_imports=[opset], ir_version=9), path)
    with pytest.raises(ModelFileError) as refused:
        OnnxPredictor.load(tmp_path)
    assert str(refused.value) == (
        f"{path}: takes {name}: {described} and returns probas: {described}, where an export "
        "of `digits export` takes images: uint8 (N, 28, 28), pixels 0-255, white ink on black "
        "and returns probas: float32 (N, 10), the probabilities of digits 0-9; export it from "
        f"its run: digits export RUN_DIR --out {path}"
    )


def test_probabilities_that_are_not_numbers_are_refused_as_torchs_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A negative batch-norm variance loads, and predicts NaN: Predictor refuses it, and the
    onnx backend had served digit 0 with null probabilities. The export refuses it (it had
    written a model.onnx answering NaN for every digit, exit status 0), before its seconds of
    work; one exported before that check is refused as it predicts."""
    net = build("cnn-tiny").eval()
    next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(-1)
    save_net(tmp_path, net, "cnn-tiny", {})
    damaged = "a model's probabilities are not numbers"
    with pytest.raises(ModelFileError, match=rf"^{tmp_path}: {damaged}"):
        export_onnx(tmp_path)
    assert not (tmp_path / ONNX_FILE).exists()
    monkeypatch.setattr(export, "check_predicts_numbers", lambda *_: None)  # an older export
    images = np.zeros((2, 28, 28), np.uint8)
    images[:, 8:20, 12:16] = 255
    for predictor in (Predictor.load([tmp_path]), OnnxPredictor.load(tmp_path)):
        with pytest.raises(ModelFileError, match=damaged):
            predictor.predict_proba(images)


def test_cli_export(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "digits.onnx"
    result = CliRunner().invoke(
        cli_app, ["export", str(run_dir), "--format", "onnx", "--out", str(out)]
    )
    assert result.exit_code == 0 and out.stat().st_size > 1_000_000  # weights inside the file
    assert f"wrote {out}" in " ".join(result.output.split())
    assert "exported" not in result.output  # said once
    weights = run_dir / "model.safetensors"
    result = CliRunner().invoke(cli_app, ["export", str(run_dir), "--out", str(weights)])
    assert result.exit_code == 1 and "exists and is no .onnx file" in result.output
    assert load_file(weights)  # the run's weights, not replaced by an ONNX file
    result = CliRunner().invoke(cli_app, ["export", str(run_dir), "--format", "tflite"])
    assert result.exit_code == 2 and "unknown format 'tflite'" in result.output
    result = CliRunner().invoke(cli_app, ["export", str(tmp_path)])
    assert result.exit_code == 1 and "model.json: not found" in result.output
    # A file where the run belongs, named as the other commands name it (not as an unwritable
    # FILE/model.onnx).
    result = CliRunner().invoke(cli_app, ["export", str(weights)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{weights}: a file, where a trained run directory belongs" in " ".join(
        result.output.split()
    )


def test_a_failed_export_leaves_the_previous_model_onnx_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved straight to model.onnx, an export that failed part-way (a full disk) left a torn
    file where the last good one was."""
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    previous = b"the previous export"
    (tmp_path / ONNX_FILE).write_bytes(previous)

    def torn_save(self, destination, **kwargs) -> None:
        Path(destination).write_bytes(b"half an ONNX file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", torn_save)
    with pytest.raises(OutputError, match=r"model\.onnx: cannot be written: no space left"):
        export_onnx(tmp_path)
    assert (tmp_path / ONNX_FILE).read_bytes() == previous
    assert not list(tmp_path.glob(".*.tmp"))


def test_weights_replaced_during_the_export_are_not_stamped_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training resumed while the export ran had left an export of the old weights stamped
    with the new ones' hash: current for good, and served stale."""
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    export = torch.onnx.export

    def meanwhile_retrained(*args, **kwargs):
        save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})  # other weights
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", meanwhile_retrained)
    with pytest.raises(OutputError, match=r"model\.safetensors: replaced while it was exported"):
        export_onnx(tmp_path)
    assert not (tmp_path / ONNX_FILE).exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_net(tmp_path, build("cnn-tiny").eval(), "cnn-tiny", {})
    (tmp_path / ONNX_FILE).write_bytes(b"an earlier export")
    (tmp_path / ONNX_FILE).chmod(0o444)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: pytest.fail("exported"))
    with pytest.raises(OutputError, match=r"model\.onnx: read-only"):
        export_onnx(tmp_path)
