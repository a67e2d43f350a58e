"""Inference: probabilities from one or several run directories, test-time augmentation,
and Kaggle submissions.

    digits predict runs/cnn test.csv --out submission.csv
    digits predict runs/a runs/b runs/c test.csv --tta --out submission.csv   # ensemble + TTA
    digits predict runs/cnn shards/ --nproc 4 --out submission.csv            # 4 processes
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import ArrayLike, NDArray
from sklearn.pipeline import Pipeline
from torch import nn

from digit_recognizer.config import check_fields
from digit_recognizer.data import stream  # its STREAM_ROWS read at each use: one value for all
from digit_recognizer.data.images import (
    MNIST_SLANT,
    NARROWINGS,
    STRETCHED_SHARE,
    check_images,
    conform_to_mnist,
    crosses_stem,
    faint_to_full_ink,
    fills_box,
    in_mnist_format,
    ink_votes,
    is_image_name,
    load_image,
    narrowed,
    sheared,
    slants,
)
from digit_recognizer.data.kaggle_csv import (
    DigitSet,
    is_csv_name,
    is_submission,
    write_submission,
)
from digit_recognizer.data.lighting import MIN_CONTRAST
from digit_recognizer.data.shards import (
    is_read_whole,
    read_data_source,
    resolve_data_source,
)
from digit_recognizer.data.stream import ShardStream, check_rows_per_process
from digit_recognizer.distributed import (
    Distributed,
    all_reduce,
    check_ddp_timeout,
    check_nproc,
    init_distributed,
    run_torchrun,
)
from digit_recognizer.errors import ConfigError, DataError, ModelFileError, OutputError, counted
from digit_recognizer.fileio import check_can_write, is_glob
from digit_recognizer.logs import hushed
from digit_recognizer.models.classical import is_pipeline, load_pipeline
from digit_recognizer.models.runtime import (
    Device,
    autocast_dtype,
    batched_logits,
    inference_net,
    resolve_device,
)
from digit_recognizer.models.storage import (
    ENSEMBLE_FILE,
    META_FILE,
    expand_ensembles,
    load_net,
    read_meta,
)

log = logging.getLogger(__name__)

# Test-time augmentation: the identity plus one-pixel shifts. Shifts are the transform MNIST's
# centring leaves most residual error in; each view costs one more forward pass.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
# Some collections store their digits transposed (EMNIST's CSVs), which MNIST's layout check
# cannot see: a transposed digit is as well centred. The model can. The default model's mean top
# probability on replica test rows was 0.91 as given and 0.53 transposed (accuracy 100 % and
# 16 %), on the UCI digits 0.83 and 0.49, and 0.18 or more apart on any 16 of those.
JUDGED_SAMPLE = 256  # rows, spread through a file's first piece: judge this, slant, stretch
MIN_ORIENTATION_ROWS = 16
ORIENTATION_MARGIN = 0.1
MIN_STRETCHED_ROWS = 16  # digits, at least, before a file is taken to be stretched to its frame
# A file whose digits lean further than SLANT_TOLERANCE from MNIST_SLANT on average (past the 0.17
# between MNIST's own two writer groups) has them all sheared to it: ARDIS's Swedish clerks lean
# forward at -0.50, and the two default models of replica 0 misread 99 and 101 of its 7,600
# digits so, 132 and 145 as written; the replica's test rows leant 0.35 either way, 101-105 so
# and 125-145 as given (92 and 100 as MNIST has them). CVL, Semeion, USPS, HwD-1000 are within it.
SLANT_TOLERANCE = 0.25
MIN_SLANTED_ROWS = 16
# Much of Europe crosses its 7s, and writes its 1s with a long flag, often without a foot: the
# 7 of MNIST's American writers, who seldom crossed theirs. The model reads such 1s as 7 (391 of
# CVL's 2,178, by Austrian writers). A file whose writers cross their 7s, CROSSED_SHARE or more of
# the MIN_SURE_SEVENS or more digits it reads as 7 with SURE_SEVEN or more (CVL 84-86 %, Semeion
# 92-94 %, UCI 86 %; a replica's test rows 12-13 %, USPS 4 %, ARDIS 28-34 %, HwD 41-42 %), has its
# uncrossed digits read as 7, else 1, taken for 1s more readily: their 7's probability scaled by
# UNCROSSED_SEVEN_ODDS (tuned on CVL's validation writers: 0.3, 0.1, 0.03 and 0.01 left 344, 320,
# 312 and 319 of one model's 374 errors).
SURE_SEVEN = 0.9
CROSSED_SHARE = 0.7
MIN_SURE_SEVENS = 16
UNCROSSED_SEVEN_ODDS = 0.03


@dataclass
class PredictConfig:
    """How to run inference; the models themselves come from run directories."""

    tta: bool = False  # average over the shifted views in TTA_SHIFTS (5x the compute)
    # 256: activations stay in the CPU cache; 1024 was ~2x slower on 2 cores (GPUs: untested).
    batch_size: int = 256
    device: Device = "auto"
    amp: bool = True  # bf16 autocast where native; probabilities within ~1e-2 of fp32's
    ddp_timeout_s: float = 300  # torchrun jobs: how long rank 0 waits for the others' labels
    fuse_batch_norm: bool = True  # fold batch norm into the layers before it (1.25x on CPU)
    # Redo digits not laid out as MNIST's (from other collections) as MNIST made its own, before
    # predicting CSV rows: data.images.conform_to_mnist. MNIST's and Kaggle's pass untouched.
    conform: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        check_ddp_timeout(self.ddp_timeout_s)


@dataclass
class Predictor:
    """Loaded models whose probabilities are averaged (an ensemble of one is a single model).

    Nets and scikit-learn pipelines (run directories of ``estimator.save_estimator``) mix
    freely.
    """

    models: list[nn.Module | Pipeline]
    device: torch.device
    config: PredictConfig

    @classmethod
    def load(
        cls,
        run_dirs: list[Path] | Path | str,
        config: PredictConfig | None = None,
        device: torch.device | str | None = None,
    ) -> Predictor:
        """Load run directories (or ensembles of them; one may be given alone) onto ``device``
        (else ``config.device``): a ``torch.device`` or a name, as ``PredictConfig.device``."""
        if isinstance(run_dirs, str | Path):
            run_dirs = [run_dirs]
        if not run_dirs:  # a glob that matched nothing: the mean of no model is NaN
            raise ModelFileError("no run directory given to load")
        run_dirs = [Path(run_dir) for run_dir in run_dirs]
        config = config or PredictConfig()
        device = (
            device if isinstance(device, torch.device) else resolve_device(device or config.device)
        )
        models = []
        for run_dir in expand_ensembles(run_dirs):
            if is_pipeline(read_meta(run_dir)):
                models.append(load_pipeline(run_dir)[0])
            else:
                net = load_net(run_dir)[0].to(device)
                models.append(inference_net(net, config.fuse_batch_norm))
        return cls(models, device, config)

    @classmethod
    def from_models(cls, models: list[nn.Module], config: PredictConfig | None = None) -> Predictor:
        """Wrap nets already in memory (e.g. just trained), on the device they live on."""
        device = next(models[0].parameters()).device
        return cls(models, device, config or PredictConfig())

    @property
    def layout_judge(self) -> Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None:
        """``predict_proba`` where it can judge a file's layout (conform_rows): whether its rows
        are stored transposed, and at which width to read digits stretched to their frame. Nets
        only: a classical model can be surer of transposed digits than of upright ones (an SVM
        fitted on a replica: mean top probability 0.98 on its test rows transposed, 0.94 as
        given)."""
        is_all_nets = all(isinstance(model, nn.Module) for model in self.models)
        return self.predict_proba if is_all_nets else None

    def predict_proba(self, images: ArrayLike) -> NDArray[np.float32]:
        """Class probabilities (N, 10) for images (N, 28, 28) or rows (N, 784) of integers
        0-255; ``ValueError`` for other shapes or values (0-1 floats: scale them back)."""
        # Read-only arrays (pandas' to_numpy, np.load with mmap) are copied: torch warns of
        # undefined behaviour when it wraps one, though nothing here writes to it.
        images = np.require(check_images(images), requirements="W")
        if not len(images):  # a filter that kept none; scikit-learn's steps refuse 0 samples
            return np.zeros((0, 10), np.float32)
        views = _tta_views(images) if self.config.tta else [images]
        amp_dtype = autocast_dtype(self.device, self.config.amp)
        total = torch.zeros(len(images), 10, device=self.device)
        for model in self.models:
            for view in views:
                if isinstance(model, nn.Module):
                    logits = batched_logits(model, view, self.device, self.config.batch_size,
                                            amp_dtype)  # fmt: skip
                    total += logits.softmax(dim=1)
                else:
                    # float32 before the device: scikit-learn's float64 has no MPS tensor.
                    probas = model.predict_proba(np.asarray(view)).astype(np.float32)
                    total += torch.as_tensor(probas, device=self.device)
        return check_probabilities((total / (len(self.models) * len(views))).cpu().numpy())

    def predict(self, images: ArrayLike) -> NDArray[np.int64]:
        """Predicted digits (N,) for images as ``predict_proba`` takes them."""
        return self.predict_proba(images).argmax(axis=1).astype(np.int64)


def check_probabilities(probas: NDArray[np.float32]) -> NDArray[np.float32]:
    """``probas``, or ``ModelFileError`` where some are not numbers: argmax reads NaN as digit
    0, for every image (a negative batch-norm variance loads, and predicts NaN)."""
    if not np.isfinite(probas).all():
        raise ModelFileError("a model's probabilities are not numbers (NaN or infinite): its "
                             "weights or batch-norm statistics are damaged; retrain "
                             "it")  # fmt: skip
    return probas


def check_predicts_numbers(
    predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]], run_dir: Path
) -> None:
    """``ModelFileError`` naming ``run_dir`` where ``predict_proba`` (which checks its
    probabilities) finds a blank digit's not numbers: a damaged net (a negative batch-norm
    variance) predicts NaN for every digit, so one tells before it is served or exported."""
    try:
        predict_proba(np.zeros((1, 28, 28), np.uint8))
    except ModelFileError as error:
        raise ModelFileError(f"{run_dir}: {error}") from None


def _tta_views(images: NDArray[np.uint8]) -> list[torch.Tensor]:
    tensor = torch.as_tensor(images)
    views = []
    for dy, dx in TTA_SHIFTS:
        shifted = torch.roll(tensor, shifts=(dy, dx), dims=(1, 2))
        # roll wraps around; MNIST borders are blank, so zero the wrapped row/column to be sure.
        if dy:
            shifted[:, 0 if dy > 0 else -1, :] = 0
        if dx:
            shifted[:, :, 0 if dx > 0 else -1] = 0
        views.append(shifted)
    return views


@dataclass
class ImagePrediction:
    """One image file's digit probabilities, or why the file could not be read."""

    path: Path
    probabilities: NDArray[np.float32] | None = None
    error: str | None = None


