import logging
import math

import numpy as np
import pytest
import torch

from digit_recognizer.data.augment import (
    STYLED_DIGITS,
    Augmentation,
    add_writing_styles,
    augment_batch,
    change_stroke_width,
    elastic_displacement,
)
from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.data.splits import (
    check_seed,
    split_for_training,
    stratified_split,
    warn_shared_images,
)
from digit_recognizer.data.tensors import to_model_input
from digit_recognizer.errors import ConfigError


def test_augment_keeps_shape_range_and_is_seeded(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:64]))
    first = augment_batch(x, Augmentation(), torch.Generator().manual_seed(1))
    again = augment_batch(x, Augmentation(), torch.Generator().manual_seed(1))
    other = augment_batch(x, Augmentation(), torch.Generator().manual_seed(2))
    assert first.shape == x.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_batch_laid_out_image_innermost_is_augmented_as_a_contiguous_one(
    small_train, dtype
):
    # As a Fortran-ordered numpy array arrives (pandas' .values): CPU grid_sample had read such
    # a bfloat16 or float16 batch into NaN or other pixels' values.
    images = np.asfortranarray(small_train.images[:64])
    x = to_model_input(torch.from_numpy(images)).to(dtype)
    assert x.stride()[0] == 1
    labels = torch.as_tensor(small_train.labels[:64])
    every_transform = Augmentation(elastic_px=1.5, styles=1.0)
    strided = augment_batch(x, every_transform, torch.Generator().manual_seed(0), labels)
    contiguous = augment_batch(
        x.contiguous(), every_transform, torch.Generator().manual_seed(0), labels
    )
    assert torch.equal(strided, contiguous)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_augment_keeps_a_half_precision_batch_in_its_dtype(small_train, dtype):
    # The contrast and stroke factors, drawn in float32, had promoted the batch to float32.
    x = to_model_input(torch.as_tensor(small_train.images[:64]))
    labels = torch.as_tensor(small_train.labels[:64])
    every_transform = Augmentation(elastic_px=1.5, styles=1.0)
    full = augment_batch(x, every_transform, torch.Generator().manual_seed(0), labels)
    half = augment_batch(x.to(dtype), every_transform, torch.Generator().manual_seed(0), labels)
    assert half.dtype == dtype and half.min() >= 0 and half.max() <= 1
    # The same draws, resampled at lower precision: close to the float32 batch on average.
    assert (half.float() - full).abs().mean() < 0.02


def test_augment_takes_a_batch_of_no_images():
    # As grad_cam and predict_proba take one: affine_grid had raised on it.
    none = torch.zeros(0, 1, 28, 28)
    every_transform = Augmentation(elastic_px=1.5, styles=1.0)
    labels = torch.zeros(0, dtype=torch.int64)
    out = augment_batch(none, every_transform, torch.Generator().manual_seed(0), labels)
    assert out.shape == none.shape and out.dtype == none.dtype


def test_zero_strength_is_identity(small_train):
    # Every range scales, the elastic distortion's and the writing styles' share too (these
    # drawn only where labels are given).
    x = to_model_input(torch.as_tensor(small_train.images[:64]))
    labels = torch.as_tensor(small_train.labels[:64])
    every_transform = Augmentation(elastic_px=2.0, styles=1.0).scaled(0)
    out = augment_batch(x, every_transform, torch.Generator().manual_seed(0), labels)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_augmented_digits_keep_their_ink(small_train):
    # A random affine within the default ranges moves ink but neither erases nor floods it
    # (stroke-width changes do, by design: tested below).
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    out = augment_batch(x, Augmentation(stroke=0), torch.Generator().manual_seed(0))
    ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ratio.min() > 0.5 and ratio.max() < 2.0


