import numpy as np
import pytest

from lvseg_search.data.contours import (
    perimeter,
    rasterize,
    read_contour,
    shoelace_area,
    write_contour,
)
from lvseg_search.errors import UserError


def test_square_fills_pixel_centres_inside(tmp_path):
    # Square from x=1.5..4.5, y=2.5..5.5 holds centres of columns 2..4 and rows 3..5.
    pts = np.array([[1.5, 2.5], [4.5, 2.5], [4.5, 5.5], [1.5, 5.5]])
    mask = rasterize(pts, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[3:6, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    assert shoelace_area(pts) == pytest.approx(9.0)
    assert perimeter(pts) == pytest.approx(12.0)


def test_x_is_column_and_y_is_row():
    pts = np.array([[5.5, 0.5], [7.5, 0.5], [7.5, 1.5], [5.5, 1.5]])  # wide, short
    mask = rasterize(pts, (10, 10))
    rows, cols = np.nonzero(mask)
    assert set(rows) == {1} and set(cols) == {6, 7}


def test_round_trip_through_file(tmp_path):
    pts = np.array([[10.25, 12.5], [20.0, 12.75], [15.5, 25.0]])
    path = tmp_path / "IM-0001-0001-icontour-manual.txt"
    write_contour(path, pts)
    np.testing.assert_allclose(read_contour(path, (32, 32)), pts)


@pytest.mark.parametrize("text,needle", [
    ("1 1\n2 2\n", "at least 3"),
    ("1 1\n2 nan\n3 3\n", "not a finite number"),
    ("1 1\n2 2\n40 3\n", "outside the 32x32 image"),
    ("1 1\n2 2 2\n3 3\n", "expected two numbers"),
    ("1 1\nabc def\n3 3\n", "expected two numbers"),
])
def test_bad_contours_are_refused_with_file_name(tmp_path, text, needle):
    path = tmp_path / "IM-0001-0001-icontour-manual.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as info:
        read_contour(path, (32, 32))
    assert str(path) in str(info.value)
