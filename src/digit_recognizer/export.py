"""ONNX export and an onnxruntime predictor, for deployment without PyTorch.

    digits export runs/cnn --format onnx              # writes runs/cnn/model.onnx
    digits serve runs/cnn --backend onnx               # serves it (exports first if needed)

The exported graph takes what every stage of this package hands a model, uint8 images
(N, 28, 28) with N dynamic, and returns probabilities (N, 10): the uint8 -> [0, 1] conversion
(``to_model_input``) and the MNIST normalisation travel inside the graph, so a deployment feeds
raw pixels and cannot get the preprocessing wrong. Probabilities match PyTorch in fp32 within
1e-4 (``tests/test_export.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from digit_recognizer.data.images import check_images
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.errors import ConfigError, ModelFileError, OutputError
from digit_recognizer.fileio import atomic_path, check_can_write, sha256_file
from digit_recognizer.models.storage import PREPROCESSING, WEIGHTS_FILE, load_net, read_meta
from digit_recognizer.predict import check_predicts_numbers, check_probabilities

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
WEIGHTS_HASH_KEY = "digit_recognizer.weights_sha256"  # metadata: the weights it was exported from
INPUT_NAME = "images"
OUTPUT_NAME = "probas"
OPSET = 18
# What the exported graph takes and returns, as model.json's "preprocessing" says it for the
# net (float32 (N, 1, 28, 28)): kept in the file's metadata under PREPROCESSING_KEY, where a
# deployment holding model.onnx finds it (onnxruntime's get_modelmeta().custom_metadata_map).
PREPROCESSING_KEY = "digit_recognizer.preprocessing"
ONNX_PREPROCESSING = {
    "input": f"{INPUT_NAME}: uint8 (N, 28, 28), pixels 0-255, white ink on black",
    "output": f"{OUTPUT_NAME}: float32 (N, 10), the probabilities of digits 0-9",
    "layout": PREPROCESSING["layout"],
    "normalisation": PREPROCESSING["normalisation"],  # the /255 inside the graph too
}


class ProbabilityNet(nn.Module):
    """uint8 images (N, 28, 28) -> probabilities (N, 10): the function the ONNX file holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_model_input(images)).softmax(dim=1)


