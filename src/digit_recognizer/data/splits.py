"""Stratified train / validation / holdout splits (scikit-learn), reproducible by seed."""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.errors import ConfigError

log = logging.getLogger(__name__)

# Above this share of the images scored, those also fitted are warned of: a few repeats (blank
# digits, say) happen in any collection; MNIST's 70,000 have none.
SHARED_IMAGES_WARNED = 0.01


def missing_digits(class_counts: list[int]) -> list[int]:
    """The digits 0-9 that ``class_counts`` (``count_classes``') has no rows of."""
    return [digit for digit, count in enumerate(class_counts) if not count]


def warn_missing_digits(class_counts: list[int], rows_name: str) -> None:
    """Warn where the training rows, ``rows_name``, lack digits: a net never shown a digit
    reads every image of it as another, and nothing else says so (a CSV of 0-4 trains
    silently). Not refused: training on some digits can be meant."""
    if missing := missing_digits(class_counts):
        log.warning("%s hold no %s (%d of the 10 digits): the model never learns %s and reads "
                    "every such image as another digit; train on rows of all ten unless that is "
                    "meant", rows_name, ", ".join(map(str, missing)), len(missing),
                    "it" if len(missing) == 1 else "them")  # fmt: skip


def check_seed(seed: int, flag: str = "seed") -> None:
    """ConfigError unless ``seed`` is in numpy's and scikit-learn's range: past it their own
    error, caught as a split's, blamed --valid-size."""
    if not 0 <= seed < 2**32:
        raise ConfigError(f"{flag} must be from 0 to 2**32 - 1, got {seed}")


def stratified_split(
    labels: NDArray[np.int64], valid_size: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices of a stratified split: every class keeps its share in both parts, as near as
    rows allow (a class of two rows has one in each), but a class of one row, which trains.

    Returns ``(train_indices, valid_indices)``; ``valid_size`` is a fraction in (0, 1), or 0 for
    no validation part (all indices train, an empty validation array).
    """
    indices = np.arange(len(labels))
    if valid_size == 0:
        return indices, indices[:0]
    # A digit of one row cannot be in both parts, and scikit-learn refuses to stratify on it,
    # whatever the rows and the size (60,000 rows and one drawn 9 would train with no
    # --valid-size but 0). That row trains; the rest split by digit.
    digits, counts = np.unique(labels, return_counts=True)
    is_single = np.isin(labels, digits[counts == 1])
    if is_single.any():
        is_one = is_single.sum() == 1
        log.warning("digit%s %s: one labelled row%s, which trains and cannot also validate: the "
                    "validation accuracy says nothing of %s", "" if is_one else "s",
                    ", ".join(map(str, labels[is_single])), "" if is_one else " each",
                    "it" if is_one else "them")  # fmt: skip
    # valid_size of all the rows, rounded up as scikit-learn rounds it: `digits data expand`
    # counts the rows it holds out so, else its shards cut a row off where a row of one
    # shrinks the part (an augmented copy validated, or an IndexError).
    n_valid = math.ceil(valid_size * len(labels))
    try:
        train_indices, valid_indices = train_test_split(
            indices[~is_single], test_size=n_valid, stratify=labels[~is_single],
            random_state=seed,
        )  # fmt: skip
        train_indices, valid_indices = _each_digit_in_both(labels, train_indices, valid_indices)
        train_indices = np.concatenate([train_indices, indices[is_single]])
    except ValueError as error:  # too few rows, or a class too rare to be in both parts
        raise ConfigError(
            f"cannot split {len(labels):,} labelled rows by class with --valid-size {valid_size} "
            f"({error}); give more rows or another --valid-size (0: none held out)"
        ) from None
    return np.sort(train_indices), np.sort(valid_indices)


def _each_digit_in_both(
    labels: NDArray[np.int64], train_indices: NDArray[np.intp], valid_indices: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The split with each digit in both parts (of two rows or more: one row trains), and
    each part of the size scikit-learn gave it. scikit-learn rounds each digit's share, so a
    rare digit can land in one part whole, without a word: 2 rows at valid_size 0.2 both
    train, and the validation accuracy says nothing of that digit; at 0.9 both validate, and
    the net never learns it."""
    train_indices, valid_indices = _swap_in_missing_digits(labels, train_indices, valid_indices)
    valid_indices, train_indices = _swap_in_missing_digits(labels, valid_indices, train_indices)
    return train_indices, valid_indices


def _swap_in_missing_digits(
    labels: NDArray[np.int64], lender: NDArray[np.intp], borrower: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """For each digit ``lender`` holds and ``borrower`` does not, a row of it swapped for one
    of the digit ``borrower`` holds most of, which has two rows or more there while a digit is
    missing: scikit-learn refuses a part with fewer rows than there are digits."""
    for digit in np.setdiff1d(labels[lender], labels[borrower]):
        # scikit-learn shuffled the parts: a part's first row of a digit is one the seed drew.
        lent = lender[labels[lender] == digit][0]
        given = borrower[labels[borrower] == np.bincount(labels[borrower]).argmax()][0]
        lender = np.append(lender[lender != lent], given)
        borrower = np.append(borrower[borrower != given], lent)
    return lender, borrower


def split_for_training(data: DigitSet, valid_size: float, seed: int) -> tuple[DigitSet, DigitSet]:
    """Stratified (train, validation) subsets of a labelled set."""
    train_indices, valid_indices = stratified_split(data.labels, valid_size, seed)
    return data.take(train_indices), data.take(valid_indices)


def warn_shared_images(fitted: DigitSet, scored: DigitSet, scored_name: str) -> int:
    """Warn where more than ``SHARED_IMAGES_WARNED`` of the images a model is scored on are also
    images it is fitted on, pixel for pixel; returns how many are. Rows read twice (a glob that
    matches a CSV and its own shards, a test CSV that is the training one) split into both
    parts, and the score then says how well the model recalls them, not how it reads new ones."""
    fitted_rows = {hash(row.tobytes()) for row in fitted.images}
    shared = sum(hash(row.tobytes()) in fitted_rows for row in scored.images)
    if shared > SHARED_IMAGES_WARNED * len(scored):
        log.warning("%s: %s of its %s images are also among those trained on, pixel for pixel "
                    "(rows read twice? a glob matching a CSV and its own shards, say): their "
                    "score overstates the model's", scored_name, f"{shared:,}",
                    f"{len(scored):,}")  # fmt: skip
    return shared