def predict_images(
    run_dirs: list[Path], paths: list[Path], config: PredictConfig | None = None
) -> list[ImagePrediction]:
    """Each image file made an MNIST digit as MNIST's were made (``load_image``) and predicted;
    a file that cannot be read gets its error, and the others are predicted all the same. The
    images are read together, as the API reads a batch of JSON digits and a file's rows are
    read: sheared to MNIST's slant where they lean far from it (``conform_rows``; already in
    MNIST's layout, they are otherwise left as they are), and as by writers who cross their 7s,
    if they say so (``read_together``)."""
    results, digits = [], []
    for path in paths:
        try:
            digits.append(load_image(path))
            results.append(ImagePrediction(Path(path)))
        except DataError as error:
            message = str(error)
            if is_csv_name(path):  # else a CSV of digits is told only that it is no image
                runs = " ".join(str(run_dir) for run_dir in run_dirs)
                message += f"; a CSV of digits: digits predict {runs} {path}"
            results.append(ImagePrediction(Path(path), error=message))
    if digits:
        predictor = Predictor.load(run_dirs, config or PredictConfig())
        source, apart = f"the {counted(len(digits), 'image')}", "predicting each image alone"
        images = conform_rows(np.stack(digits), predictor.config, source, as_is=apart)
        probas = read_together(images, predictor.predict_proba(images), predictor.layout_judge,
                               source, apart)  # fmt: skip
        for result, proba in zip((r for r in results if r.error is None), probas, strict=True):
            result.probabilities = proba
    return results