def export_onnx(run_dir: Path, out: Path | None = None) -> Path:
    """Export the run's net to ONNX (default ``RUN_DIR/model.onnx``) with a dynamic batch axis."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / ONNX_FILE
    if out.exists() and out.suffix != ".onnx":  # the run's weights, a CSV: not ours to replace
        raise ConfigError(f"{out} exists and is no .onnx file; give --out a new path or one "
                          "ending .onnx")  # fmt: skip
    # Hashed before the weights are read and checked once exported: a training resumed
    # meanwhile would otherwise leave an export of the old weights, stamped current for the new.
    weights_hash = None
    with contextlib.suppress(OSError):  # missing or unreadable: load_net says so, naming it
        weights_hash = sha256_file(run_dir / WEIGHTS_FILE)
    # The run first, as every command checks it, else a file given as RUN_DIR is named as a
    # model.onnx that cannot be written inside it.
    model, _ = load_net(run_dir)
    check_can_write(out)  # before the export's ten seconds
    # Imported whole before the export, which imports it lazily: Ctrl-C during that import leaves
    # it half made, and the exporter, reaching for torch._dynamo.exc in its own error handling,
    # turns the interruption into a page-long TorchExportError.
    import torch._dynamo

    net = ProbabilityNet(model).eval()
    # Not exported to answer NaN for every digit wherever it is deployed (a damaged net)
    check_predicts_numbers(
        lambda images: check_probabilities(net(torch.as_tensor(images)).detach().numpy()), run_dir
    )
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    # The torch.export-based exporter (PyTorch >= 2.9 default, needs onnxscript); the weights are
    # embedded (external_data=False) so the model is one self-contained file.
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if sha256_file(run_dir / WEIGHTS_FILE) != weights_hash:
        raise OutputError(f"{run_dir / WEIGHTS_FILE}: replaced while it was exported (a training "
                          "writing it?); export again once it is done")  # fmt: skip
    program.model.metadata_props[WEIGHTS_HASH_KEY] = weights_hash
    program.model.metadata_props[PREPROCESSING_KEY] = json.dumps(ONNX_PREPROCESSING)
    with atomic_path(out) as tmp:  # a torn file would pass onnx_is_current's check
        program.save(tmp, external_data=False)
    return out


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter: ~40 INFO lines of graph passes, warnings about torchvision
    ops this net does not use, and a FutureWarning from inside torch."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def onnx_is_current(run_dir: Path) -> bool:
    """Whether ``RUN_DIR/model.onnx`` exists and was exported from the run's weights, if it has
    any (model.json and model.onnx alone are a deployment's whole model): by their SHA-256,
    which the export records, not by dates, which ``cp -p``, tar and rsync carry over (an
    export older than that record is judged by dates still)."""
    onnx_path, weights = Path(run_dir) / ONNX_FILE, Path(run_dir) / WEIGHTS_FILE
    if not onnx_path.exists():
        return False
    if not weights.exists():
        return True
    import onnx  # 0.7 s to import: not for the torch backend's server, which imports this module

    try:
        recorded = {prop.key: prop.value for prop in onnx.load(onnx_path).metadata_props}
    except Exception:  # onnx raises its own untyped errors on a bad file: export it anew
        return False
    if WEIGHTS_HASH_KEY not in recorded:  # exported before the hash was: by dates, as then
        return onnx_path.stat().st_mtime >= weights.stat().st_mtime
    return recorded[WEIGHTS_HASH_KEY] == sha256_file(weights)


def _export_anew(run_dir: Path, path: Path) -> None:
    """Export the run to ``path`` for ``OnnxPredictor.load``; where it cannot be written (a
    read-only run, most often), ``OutputError`` says why it was to be, which export's does not."""
    state = (f"out of date (not exported from the weights {WEIGHTS_FILE} holds now)"
             if path.exists() else "missing")  # fmt: skip
    try:
        log.info("exported %s to %s (%s)", run_dir, export_onnx(run_dir), state)
    except OutputError as error:
        if not str(error).startswith(f"{path}: "):  # the weights replaced meanwhile, say
            raise
        # Its fix ("give another path") is not this one's.
        cannot = str(error).removeprefix(f"{path}: ").split("; ")[0]
        raise OutputError(
            f"{path} is {state} and cannot be exported as the run loads: {cannot}; make the run "
            f"writable and run `digits export {run_dir}`, or serve with --backend torch"
        ) from None


def _check_signature(session: Any, path: Path) -> None:
    """``ModelFileError`` unless the graph in ``path`` takes and returns what
    ``ONNX_PREPROCESSING`` says, as ``GET /model`` reports it: one from another exporter
    (float32 (N, 1, 28, 28), its input named otherwise, a fixed batch) would fail on its first
    prediction with onnxruntime's traceback.

    The graph is checked, not the metadata that describes it: every version of ``export_onnx``
    wrote this graph, and a file exported before the metadata was is served as it is, neither
    made again (a read-only directory, as in ``onnx_is_current``) nor refused (a deployment
    without the weights could not export it again)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    # onnxruntime gives a named dimension as its name: any size, as the batch axis must be
    found = [(arg.name, arg.type, [None if isinstance(d, str) else d for d in arg.shape])
             for arg in [*inputs, *outputs]]  # fmt: skip
    expected = [(INPUT_NAME, "tensor(uint8)", [None, 28, 28]),
                (OUTPUT_NAME, "tensor(float)", [None, 10])]  # fmt: skip
    if found != expected:
        takes, returns = (", ".join(f"{arg.name}: {arg.type} {arg.shape}" for arg in args)
                          for args in (inputs, outputs))  # fmt: skip
        raise ModelFileError(
            f"{path}: takes {takes} and returns {returns}, where an export of `digits export` "
            f"takes {ONNX_PREPROCESSING['input']} and returns {ONNX_PREPROCESSING['output']}; "
            f"export it from its run: digits export RUN_DIR --out {path}"
        )


@dataclass
class OnnxPredictor:
    """onnxruntime inference with the interface of ``predict.Predictor`` (fp32, CPU)."""

    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]
    batch_size: int = 1024

    @classmethod
    def load(cls, run_dir: Path, n_threads: int = 0) -> OnnxPredictor:
        """Load ``RUN_DIR/model.onnx``, exporting it first when missing or not from the weights.

        ``n_threads`` sets onnxruntime's intra-op threads (0: its default, one per core).
        """
        import onnxruntime as ort

        run_dir = Path(run_dir)
        meta = read_meta(run_dir)
        path = run_dir / ONNX_FILE
        if not onnx_is_current(run_dir):
            _export_anew(run_dir, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors on bad files
            raise ModelFileError(f"{path}: not a loadable ONNX model ({error})") from None
        _check_signature(session, path)
        return cls(session, meta)

    @property
    def layout_judge(self) -> Callable[[NDArray[np.uint8]], NDArray[np.float32]]:
        """As ``Predictor.layout_judge``: an ONNX model is a net, so ``predict_proba``."""
        return self.predict_proba

    def predict_proba(self, images: ArrayLike) -> NDArray[np.float32]:
        """Class probabilities (N, 10) for images as ``Predictor.predict_proba`` takes them."""
        images = np.ascontiguousarray(check_images(images))
        batches = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            for batch in np.split(images, range(self.batch_size, len(images), self.batch_size))
        ]
        # Checked as Predictor's are, else NaN served answers digit 0 with null probabilities.
        return check_probabilities(np.concatenate(batches))  # np.split gives 1 batch at least

    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.int64]:
        """Predicted digits (N,) for uint8 images (N, 28, 28)."""
        return self.predict_proba(images).argmax(axis=1).astype(np.int64)
