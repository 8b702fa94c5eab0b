"""Volumes and ejection fraction from slice areas."""

import pytest

from lvseg_search.evaluate.volumes import stack_volumes


def _rows(areas):
    return [{"slice_index": s, "phase_index": p, "area_mm2": a}
            for (s, p), a in areas.items()]


def test_volumes_and_ejection_fraction_have_known_answers():
    # 3 slices 8 mm apart (positions along the normal), 2 phases.
    areas = {(0, 0): 1000.0, (1, 0): 1500.0, (2, 0): 500.0,
             (0, 1): 400.0, (1, 1): 700.0, (2, 1): 100.0}
    positions = [10.0 + 8 * s for s, _ in areas]
    volumes, summary = stack_volumes(_rows(areas), positions)
    assert summary["slice_spacing_mm"] == pytest.approx(8.0)
    assert list(volumes["volume_ml"]) == pytest.approx([3000 * 8 / 1000, 1200 * 8 / 1000])
    assert summary["ed_phase"] == 0 and summary["es_phase"] == 1
    assert summary["edv_ml"] == pytest.approx(24.0) and summary["esv_ml"] == pytest.approx(9.6)
    assert summary["ejection_fraction"] == pytest.approx((24.0 - 9.6) / 24.0)


def test_no_ejection_fraction_without_a_whole_stack():
    areas = {(0, 0): 1000.0, (1, 0): 1500.0, (2, 0): 500.0, (0, 1): 400.0, (1, 1): 700.0}
    _, summary = stack_volumes(_rows(areas), [8.0 * s for s, _ in areas])
    assert summary["ejection_fraction"] is None and "whole short-axis stack" in summary["why_no_ef"]


def test_a_stack_with_no_lv_says_why_it_has_no_ejection_fraction():
    areas = {(s, p): 0.0 for s in range(3) for p in range(2)}
    _, summary = stack_volumes(_rows(areas), [8.0 * s for s, _ in areas])
    assert summary["ejection_fraction"] is None
    assert "no LV segmented" in summary["why_no_ef"]