def read_together(
    images: NDArray[np.uint8],
    probas: NDArray[np.float32],
    judge: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None,
    source: str | Path,
    as_is: str,
) -> NDArray[np.float32]:
    """``probas``, a model's of conformed ``images`` sent together (by one writer, or one
    collection, as a file's rows are), read as such where ``judge`` (its ``layout_judge``: a
    net's) is given: as by writers who cross their 7s, if they say so (``PieceConformer.reread``);
    says what that changed, and that ``as_is`` (sending them one at a time, the server's query)
    would not have."""
    reader = PieceConformer(PredictConfig(), judge)
    probas = reader.reread(reader.read(images, probas))
    warn_conformed(source, len(images), n_faint=0, n_uncrossed=reader.n_uncrossed, as_is=as_is)
    return probas


def conform_rows(
    images: NDArray[np.uint8],
    config: PredictConfig,
    source: str | Path,
    predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None = None,
    as_is: str = "--as-is",
) -> NDArray[np.uint8]:
    """``images`` conformed to MNIST's layout if ``config.conform``, transposed where the
    model (``predict_proba``, for a file's rows: it costs two passes over up to JUDGED_SAMPLE
    of them) reads them as digits only so, sheared to MNIST's slant where they lean far from it
    (``file_shear``: no model needed), and narrowed where they were stretched to fill their
    frame (``unstretched``: five passes over every row); says what changed, and that ``as_is``
    (the caller's switch: a flag, the server's query) would have left them. In pieces of
    STREAM_ROWS, judged as ``PieceConformer`` judges a streamed file: alike."""
    conformer = PieceConformer(config, predict_proba)
    pieces = [conformer(images[rows]) for rows in stream.piece_slices(len(images))]
    conformer.warn(source, as_is)
    return np.concatenate(pieces) if pieces else images


