"""Base, mid and apex thirds of a patient's contoured slices."""

import numpy as np

from lvseg_search.evaluate.positions import slice_positions


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:40, :40]
    return ((yy - 20) ** 2 + (xx - 20) ** 2 <= radius ** 2).astype(np.uint8)


def test_the_base_is_the_end_where_the_lv_is_larger_whichever_way_slices_are_numbered():
    index = np.repeat(np.arange(6), 2)  # 6 positions x 2 phases
    radii = np.repeat([12, 11, 9, 8, 5, 3], 2)  # the LV narrows towards the apex
    masks = [_disk(r) for r in radii]
    spacing = np.ones((12, 2))
    expected = ["base"] * 4 + ["mid"] * 4 + ["apex"] * 4
    assert slice_positions(index, masks, spacing) == expected
    assert slice_positions(index, masks[::-1], spacing) == expected[::-1]
    # Millimetres, not pixels: the same anatomy at a finer pixel size is still the base.
    fine = spacing.copy()
    fine[:4] = 0.5
    bigger = [_disk(2 * r) if i < 4 else _disk(r) for i, r in enumerate(radii)]
    assert slice_positions(index, bigger, fine)[:4] == ["base"] * 4


def test_fewer_than_three_positions_are_all_mid():
    masks = [_disk(5), _disk(8)]
    assert slice_positions(np.array([3, 4]), masks, np.ones((2, 2))) == ["mid", "mid"]
