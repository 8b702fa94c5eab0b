"""Scores on shapes with known answers."""

import math

import numpy as np
import pytest
from skimage.draw import disk

from lvseg_search.evaluate.measures import (
    average_perpendicular_distance,
    contour_mm,
    dice,
    hausdorff_mm,
    score_image,
    volume_dice,
)


def _disc(centre, radius, shape=(200, 200)):
    mask = np.zeros(shape, bool)
    mask[disk(centre, radius, shape=shape)] = True
    return mask


def test_square_against_itself():
    sq = np.zeros((32, 32), bool)
    sq[8:20, 10:22] = True
    s = score_image(sq, sq, (1.5, 1.5))
    assert s == {"dice": 1.0, "apd_mm": 0.0, "hausdorff_mm": 0.0, "good_contour": 1.0}


def test_two_offset_discs():
    r, d, spacing = 40.0, 10.0, 0.5
    a, b = _disc((100, 100), r), _disc((100, 100 + d), r)
    # Dice: lens area of two equal circles over their summed areas.
    lens = 2 * r**2 * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r**2 - d**2)
    assert dice(a, b) == pytest.approx(lens / (math.pi * r**2), abs=0.01)
    # Hausdorff between equal circles offset by d is d (here in mm).
    assert hausdorff_mm(a, b, (spacing, spacing)) == pytest.approx(d * spacing, abs=0.6)
    # APD: mean over circle A of | |p - c_B| - r |.
    theta = np.linspace(0, 2 * np.pi, 100000, endpoint=False)
    expected = np.mean(np.abs(np.hypot(r * np.cos(theta) - d, r * np.sin(theta)) - r))
    apd = average_perpendicular_distance(a, b, (spacing, spacing))
    assert apd == pytest.approx(expected * spacing, abs=0.3)
    assert score_image(a, b, (spacing, spacing))["good_contour"] == 1.0
    far = _disc((100, 100 + 30), r)  # 15 mm off: APD about 9.5 mm
    assert score_image(a, far, (spacing, spacing))["good_contour"] == 0.0


def test_spacing_is_per_axis():
    sq = np.zeros((40, 40), bool)
    sq[10:30, 10:30] = True
    down = np.roll(sq, 2, axis=0)  # two rows down
    right = np.roll(sq, 2, axis=1)  # two columns right
    assert hausdorff_mm(sq, down, (3.0, 1.0)) == pytest.approx(6.0, abs=0.01)
    assert hausdorff_mm(sq, right, (3.0, 1.0)) == pytest.approx(2.0, abs=0.01)


def test_empty_masks():
    empty = np.zeros((16, 16), bool)
    blob = empty.copy()
    blob[4:9, 4:9] = True
    both = score_image(empty, empty, (1.0, 1.0))
    assert both["dice"] == 1.0 and math.isnan(both["apd_mm"]) and math.isnan(both["good_contour"])
    missed = score_image(empty, blob, (1.0, 1.0))
    assert missed["dice"] == 0.0 and missed["good_contour"] == 0.0
    assert math.isnan(missed["hausdorff_mm"])
    assert volume_dice([empty, blob], [empty, blob]) == 1.0
    assert volume_dice([empty, empty], [blob, blob]) == 0.0


def test_point_to_polyline_distance_is_perpendicular_to_within_0_025_mm():
    from lvseg_search.evaluate.measures import Reference

    square = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0], [10.0, 0.0]])
    points = np.array([[5.0, -3.0], [5.0, 5.0], [12.0, 12.0], [3.3, 0.0], [10.7, 4.2]])
    expected = [3.0, 5.0, math.sqrt(8.0), 0.0, 0.7]
    got = Reference(square).distances(points)
    assert np.all(got >= np.array(expected) - 1e-9)
    np.testing.assert_allclose(got, expected, atol=0.025)


def test_a_prepared_reference_scores_like_the_manual_mask():
    from lvseg_search.evaluate.measures import reference

    yy, xx = np.mgrid[:64, :64]
    truth = (yy - 30) ** 2 + (xx - 33) ** 2 < 15 ** 2
    pred = (yy - 32) ** 2 + (xx - 30) ** 2 < 13 ** 2
    ref = reference(truth, (1.25, 1.25))
    assert score_image(pred, truth, (1.25, 1.25), ref) == score_image(pred, truth, (1.25, 1.25))


def test_contour_is_the_outer_boundary_around_a_long_hole():
    # A 20x20 square with a comb-shaped hole whose edge (~250 px) is longer than the
    # square's own (~80 px): an untrained network's mask looks like this. The contour
    # scored must be the outer one, enclosing the whole square.
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[7, 7:22] = False
    mask[7:22, 7:22:2] = False
    points = contour_mm(mask, (1.0, 1.0))
    rows, cols = points[:, 0], points[:, 1]
    assert rows.min() == pytest.approx(4.5) and rows.max() == pytest.approx(24.5)
    assert cols.min() == pytest.approx(4.5) and cols.max() == pytest.approx(24.5)
    assert len(points) < 100
    # A background pixel that touches the outside only diagonally is outside, as
    # find_contours connects background: the boundary still dips around it (to 0.5 px
    # of its centre; the square's edge is 1.5 px away).
    notch = np.zeros((12, 12), bool)
    notch[2:10, 2:10] = True
    notch[2, 2] = False
    notch[3, 3] = False
    points = contour_mm(notch, (1.0, 1.0))
    assert np.hypot(points[:, 0] - 3, points[:, 1] - 3).min() == pytest.approx(0.5)