def off_layout_share(images: NDArray[np.uint8]) -> float:
    """The share of ``images`` not in MNIST's layout (``in_mnist_format``), judged on at most
    ~2,000 of them spread over the file."""
    sample = images[:: max(1, len(images) // 2_000)]
    return float(1 - in_mnist_format(sample).mean()) if len(sample) else 0.0


def conformed_for_training(
    images: NDArray[np.uint8], source: str | Path, init_from: str | Path | None = None
) -> NDArray[np.uint8]:
    """A training file's rows as `digits predict` reads them (``conform_rows``) where most of
    them are not in MNIST's layout (another collection's), else as they are: a net learns the
    digits prediction will show it. ``init_from``: the run fine-tuned from
    (``TrainConfig.init_from``), whose net judges orientation and stretch as predict's net
    does; loaded only for a file to conform."""
    share = off_layout_share(images)
    if share <= 0.5:
        return images
    judge = None if init_from is None else Predictor.load([init_from]).predict_proba
    with hushed():  # predict's words, which name its --as-is
        images = conform_rows(images, PredictConfig(), source, judge)
    log.info("%s: %.0f %% of its digits are not laid out as MNIST's (dark on light, filling the "
             "frame, off-centre): trained on as `digits predict` and `evaluate` read them, redone "
             "as MNIST made its own", source, 100 * share)  # fmt: skip
    return images


def predict_rows(
    predictor: Predictor,
    images: NDArray[np.uint8],
    config: PredictConfig,
    source: str | Path,
    as_is: str = "--as-is",
) -> NDArray[np.float32]:
    """The probabilities of a file's rows ``images`` as ``digits predict`` reads them: conformed
    as ``conform_rows`` conforms them (the predictor's nets judging), then read as
    ``PieceConformer.read`` reads them; says what changed."""
    conformer = PieceConformer(config, predictor.layout_judge)
    probas = np.zeros((len(images), 10), np.float32)
    for rows in stream.piece_slices(len(images)):
        piece = conformer(images[rows])
        probas[rows] = conformer.read(piece, predictor.predict_proba(piece))
    probas = conformer.reread(probas)
    conformer.warn(source, as_is)
    return probas


class PieceConformer:
    """``conform_rows`` for a file's rows in pieces of up to STREAM_ROWS, in order (under
    torchrun, each process its share's, ``share``: its first row and the file's rows): the
    file's ink votes, orientation, slant and stretch are judged on its first STREAM_ROWS rows
    (``judged_rows``: every process judges those of its first piece, and their judgements are
    added up) and apply to every piece; a file read whole, streamed or shared by processes is
    conformed alike. Their probabilities are then read as the writers' style says (``read``,
    ``reread``): whether they cross their 7s, judged on every piece. Counts what it changed."""

    def __init__(
        self,
        config: PredictConfig,
        predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None = None,
        device: torch.device | None = None,
        share: tuple[int, int] | None = None,
    ) -> None:
        self.conform = config.conform
        self.judge = predict_proba if config.conform else None
        self.device = device  # where torchrun's collectives add up the processes' judgements
        self.first_row, self.n_file_rows = share or (0, None)
        self.votes: NDArray[np.float32] | None = None
        self.is_transposed: bool | None = None
        self.shear: float | None = None
        self.is_stretched: bool | None = None
        self.crossing_evidence = np.zeros(2, dtype=np.float32)
        self.uncrossed: list[tuple[NDArray[np.intp], NDArray[np.float32]]] = []
        self.n_rows = self.n_faint = self.n_redone = self.n_narrowed = self.n_uncrossed = 0
        self.n_read = 0

    def __call__(self, images: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The next piece's images, conformed (N, 28, 28)."""
        is_first_piece = self.n_rows == 0  # the file is judged on it
        n_voting, sample = judged_rows(len(images), self.first_row, self.n_file_rows)
        votes = self._files_votes if self.votes is None else self.votes
        images, n_faint, n_redone = _conformed(images, self.conform, votes, n_voting)
        self.n_rows += len(images)
        self.n_faint += n_faint
        self.n_redone += n_redone
        if is_first_piece:
            self.is_transposed = self.judge is not None and reads_transposed(
                self._summed(orientation_evidence(images[sample], self.judge))
            )
        images = transposed(images) if self.is_transposed else images
        if is_first_piece:
            self.shear = (file_shear(self._summed(slant_evidence(images[sample])))
                          if self.conform else 0.0)  # fmt: skip
        images = sheared(images, self.shear) if self.shear else images
        if is_first_piece:
            self.is_stretched = self.judge is not None and reads_stretched(
                self._summed(stretch_evidence(images[sample]))
            )
        if self.is_stretched:
            images, n_narrowed = unstretched(images, self.judge)
            self.n_narrowed += n_narrowed
        return images

    def read(self, images: NDArray[np.uint8], probas: NDArray[np.float32]) -> NDArray[np.float32]:
        """``probas``, the model's probabilities of the next piece's conformed ``images``, as
        they are; what they say of the writers' style is kept for ``rereadings``."""
        if self.judge is not None:
            self.crossing_evidence += crossing_evidence(images, probas)
            rows, reread = uncrossed_as_ones(images, probas)
            self.uncrossed.append((rows + self.n_read, reread))
        self.n_read += len(images)
        return probas

    def rereadings(self) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """Once every piece is read: the rows, of all read (from 0), whose probabilities the
        writers' style changes, and their new probabilities. Uncrossed 7s read as 1s more readily
        (``uncrossed_as_ones``) where the writers cross their 7s, as judged on every piece read,
        every process's added up (a file sorted by digit may hold its 7s in its last piece)."""
        is_crossing = self.judge is not None and reads_crossing(
            self._summed(self.crossing_evidence)
        )
        if not (is_crossing and self.uncrossed):
            return np.zeros(0, dtype=np.intp), np.zeros((0, 10), dtype=np.float32)
        rows = np.concatenate([piece_rows for piece_rows, _ in self.uncrossed])
        reread = np.concatenate([piece_reread for _, piece_reread in self.uncrossed])
        self.n_uncrossed = int(np.count_nonzero(reread.argmax(axis=1) == 1))
        return rows, reread

    def reread(self, probas: NDArray[np.float32]) -> NDArray[np.float32]:
        """The probabilities of every row read, in order, with ``rereadings`` made to them."""
        rows, reread = self.rereadings()
        probas[rows] = reread
        return probas

    def warn(self, source: str | Path, as_is: str = "--as-is") -> None:
        """``warn_conformed`` of the pieces conformed (and read) so far."""
        warn_conformed(source, self.n_rows, self.n_faint, self.n_redone,
                       bool(self.is_transposed), self.shear or 0.0, self.n_narrowed,
                       self.n_uncrossed, as_is)  # fmt: skip

    def conformed(self, pieces: Iterable[DigitSet]) -> Iterator[DigitSet]:
        """The file's ``pieces`` (``read_in_pieces``'), each with its images conformed and its
        labels kept, one at a time."""
        for piece in pieces:
            yield DigitSet(self(piece.images), piece.labels)

    def _files_votes(self, first_pieces_votes: NDArray[np.float32]) -> NDArray[np.float32]:
        # The ink's side of the file's rows, for those whose edges leave it in doubt.
        self.votes = self._summed(first_pieces_votes)
        return self.votes

    def _summed(self, counts: NDArray[np.float32]) -> NDArray[np.float32]:
        return all_reduce(torch.as_tensor(counts, device=self.device)).cpu().numpy()


def conform_row(
    first_rows: NDArray[np.uint8],
    image: NDArray[np.uint8],
    index: int,
    config: PredictConfig,
    source: str | Path,
    predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None = None,
) -> NDArray[np.uint8]:
    """Row ``index`` of a file, ``image`` (28, 28), as ``conform_rows`` makes it, without
    reading or redoing every row (minutes for a large file off MNIST's layout): the file's ink
    votes, orientation, slant and stretch are judged on its first STREAM_ROWS rows (of
    ``first_rows``, its first rows, as many or all), as ``PieceConformer`` judges them, its
    orientation, slant and stretch on the JUDGED_SAMPLE rows of them. Warns of what changed in
    that row."""
    first_piece = first_rows[: stream.STREAM_ROWS]
    votes = None  # read only where the row is conformed
    if config.conform:
        votes = ink_votes(faint_to_full_ink(first_piece)[0])
    row, n_faint, n_redone = _conformed(image[None], config.conform, votes)
    is_transposed = False
    shear = 0.0
    n_narrowed = 0
    if config.conform:
        sample = first_piece[judged_rows(len(first_piece))[1]]
        conformed_sample = _conformed(sample, True, votes)[0]
        if predict_proba:
            is_transposed = reads_transposed(orientation_evidence(conformed_sample, predict_proba))
        if is_transposed:
            row, conformed_sample = transposed(row), transposed(conformed_sample)
        shear = file_shear(slant_evidence(conformed_sample))
        if shear:
            row, conformed_sample = sheared(row, shear), sheared(conformed_sample, shear)
        if predict_proba and reads_stretched(stretch_evidence(conformed_sample)):
            row, n_narrowed = unstretched(row, predict_proba)
    warn_conformed(f"{source}, row {index}", 1, n_faint, n_redone, is_transposed, shear,
                   n_narrowed)  # fmt: skip
    return row[0]


def judged_rows(
    n_rows: int, first_row: int = 0, n_file_rows: int | None = None
) -> tuple[int, NDArray[np.intp]]:
    """Which rows of a file's first piece, ``n_rows`` from its row ``first_row`` of
    ``n_file_rows`` (a torchrun process's share; None: the file read from its start), judge the
    file: how many of the piece's first rows are of the file's first STREAM_ROWS (they vote on
    the ink's side), and the piece's rows among the JUDGED_SAMPLE spread evenly through those
    (they judge orientation, slant and stretch). Processes sharing a file judge it on the very
    rows one process does: every share's rows among the file's first STREAM_ROWS are in its
    first piece."""
    judged = n_rows if n_file_rows is None else min(n_file_rows, stream.STREAM_ROWS)
    n_voting = min(max(judged - first_row, 0), n_rows)
    sample = spread_rows(judged, JUDGED_SAMPLE) - first_row
    return n_voting, sample[(sample >= 0) & (sample < n_voting)]


def spread_rows(n_rows: int, n_picked: int) -> NDArray[np.intp]:
    """The indices of up to ``n_picked`` of ``n_rows`` rows, spread evenly from first to last."""
    return np.linspace(0, n_rows - 1, min(n_rows, n_picked)).astype(np.intp)


def _conformed(
    images: NDArray[np.uint8],
    conform: bool,
    votes: NDArray[np.float32] | Callable[[NDArray[np.float32]], NDArray[np.float32]] | None = None,
    n_voting: int | None = None,
) -> tuple[NDArray[np.uint8], int, int]:
    """Faint rows' ink scaled to full, then (``conform``) rows off MNIST's layout redone; the
    images, and how many rows were faint and how many redone. A file's rows, or a piece with
    the file's ``ink_votes`` (``votes`` and ``n_voting``, as conform_to_mnist takes them)."""
    images, n_faint = faint_to_full_ink(images)
    n_redone = 0
    if conform:
        images, n_redone = conform_to_mnist(images, votes, n_voting)
    return images, n_faint, n_redone


def warn_conformed(
    source: str | Path,
    n_rows: int,
    n_faint: int,
    n_redone: int = 0,
    is_transposed: bool = False,
    shear: float = 0.0,
    n_narrowed: int = 0,
    n_uncrossed: int = 0,
    as_is: str = "--as-is",
) -> None:
    """One warning per change made to a source's rows or to how they were read (each said
    once, for all its pieces); ``as_is`` names the switch that predicts them unchanged."""
    if n_faint:
        digits, were, _ = _some_digits(n_faint, n_rows)
        log.warning("%s: %s %s faint (pixels all under %d: binarised 0/1, or ink on a scale such "
                    "as UCI's 0-16) and %s scaled to MNIST's 0-255", source, digits, were,
                    MIN_CONTRAST, were)  # fmt: skip
    if n_redone:
        digits, were, them = _some_digits(n_redone, n_rows)
        log.warning(
            "%s: %s %s not laid out as MNIST's (fitted to 20 x 20 pixels, centred by mass) and "
            "%s redone as MNIST made its own; %s predicts %s unchanged",
            source, digits, were, were, as_is, them,
        )  # fmt: skip
    if is_transposed:
        log.warning(
            "%s: the digits read as digits only transposed (rows and columns swapped, as EMNIST's "
            "CSVs store them) and were transposed; %s predicts them unchanged", source, as_is,
        )  # fmt: skip
    if shear:
        # Degrees of lean: the angle whose tangent is the slant, forward where it is negative.
        degrees = math.degrees(math.atan(abs(shear)))
        log.warning(
            "%s: the digits lean %.0f degrees further %s than MNIST's writers' and were sheared "
            "to their slant; %s predicts them unchanged", source, degrees,
            "forward" if shear < 0 else "back", as_is,
        )  # fmt: skip
    if n_narrowed:
        digits, were, them = _some_digits(n_narrowed, n_rows)
        log.warning(
            "%s: the digits fill their frame both ways, stretched to it as Semeion's are; %s "
            "%s read narrower, at the width the model reads most surely; %s predicts %s "
            "unchanged", source, digits, were, as_is, them,
        )  # fmt: skip
    if n_uncrossed:
        digits, were, them = _some_digits(n_uncrossed, n_rows)
        log.warning(
            "%s: the writers cross their 7s, as much of Europe does; %s without a bar across the "
            "stem, which the model read as 7, %s read as 1 (a 1 with a long flag and no foot); "
            "%s reads %s as the model does", source, digits, were, as_is, them,
        )  # fmt: skip


def _some_digits(n: int, n_rows: int) -> tuple[str, str, str]:
    """``n`` of ``n_rows`` digits as warn_conformed's sentences name them, with the verb and
    pronoun that agree: ("3 of 40 digits", "were", "them"), ("1 of 40 digits", "was", "it"),
    and "the digit" of a single row (explain's), which would read "1 of 1 digits were"."""
    digits = "the digit" if n_rows == 1 else f"{n:,} of {counted(n_rows, 'digit')}"
    return (digits, "was", "it") if n == 1 else (digits, "were", "them")


def orientation_evidence(
    images: NDArray[np.uint8], predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]]
) -> NDArray[np.float32]:
    """How surely the model reads conformed ``images`` (a file's ``judged_rows``) as given and
    transposed: (rows, their top probabilities summed as given, and transposed). Sums, so that
    torchrun's processes can add theirs up."""
    # A process's few rows (--nproc) count too: reads_transposed applies its minimum to the sums.
    if not len(images):
        return np.zeros(3, dtype=np.float32)
    given = predict_proba(images).max(axis=1).sum()
    flipped = predict_proba(transposed(images)).max(axis=1).sum()
    return np.array([len(images), given, flipped], dtype=np.float32)  # MPS has no float64


def reads_transposed(evidence: NDArray[np.float32]) -> bool:
    """Whether ``orientation_evidence`` says the rows are stored transposed: read more surely so
    by ORIENTATION_MARGIN on average, over at least MIN_ORIENTATION_ROWS rows."""
    n_rows, given, flipped = evidence
    return bool(n_rows >= MIN_ORIENTATION_ROWS and flipped - given > ORIENTATION_MARGIN * n_rows)


def transposed(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def stretch_evidence(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Of conformed ``images`` (a file's ``judged_rows``): (digits, digits filling MNIST's box
    both ways). Counts, so that torchrun's processes can add theirs up."""
    is_digit = images.any(axis=(1, 2))
    return np.array([is_digit.sum(), (is_digit & fills_box(images)).sum()], dtype=np.float32)


def reads_stretched(evidence: NDArray[np.float32]) -> bool:
    """Whether ``stretch_evidence`` says the digits were stretched to fill their frame both ways
    (Semeion's): STRETCHED_SHARE of them or more fill MNIST's box, of MIN_STRETCHED_ROWS or more."""
    n_digits, n_filling = evidence
    return bool(n_digits >= MIN_STRETCHED_ROWS and n_filling >= STRETCHED_SHARE * n_digits)


def slant_evidence(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Of conformed ``images`` (a file's ``judged_rows``): (digits, their slants summed). Sums,
    so that torchrun's processes can add theirs up."""
    is_digit = images.any(axis=(1, 2))
    return np.array([is_digit.sum(), slants(images[is_digit]).sum()], dtype=np.float32)


def file_shear(evidence: NDArray[np.float32]) -> float:
    """The shear (``data.images.sheared``) that brings a file's digits to MNIST_SLANT, where
    ``slant_evidence`` says they lean further than SLANT_TOLERANCE from it on average, of
    MIN_SLANTED_ROWS or more; else 0. To the hundredth: torchrun's processes add up their sums
    in another order than one process does, and shears a float32's last bit apart (3e-8) gave
    19 pixels of 8,192 MNIST digits another value."""
    n_digits, total = evidence
    if n_digits < MIN_SLANTED_ROWS:
        return 0.0
    shear = round(float(total / n_digits - MNIST_SLANT), 2)
    return shear if abs(shear) > SLANT_TOLERANCE else 0.0


def unstretched(
    images: NDArray[np.uint8], predict_proba: Callable[[NDArray[np.uint8]], NDArray[np.float32]]
) -> tuple[NDArray[np.uint8], int]:
    """Each of a stretched collection's conformed ``images`` at the width, of its own and of
    NARROWINGS of it, that the model reads most surely; and how many were narrowed. Semeion's
    errors: 135 and 110 as stretched, 77 and 82 so (two default models of replica 0)."""
    views = np.stack([images, *(narrowed(images, fraction) for fraction in NARROWINGS)])
    surest = np.stack([predict_proba(view).max(axis=1) for view in views]).argmax(axis=0)
    return views[surest, np.arange(len(images))], int(np.count_nonzero(surest))


def crossing_evidence(
    images: NDArray[np.uint8], probas: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Of conformed ``images`` and the model's probabilities ``probas``: (digits read as 7 with
    SURE_SEVEN or more, those of them with a bar across the stem). Counts, so that torchrun's
    processes can add theirs up."""
    sure_sevens = (probas.argmax(axis=1) == 7) & (probas.max(axis=1) >= SURE_SEVEN)
    n_crossed = np.count_nonzero(crosses_stem(images[sure_sevens]))
    return np.array([np.count_nonzero(sure_sevens), n_crossed], dtype=np.float32)


def reads_crossing(evidence: NDArray[np.float32]) -> bool:
    """Whether ``crossing_evidence`` says the writers cross their 7s: CROSSED_SHARE of the sure
    7s or more, of MIN_SURE_SEVENS or more."""
    n_sure, n_crossed = evidence
    return bool(n_sure >= MIN_SURE_SEVENS and n_crossed >= CROSSED_SHARE * n_sure)


def uncrossed_as_ones(
    images: NDArray[np.uint8], probas: NDArray[np.float32]
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """As writers who cross their 7s are read: the rows of conformed ``images`` with no bar
    across the stem that the model (``probas``) reads as 7, else 1, and their probabilities
    with the 7's scaled by UNCROSSED_SEVEN_ODDS (the rest scaled up to sum to 1). CVL's errors
    by the two default models of replica 0: 1,272 and 1,236 as the model reads it, 1,059 and
    1,020 so."""
    ranked = probas.argsort(axis=1)
    rows = np.flatnonzero((ranked[:, -1] == 7) & (ranked[:, -2] == 1))
    rows = rows[~crosses_stem(images[rows])]
    reread = probas[rows].copy()
    reread[:, 7] *= UNCROSSED_SEVEN_ODDS
    return rows, reread / reread.sum(axis=1, keepdims=True)


def warn_labelled(source: str | Path, has_labels: bool) -> None:
    if has_labels:
        log.warning("%s: has a label column, which prediction ignores; `digits evaluate` "
                    "scores a model on labelled rows", source)  # fmt: skip


def predict_csv(
    run_dirs: list[Path],
    test_csv: Path,
    out: Path,
    config: PredictConfig | None = None,
    data: DigitSet | None = None,
) -> NDArray[np.int64]:
    """Predict every row of a Kaggle CSV (or shards, in memory: ``predict_stream`` streams them)
    and write ``out`` as a submission; returns the labels. ``data``: its rows, if already read."""
    config = config or PredictConfig()
    data = read_data_source(test_csv) if data is None else data
    warn_labelled(test_csv, data.has_labels)
    predictor = Predictor.load(run_dirs, config)
    labels = predict_rows(predictor, data.images, config, test_csv).argmax(axis=1)
    write_submission(out, labels)
    return labels


def predict_stream(
    run_dirs: list[Path], source: str | Path, out: Path, config: PredictConfig | None = None
) -> int:
    """Predict a CSV, shard directory or glob piece by piece; returns the number of rows.

    Memory holds one batch of images whatever the number of rows (plus a byte of label per row,
    and the probabilities of the uncrossed digits read as 7 else 1: PieceConformer.rereadings).
    Under torchrun (``digits predict ... --nproc N``) each rank predicts a contiguous share of
    the rows on its own device, and rank 0 gathers the shares in rank order, which is ImageId
    order, and alone writes ``out``.
    """
    config = config or PredictConfig()
    dist_env, device = init_distributed(config.device, config.ddp_timeout_s)
    predictor = Predictor.load(run_dirs, config, device)
    shard_stream = ShardStream(source, stream.STREAM_ROWS, shuffle=False, rank=dist_env.rank,
                               world_size=dist_env.world_size)  # fmt: skip
    conformer = PieceConformer(config, predictor.layout_judge, device,
                               (shard_stream.first_row, shard_stream.manifest.n_rows))  # fmt: skip
    chunks = []
    for piece, _ in shard_stream:
        images = conformer(piece.numpy())
        probas = conformer.read(images, predictor.predict_proba(images))
        chunks.append(probas.argmax(axis=1).astype(np.uint8))
    labels = np.concatenate(chunks)
    rows, reread = conformer.rereadings()
    labels[rows] = reread.argmax(axis=1)
    counts = (conformer.n_faint, conformer.n_redone, conformer.n_narrowed, conformer.n_uncrossed)
    if dist.is_initialized():
        shares = [None] * dist_env.world_size if dist_env.is_main_process else None
        dist.gather_object((labels, counts), shares, dst=0)
        if shares is not None:
            labels = np.concatenate([share[0] for share in shares])
            counts = np.sum([share[1] for share in shares], axis=0)
    if dist_env.is_main_process:
        warn_labelled(source, shard_stream.manifest.has_labels)
        n_faint, n_redone, n_narrowed, n_uncrossed = counts  # once, for all pieces and processes
        warn_conformed(source, len(labels), n_faint, n_redone, bool(conformer.is_transposed),
                       conformer.shear or 0.0, n_narrowed, n_uncrossed)  # fmt: skip
        write_submission(out, labels)
    return shard_stream.manifest.n_rows


def predict_source(
    run_dirs: list[Path],
    source: str | Path,
    out: Path,
    config: PredictConfig | None = None,
    data: DigitSet | None = None,
) -> int:
    """What `digits predict` does: a CSV file in memory (``predict_csv``); shards, a glob, a
    CSV larger than STREAM_FILE_BYTES, or any source in torchrun's processes streamed in ImageId
    order (``predict_stream``). Returns the number of rows predicted. ``data``: its rows, if
    already read (a pipe's, which cannot be read again)."""
    check_data_source(source)
    check_submission_path(out, source)
    if data is not None or (is_read_whole(source) and Distributed.from_env().world_size == 1):
        return len(predict_csv(run_dirs, Path(source), out, config, data))
    return predict_stream(run_dirs, source, out, config)


def predict_distributed(
    nproc: int,
    run_dirs: list[Path],
    source: str | Path,
    out: Path,
    config: PredictConfig | None = None,
) -> None:
    """Run `digits predict` in ``nproc`` processes on this machine through torchrun, each on a
    share of the rows (``predict_stream``). What can be checked before the launch is, rather
    than in every process amid torchrun's output."""
    check_nproc(nproc)
    config = config or PredictConfig()
    check_data_source(source)
    check_submission_path(out, source)
    for run_dir in expand_ensembles(run_dirs):
        read_meta(run_dir)
    check_rows_per_process(resolve_data_source(source).n_rows, nproc, source=source)
    paths = [*map(str, run_dirs), str(source)]
    run_torchrun(nproc, "digit_recognizer", ["predict", *paths, "--out", str(out)], config)


def check_data_source(source: str | Path, takes_images: bool = False) -> None:
    """Refuse a run directory where the digits to predict belong (arguments swapped, or the
    CSV forgotten after an ensemble's runs): read as shards, it would be a missing manifest.
    Unless the command ``takes_images``, refuse an image file too, pointing at predict-image:
    read as a CSV, a PNG is "not UTF-8 text"."""
    path = Path(source)
    if not takes_images and is_image_name(path) and not path.is_dir():
        raise DataError(
            f"{source}: an image file, where a CSV of digits (shard directory, glob) "
            f"belongs; images are read by digits predict-image RUN_DIR {source}"
        )
    try:
        is_run = (path / META_FILE).is_file() or (path / ENSEMBLE_FILE).is_file()
    except OSError:  # a folder without permission: the reader names the file itself
        is_run = False
    if is_run:
        raise DataError(f"{source}: a run directory, where the digits belong: give the run "
                        "directories first and the CSV (shard directory, glob) last")  # fmt: skip


def check_submission_path(out: Path, source: str | Path) -> None:
    """Refuse to write the submission over the rows predicted, or over any file that is not a
    submission (a run's model.json, a training CSV): the file would be lost without a word; and
    a path that cannot be written, before the rows are predicted rather than after."""
    check_can_write(out)
    if is_glob(source) and Path(os.path.abspath(out)).match(os.path.abspath(source)):
        # Written there, the next prediction of the pattern reads the submission as rows.
        raise OutputError(f"{out}: {source} matches it, and would read the submission as "
                          "rows next time; write it outside the pattern")  # fmt: skip
    if not out.is_file() or out.stat().st_size == 0:  # new, or made empty for it (mktemp)
        return
    if out.resolve() == Path(source).resolve():
        raise OutputError(f"{out}: is the CSV to predict; write the submission to another --out")
    if not is_submission(out):
        raise OutputError(f"{out}: exists and is no submission (its first line is not "
                          "ImageId,Label); write the submission to another --out")  # fmt: skip


if __name__ == "__main__":
    # The package is the entry point, for torchrun too: `python -m digit_recognizer predict ...`.
    raise SystemExit("run `python -m digit_recognizer predict ...` (or `digits predict ...`)")