def lean_deg(turned: torch.Tensor) -> torch.Tensor:
    """The lean from vertical, in degrees, of the ink's axis (from second moments) of (B, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = turned.sum(dim=(1, 2))
    mean_x, mean_y = (turned * xs).sum((1, 2)) / mass, (turned * ys).sum((1, 2)) / mass
    dx, dy = xs - mean_x[:, None, None], ys - mean_y[:, None, None]
    cov_xy, cov_yy = (turned * dx * dy).sum((1, 2)), (turned * dy * dy).sum((1, 2))
    cov_xx = (turned * dx * dx).sum((1, 2))
    return torch.rad2deg(0.5 * torch.atan2(2 * cov_xy, cov_yy - cov_xx))


def test_rotation_turns_digits_within_its_range():
    # A vertical bar, rotated alone: its axis leans both ways, up to 12 degrees, no further.
    bar = torch.zeros(256, 1, 28, 28)
    bar[:, :, 4:24, 13:15] = 1
    only_rotation = Augmentation(scale=0, shear=0, translate_px=0, contrast=0, stroke=0, styles=0)
    lean = lean_deg(augment_batch(bar, only_rotation, torch.Generator().manual_seed(0))[:, 0])
    assert lean.abs().max() <= 12.5 and lean.max() > 9 and lean.min() < -9
    # A horizontal bar turns the same way by the same angle: a rotation, not a symmetric stretch
    # (which slants the two bars toward each other). Transposed back, its lean is the mirror's.
    lying = augment_batch(bar.mT, only_rotation, torch.Generator().manual_seed(0))[:, 0]
    torch.testing.assert_close(lean_deg(lying.mT), -lean, atol=0.5, rtol=0)


def square_batch() -> torch.Tensor:
    """256 copies of a 10 x 10 white square in the middle of the frame."""
    square = torch.zeros(256, 1, 28, 28)
    square[:, :, 9:19, 9:19] = 1
    return square


def test_zoom_scales_the_ink_area_within_its_range():
    # A square zoomed alone: its area (its ink) scales by the zoom squared, both ways, up to
    # 88 % and 112 % of its side, no further.
    only_zoom = Augmentation(rotation_deg=0, shear=0, translate_px=0, contrast=0, stroke=0,
                             styles=0)  # fmt: skip
    out = augment_batch(square_batch(), only_zoom, torch.Generator().manual_seed(0))
    area = out.sum(dim=(1, 2, 3)) / 100  # relative to the 10 x 10 square's
    assert area.min() > (1 - 0.12) ** 2 - 0.03 and area.max() < (1 + 0.12) ** 2 + 0.03
    assert area.min() < 0.82 and area.max() > 1.2  # near both ends of the range


def test_shear_slants_vertical_edges_within_its_range():
    # A square sheared alone: its slant (dx/dy, from second moments) is the shear factor drawn,
    # both ways, up to the default range, no further.
    only_shear = Augmentation(rotation_deg=0, scale=0, translate_px=0, contrast=0, stroke=0,
                              styles=0)  # fmt: skip
    shear = only_shear.shear
    out = augment_batch(square_batch(), only_shear, torch.Generator().manual_seed(0))[:, 0]
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = out.sum(dim=(1, 2))
    mean_x, mean_y = (out * xs).sum((1, 2)) / mass, (out * ys).sum((1, 2)) / mass
    dx, dy = xs - mean_x[:, None, None], ys - mean_y[:, None, None]
    slant = (out * dx * dy).sum((1, 2)) / (out * dy * dy).sum((1, 2))
    assert slant.abs().max() <= shear + 0.02
    assert slant.max() > 0.8 * shear and slant.min() < -0.8 * shear


def test_translation_moves_digits_within_its_range(small_train):
    # MNIST's digits sit centred in a 20 x 20 box, so a shift of up to 2.5 px loses no ink and
    # moves the centre of mass by exactly the shift: along each axis, both ways, up to 2.5 px.
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    only_translation = Augmentation(rotation_deg=0, scale=0, shear=0, contrast=0, stroke=0,
                                    styles=0)  # fmt: skip
    moved = augment_batch(x, only_translation, torch.Generator().manual_seed(0))

    def centre_of_mass(images: torch.Tensor) -> torch.Tensor:  # (N, 2): x, y
        ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        mass = images[:, 0].sum(dim=(1, 2))
        return torch.stack([(images[:, 0] * c).sum((1, 2)) / mass for c in (xs, ys)], dim=1)

    shift = centre_of_mass(moved) - centre_of_mass(x)
    assert shift.abs().max() <= 2.5 + 0.1
    assert (shift.amax(dim=0) > 2.0).all() and (shift.amin(dim=0) < -2.0).all()
    # Drawn apart for each axis: one draw for both would shift digits along a diagonal only.
    assert torch.corrcoef(shift.T)[0, 1].abs() < 0.3


@pytest.mark.parametrize("crop", [(slice(4, 24), slice(None)), (slice(None), slice(4, 24))])
def test_a_frame_of_other_height_and_width_is_augmented_as_the_square_one_it_is_cut_from(crop):
    # Its rotation, zoom, shear and shift in pixels as on 28 x 28: the grid's units (half the
    # width along x, half the height along y) had been taken for the same, so a 20 x 28 frame's
    # digits came out shifted 1.4x as far across and stretched as they turned.
    rows, columns = crop
    square = torch.zeros(64, 1, 28, 28)  # grey inside, black edges
    square[:, :, 11:17, 11:17] = 1
    square[:, :, 12:16, 12:16] = 0.5
    no_styles = Augmentation(styles=0)  # elastic is 0: its field is drawn for the frame's size
    whole = augment_batch(square, no_styles, torch.Generator().manual_seed(0))
    cut = augment_batch(square[:, :, rows, columns], no_styles, torch.Generator().manual_seed(0))
    outside = whole.clone()
    outside[:, :, rows, columns] = 0
    assert outside.abs().max() == 0  # every digit stays inside the cut frame
    assert cut.shape[2] != cut.shape[3]
    torch.testing.assert_close(cut, whole[:, :, rows, columns], atol=1e-5, rtol=0)


def test_what_a_shift_brings_into_the_frame_is_paper_not_its_edge_drawn_out():
    # A digit touching its frame (a conformed one can) would otherwise have its edge's strokes
    # stretched out to the frame's side.
    white = torch.ones(16, 1, 28, 28)
    shift_only = Augmentation(rotation_deg=0, scale=0, shear=0, contrast=0, stroke=0, styles=0)
    out = augment_batch(white, shift_only, torch.Generator().manual_seed(0))
    assert out.amin(dim=(1, 2, 3)).max() < 1


def test_contrast_scales_each_digits_ink_within_its_range(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    only_contrast = Augmentation(rotation_deg=0, scale=0, shear=0, translate_px=0, stroke=0,
                                 styles=0)  # fmt: skip
    out = augment_batch(x, only_contrast, torch.Generator().manual_seed(0))
    # On mid-grey pixels (not clipped at 1) each image is its own ink times one factor.
    grey = (x > 0.1) & (x < 0.6)
    factors = torch.stack([(out[i][grey[i]] / x[i][grey[i]]).median() for i in range(256)])
    assert factors.min() >= 0.7 - 1e-3 and factors.max() <= 1.3 + 1e-3
    assert factors.min() < 0.75 and factors.max() > 1.25 and factors.std() > 0.12


def test_stroke_width_change_thickens_and_thins_in_place(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:64]))
    ink = x.sum(dim=(1, 2, 3))
    torch.testing.assert_close(change_stroke_width(x, torch.zeros(64, 1, 1, 1)), x)
    thicker = change_stroke_width(x, torch.full((64, 1, 1, 1), 0.5))
    thinner = change_stroke_width(x, torch.full((64, 1, 1, 1), -0.5))
    assert (thicker >= x).all() and (thicker.sum(dim=(1, 2, 3)) > 1.3 * ink).all()
    assert (thinner <= x).all() and (thinner.sum(dim=(1, 2, 3)) < 0.8 * ink).all()
    # Strokes grow or shrink where they are: the digit does not move.
    for changed in (thicker, thinner):
        assert torch.nn.functional.cosine_similarity(changed.flatten(1), x.flatten(1)).min() > 0.8


def test_stroke_augmentation_varies_ink_both_ways(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    only_stroke = Augmentation(rotation_deg=0, scale=0, shear=0, translate_px=0, contrast=0,
                               stroke=0.5)  # fmt: skip
    ratio = augment_batch(x, only_stroke, torch.Generator().manual_seed(0)).sum(
        dim=(1, 2, 3)
    ) / x.sum(dim=(1, 2, 3))
    assert (ratio > 1.2).any() and (ratio < 0.85).any()
    assert ratio.min() > 0.4 and ratio.max() < 2.0


def test_strength_above_one_stops_the_stroke_change_at_a_full_erosion(small_train):
    # Past amount 1 the blend extrapolated below the erosion and blanked faint digits (8.7 % of
    # MNIST's kept under a tenth of their ink at strength 1.5).
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    only_stroke = Augmentation(rotation_deg=0, scale=0, shear=0, translate_px=0, contrast=0,
                               stroke=1.0, styles=0)  # fmt: skip
    out = augment_batch(x, only_stroke.scaled(1.5), torch.Generator().manual_seed(0))
    eroded = change_stroke_width(x, torch.full((256, 1, 1, 1), -1.0))
    dilated = change_stroke_width(x, torch.full((256, 1, 1, 1), 1.0))
    assert (out >= eroded - 1e-5).all() and (out <= dilated + 1e-5).all()  # grid_sample: ~3e-6
    assert only_stroke.scaled(1.5).stroke == 1.0


def test_ranges_that_would_blank_or_collapse_a_digit_are_refused():
    for bad in ({"contrast": 1.0}, {"scale": 1.2}, {"stroke": 1.5}, {"stroke": -0.1}):
        with pytest.raises(ConfigError, match="must be in"):
            Augmentation(**bad)
    # augment-preview --elastic inf had drawn every augmented tile blank.
    with pytest.raises(ConfigError, match=r"^elastic_px must be a finite number, got inf"):
        Augmentation(elastic_px=math.inf)
    assert Augmentation().max_strength() == pytest.approx(1 / 0.3)
    with pytest.raises(ConfigError, match=r"augment \(the strength\) must be in \[0, 3.33\).*3.4"):
        Augmentation().scaled(3.4)
    # At the bound itself the contrast range reaches 1: refused as a strength, not as a contrast.
    with pytest.raises(ConfigError, match=r"augment \(the strength\) must be in"):
        Augmentation().scaled(Augmentation().max_strength())


@pytest.mark.parametrize("field", ["rotation_deg", "shear", "translate_px", "elastic_px", "styles"])
def test_a_negative_range_is_refused_naming_it(field):
    # Built from Python, a negative elastic_px or styles had turned them off without a word, and
    # the others drawn as their size: each range is a magnitude, drawn both ways.
    with pytest.raises(ConfigError, match=rf"^{field} must be >= 0, got -0.3$"):
        Augmentation(**{field: -0.3})


@pytest.mark.parametrize(
    ("field", "limit"),
    [("rotation_deg", 180), ("shear", 2), ("translate_px", 28), ("elastic_px", 28)],
)
def test_a_range_past_what_the_frame_holds_is_refused_naming_it(field, limit):
    # Built from Python, elastic_px or shear 1e38 or rotation_deg 1e300 had drawn NaN images, and
    # a shift, distortion or slant past the frame's 28 px moves the digit clean off it.
    assert getattr(Augmentation(**{field: limit}), field) == limit
    with pytest.raises(ConfigError, match=rf"^{field} must be in \[0, {limit}\] \(.*got 1e\+38$"):
        Augmentation(**{field: 1e38})
    with pytest.raises(ConfigError, match=rf"^{field} must be in \[0, {limit}\]"):
        Augmentation(**{field: limit + 0.5})


def test_scaled_multiplies_every_range_and_keeps_the_elastic_grid():
    halved = Augmentation(elastic_px=2.0, elastic_cells=8).scaled(0.5)
    assert halved == Augmentation(rotation_deg=6.0, scale=0.06, shear=0.15, translate_px=1.25,
                                  contrast=0.15, elastic_px=1.0, elastic_cells=8, stroke=0.5,
                                  styles=0.15)  # fmt: skip


def test_writing_styles_foot_and_flag_a_one_bar_a_seven_and_mirror_a_nine(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:300]))
    labels = torch.as_tensor(small_train.labels[:300])
    styled = add_writing_styles(x, labels, 1.0, torch.Generator().manual_seed(0))
    ones, sevens, nines = labels == 1, labels == 7, labels == 9
    others = ~(ones | sevens | nines)
    assert ones.sum() > 20 and sevens.sum() > 20 and nines.sum() > 20
    torch.testing.assert_close(styled[others], x[others], atol=0, rtol=0)
    # A 9 written as a P, its loop right of the stem: the digit mirrored, nothing drawn on it.
    torch.testing.assert_close(styled[nines], x[nines].flip(-1), atol=0, rtol=0)
    assert (styled[~nines] >= x[~nines]).all()  # strokes are added, never erased
    added = (styled - x)[:, 0] > 0.5  # (N, H, W)
    inked_rows = (x[:, 0] > 0.5).any(dim=2).float()
    top = inked_rows.argmax(dim=1)
    bottom = 27 - inked_rows.flip(1).argmax(dim=1)
    columns_at = torch.arange(28.0)
    footed, flagged = 0, 0
    for i in ones.nonzero().squeeze(1):
        # A foot: the 1's bottom row reaches out on both sides of its stem by >= 12 % of its
        # height (less a pixel for where the foot's ends fall between pixel centres).
        before, after = x[i, 0, bottom[i]] > 0.5, styled[i, 0, bottom[i]] > 0.5
        columns = after.nonzero().squeeze(1)
        stem = before.nonzero().squeeze(1).float().mean()
        reach = 0.12 * (bottom[i] - top[i]) - 1
        has_foot = bool(stem - columns.min() >= reach and columns.max() - stem >= reach)
        has_flag = bool(added[i, top[i] : (top[i] + bottom[i]) // 2].any())
        assert has_foot or has_flag
        top_row, bottom_row = x[i, 0, top[i]], x[i, 0, bottom[i]]
        lean = top_row @ columns_at / top_row.sum() - bottom_row @ columns_at / bottom_row.sum()
        if not has_foot:  # a flag alone, the continental 1: on an upright 1, else it is a 7
            assert lean.abs() <= 0.2 * (bottom[i] - top[i])
        footed, flagged = footed + has_foot, flagged + has_flag
    assert 0.55 < flagged / ones.sum() < 0.8  # two thirds: a flag alone or with a foot
    assert 0 < ones.sum() - footed < 0.34 * ones.sum()  # a third of the upright ones, at most
    barred = [i for i in sevens.nonzero().squeeze(1) if added[i].any()]
    assert len(barred) > 0.9 * sevens.sum()  # the others were crossed already, as some are
    for i in barred:
        # A bar: added ink along a row 40-70 % of the way down, spanning at least 4 columns.
        row = added[i].sum(dim=1).argmax()
        assert 0.4 <= (row - top[i]) / (bottom[i] - top[i]) <= 0.7
        assert added[i, row].sum() >= 4


def test_writing_styles_are_drawn_on_their_share_of_the_ones_sevens_and_nines(small_train):
    x = to_model_input(torch.as_tensor(small_train.images))
    labels = torch.as_tensor(small_train.labels)
    styled = add_writing_styles(x, labels, 0.3, torch.Generator().manual_seed(0))
    changed = (styled != x).flatten(1).any(dim=1)
    assert not changed[~torch.isin(labels, torch.tensor(STYLED_DIGITS))].any()
    for digit in STYLED_DIGITS:
        assert 0.2 < changed[labels == digit].float().mean() < 0.4  # 30 %, give or take chance


def test_writing_styles_need_labels_and_a_share(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:128]))
    labels = torch.as_tensor(small_train.labels[:128])
    plain = augment_batch(x, Augmentation(styles=0), torch.Generator().manual_seed(3), labels)
    unlabelled = augment_batch(x, Augmentation(styles=1), torch.Generator().manual_seed(3))
    styled = augment_batch(x, Augmentation(styles=1), torch.Generator().manual_seed(3), labels)
    torch.testing.assert_close(unlabelled, plain)
    assert not torch.equal(styled, plain)
    none = add_writing_styles(x, labels, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(none, x, atol=0, rtol=0)
    # A faint digit, no pixel past 0.5, has no stem to read: nothing is drawn (not strokes
    # across the whole frame).
    faint = x * (0.45 / x.amax(dim=(1, 2, 3), keepdim=True))
    sevens = torch.full((128,), 7)
    kept = add_writing_styles(faint, sevens, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept, faint, atol=0, rtol=0)
    # Strokes are drawn as dark as the digit's own darkest ink, not black on a grey digit.
    grey = x * (0.6 / x.amax(dim=(1, 2, 3), keepdim=True))
    barred = add_writing_styles(grey, sevens, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(barred, grey) and barred.amax() <= 0.6 + 1e-6


def test_elastic_field_is_smooth_and_sized_in_pixels():
    augmentation = Augmentation(elastic_px=2.0)
    field = elastic_displacement(512, 28, 28, augmentation, torch.Generator().manual_seed(0), "cpu")
    assert field.shape == (512, 28, 28, 2)
    pixels = field * 28 / 2  # grid units -> pixels
    # The control points (every 9th pixel here, corners included) carry N(0, 2 px) offsets.
    corners = pixels[:, ::27, ::27]
    assert 1.8 < corners.std() < 2.2
    # Smooth: neighbouring pixels move together (Simard's field is low-pass noise, not jitter).
    # Independent per-pixel noise would give a mean step of 1.4x the mean displacement.
    step = (pixels[:, 1:] - pixels[:, :-1]).abs().mean()
    assert step < 0.4 * pixels.abs().mean()
    # One cell per side has four control points, one at each corner, each moved on its own:
    # the field bends across the frame, it does not only shift it.
    one_cell = Augmentation(elastic_px=2.0, elastic_cells=1)
    field = elastic_displacement(64, 28, 28, one_cell, torch.Generator().manual_seed(0), "cpu")
    assert (field[:, 0, 0] - field[:, -1, -1]).abs().mean() > 0.1  # grid units, ~0.2 expected


def test_elastic_field_of_a_frame_of_other_height_and_width_is_sized_in_its_pixels():
    # Sized for a square frame, it had not matched a 20 x 28 one's grid (a torch traceback).
    augmentation = Augmentation(elastic_px=2.0)
    field = elastic_displacement(512, 20, 28, augmentation, torch.Generator().manual_seed(0), "cpu")
    assert field.shape == (512, 20, 28, 2)
    # Both axes N(0, 2 px) at the control points (the corners among them), in their own units.
    corners = field[:, ::19, ::27]
    assert 1.8 < (corners[..., 0] * 28 / 2).std() < 2.2
    assert 1.8 < (corners[..., 1] * 20 / 2).std() < 2.2
    wide = torch.zeros(8, 1, 20, 28)
    wide[:, :, 6:14, 10:18] = 1
    out = augment_batch(wide, augmentation, torch.Generator().manual_seed(0))
    assert out.shape == wide.shape and out.sum() > 0


@pytest.mark.parametrize("cells", [0, -2, 2.5, True])
def test_elastic_cells_must_be_a_whole_number_from_one(cells):
    # Built from Python, 0 had drawn one control point (a shift), -1 and 2.5 a torch traceback.
    with pytest.raises(ConfigError, match=rf"elastic_cells .* whole number >= 1, got {cells!r}"):
        Augmentation(elastic_px=1.5, elastic_cells=cells)


def test_elastic_distortion_bends_strokes_but_keeps_the_digit(small_train):
    x = to_model_input(torch.as_tensor(small_train.images[:256]))
    only_elastic = Augmentation(
        rotation_deg=0, scale=0, shear=0, translate_px=0, contrast=0, elastic_px=1.5, stroke=0
    )
    out = augment_batch(x, only_elastic, torch.Generator().manual_seed(0))
    changed = (out - x).abs().sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert changed.min() > 0.05  # every digit is bent
    ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ratio.min() > 0.5 and ratio.max() < 2.0  # ink moved, not erased or smeared out
    # Bent, not scrambled: most strokes still overlap their old place.
    overlap = torch.nn.functional.cosine_similarity(out.flatten(1), x.flatten(1))
    assert overlap.median() > 0.6
    identity = augment_batch(x, only_elastic.scaled(0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=0)


def test_stratified_split_keeps_class_shares(mnist):
    labels = mnist.labels[:10000]
    train_idx, valid_idx = stratified_split(labels, 0.2, seed=0)
    assert len(valid_idx) == 2000 and len(np.intersect1d(train_idx, valid_idx)) == 0
    assert len(train_idx) + len(valid_idx) == len(labels)
    overall = np.bincount(labels, minlength=10) / len(labels)
    valid_share = np.bincount(labels[valid_idx], minlength=10) / len(valid_idx)
    assert np.abs(overall - valid_share).max() < 0.002
    again, _ = stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(train_idx, again)
    # --seed draws another split, and each part keeps the file's row order.
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], valid_idx)
    assert (np.diff(train_idx) > 0).all() and (np.diff(valid_idx) > 0).all()
    assert len(stratified_split(labels, 0, seed=0)[1]) == 0
    # 5 % of 100 rows cannot hold each of 10 classes: said as a setting to change, not a crash.
    with pytest.raises(ConfigError, match=r"cannot split 100 labelled rows .* --valid-size 0.05"):
        stratified_split(np.arange(100) % 10, 0.05, seed=0)


def test_check_seed_takes_numpys_whole_range_and_names_the_flag():
    for seed in (0, 2**32 - 1):
        check_seed(seed)
    for seed in (-1, 2**32):
        with pytest.raises(
            ConfigError, match=rf"^--seed must be from 0 to 2\*\*32 - 1, got {seed}$"
        ):
            check_seed(seed, "--seed")


def test_a_digit_of_one_row_trains_and_the_rest_split_by_digit(mnist, caplog):
    """One row of a digit had refused the split of any number of rows at any --valid-size but
    0 (scikit-learn cannot stratify on it), telling the user to try another --valid-size."""
    labels = mnist.labels[:2000].copy()
    nines = np.flatnonzero(labels == 9)
    labels = np.delete(labels, nines[1:])  # one 9 left
    with caplog.at_level(logging.WARNING, logger="digit_recognizer"):
        train_idx, valid_idx = stratified_split(labels, 0.1, seed=0)
    assert "digit 9: one labelled row, which trains and cannot also validate" in caplog.text
    assert 9 in labels[train_idx] and 9 not in labels[valid_idx]
    assert len(train_idx) + len(valid_idx) == len(labels)
    # A tenth of all the rows, as expand counts the rows it holds out: not of those but the 9.
    assert len(valid_idx) == math.ceil(0.1 * len(labels))
    assert len(np.union1d(train_idx, valid_idx)) == len(labels)
    assert np.bincount(labels[valid_idx], minlength=10)[:9].min() >= 15  # the others: by digit


@pytest.mark.parametrize("valid_size", [0.2, 0.9])
def test_a_digit_of_two_rows_validates_and_trains_one_each(mnist, valid_size):
    """scikit-learn's rounding had put both rows in one part without a word: at 0.2 the
    validation accuracy said nothing of the digit, at 0.9 the net never learnt it."""
    labels = mnist.labels[:300].copy()
    nines = np.flatnonzero(labels == 9)
    labels = np.delete(labels, nines[2:])  # two 9s left
    train_idx, valid_idx = stratified_split(labels, valid_size, seed=0)
    assert (labels[train_idx] == 9).sum() == 1 and (labels[valid_idx] == 9).sum() == 1
    assert len(valid_idx) == math.ceil(valid_size * len(labels))  # the size asked for
    assert len(np.union1d(train_idx, valid_idx)) == len(labels)
    assert set(labels[train_idx]) == set(labels[valid_idx]) == set(range(10))


def test_split_for_training_keeps_each_image_with_its_label():
    # Each image carries its row number in two pixels, and its label is that row's: a part whose
    # labels were taken from other rows (or other indices) shows as an image that disagrees.
    rows = np.arange(600)
    images = np.zeros((600, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = rows % 256, rows // 256
    data = DigitSet(images, rows % 10)
    parts = split_for_training(data, 0.25, seed=0)
    row_sets = []
    for part in parts:
        part_rows = part.images[:, 0, 0] + 256 * part.images[:, 0, 1].astype(int)
        np.testing.assert_array_equal(part.labels, part_rows % 10)
        row_sets.append(part_rows)
    train_rows, valid_rows = row_sets
    assert len(valid_rows) == 150 and len(np.intersect1d(train_rows, valid_rows)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(row_sets)), rows)


def test_shared_images_are_warned_of_past_one_in_a_hundred(caplog):
    # 1 % of repeats happen in any collection (blank digits); past it, rows were read twice.
    images = np.zeros((100, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(100), 1
    scored = DigitSet(images, None)
    for n_shared, is_warned in ((1, False), (2, True)):
        caplog.clear()
        fitted = DigitSet(np.concatenate([images[:n_shared], images[:50] + 2]), None)
        with caplog.at_level(logging.WARNING):
            assert warn_shared_images(fitted, scored, "test.csv") == n_shared
        assert ("images are also among those trained on" in caplog.text) == is_warned
    assert "test.csv: 2 of its 100 images are also among those trained on" in caplog.text
