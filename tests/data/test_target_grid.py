"""The physical grid: chosen from the data, and the same anatomy in mm whatever the
pixel spacing an image was written at."""

from __future__ import annotations

import numpy as np
import pytest

from lvseg_search.errors import UserError


@pytest.fixture(scope="module")
def two_spacings(tmp_path_factory):
    """The same 2-patient phantom written at 128 and at 224 pixels per side: the same
    anatomy in mm at pixel spacings 1.75 times apart."""
    from lvseg_search.data.manifest import open_data
    from lvseg_search.data.phantom import synth
    from lvseg_search.prepare import prepare

    root = tmp_path_factory.mktemp("spacings")
    out = {}
    for size in (128, 224):
        synth(root / f"p{size}", 2, seed=5, size=size, phases=2, progress=False)
        prepare(root / f"p{size}", root / f"d{size}", progress=False)
        out[size] = open_data(root / f"d{size}")
    return out


def _records(data, pid):
    from lvseg_search.data import shards

    return shards.read_shard(data.shard(pid))


def test_a_phantom_at_two_pixel_spacings_gives_masks_that_agree_in_mm(two_spacings):
    from lvseg_search.data.pipeline import grid_masks
    from lvseg_search.evaluate.measures import dice

    coarse, fine = two_spacings[128], two_spacings[224]
    pid = coarse.patient_ids[0]
    a, b = _records(coarse, pid), _records(fine, pid)
    assert len(a) == len(b)
    ratio = a[0]["pixel_spacing_mm"][0] / b[0]["pixel_spacing_mm"][0]
    assert ratio == pytest.approx(224 / 128, rel=1e-3)
    offsets = []
    for ra, rb in zip(a, b, strict=True):
        on_grid = [grid_masks(r["mask"][None, ..., None], r["pixel_spacing_mm"][None], 112, 1.5
                              ).numpy()[0, ..., 0] == 1 for r in (ra, rb)]
        # The same LV on the network's grid, whatever the stored pixel size (the
        # phantom's own polygons differ by about half a millimetre between the two) ...
        assert dice(*on_grid) > 0.9
        for r, m in zip((ra, rb), on_grid, strict=True):
            stored = r["mask"] == 1
            # ... with the area in mm^2 the stored mask holds (up to a few grid pixels
            # on the smallest apical slices) ...
            area = stored.sum() * np.prod(r["pixel_spacing_mm"])
            assert m.sum() * 1.5 ** 2 == pytest.approx(area, rel=0.05, abs=12.0)
            # ... at the same place in mm from the image's centre.
            centre_mm = ((np.argwhere(stored).mean(0) + 0.5 - np.array(stored.shape) / 2)
                         * r["pixel_spacing_mm"])
            grid_mm = (np.argwhere(m).mean(0) + 0.5 - 112 / 2) * 1.5
            np.testing.assert_allclose(grid_mm, centre_mm, atol=0.6)
            offsets.append(grid_mm - centre_mm)
    # No shift on average: a half-pixel error in the grids' alignment would be 0.75 mm.
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.2


def test_the_deployable_model_delivers_the_same_mm_at_both_spacings(two_spacings):
    """A fixed network (bright = LV) behind the serving wrapper: what it sees on the
    physical grid is the same, so its masks, delivered on each stored grid, agree in
    mm^2; resizing whole images instead would show it anatomy of another size."""
    import keras

    from lvseg_search.model.serving import build_serving_model

    inp = keras.Input((112, 112, 1))
    logits = keras.layers.Conv2D(2, 1, kernel_initializer=keras.initializers.Constant(
        [[[[-4.0, 4.0]]]]), bias_initializer=keras.initializers.Constant([4.0, -4.0]))(inp)
    net = keras.Model(inp, keras.layers.Softmax()(logits))
    model = build_serving_model([net], 112, "zscore", 1.5)
    areas = {}
    for size, data in two_spacings.items():
        records = _records(data, data.patient_ids[0])
        raw = np.stack([r["image"] for r in records])
        spacing = np.stack([r["pixel_spacing_mm"] for r in records]).astype(np.float32)
        out = model.predict_on_batch({"raw": raw, "pixel_spacing_mm": spacing})
        assert out["mask"].shape == raw.shape
        areas[size] = out["mask"].sum(axis=(1, 2)) * np.prod(spacing, axis=1)
    assert areas[128].min() > 0
    np.testing.assert_allclose(areas[224], areas[128], rtol=0.12)


def test_the_grid_comes_from_the_training_patients(two_spacings):
    from lvseg_search.data.target_grid import MARGIN_MM, choose_grid, data_geometry

    data = two_spacings[224]
    patients = data.patient_ids
    median, radius = data_geometry(data, patients)
    spacing = float(data.manifest["patients"][0]["pixel_spacing_mm"][0])
    assert min(spacing, median) <= median <= max(
        p["pixel_spacing_mm"][0] for p in data.manifest["patients"])
    grid = choose_grid(data, patients, 8)
    assert grid.spacing_mm == pytest.approx(median, rel=1e-5)
    assert grid.field_of_view_mm == pytest.approx(2 * (radius + MARGIN_MM), rel=1e-3)
    assert grid.size % 8 == 0 and grid.size * grid.spacing_mm >= grid.field_of_view_mm
    assert (grid.size - 8) * grid.spacing_mm < grid.field_of_view_mm
    # Any two of pixel size, field of view and size decide the third.
    given = choose_grid(data, patients, 8, spacing_mm=2.0, field_of_view_mm=100.0)
    assert (given.spacing_mm, given.size) == (2.0, 56)
    sized = choose_grid(data, patients, 8, field_of_view_mm=96.0, image_size=64)
    assert sized.spacing_mm == pytest.approx(1.5)
    with pytest.raises(UserError, match="any two decide the third"):
        choose_grid(data, patients, 8, spacing_mm=2.0, field_of_view_mm=100.0, image_size=64)
    with pytest.raises(UserError, match="--spacing: -1 mm must be more than 0"):
        choose_grid(data, patients, 8, spacing_mm=-1.0)


def test_spacing_option_parsing():
    from lvseg_search.engine.options import parse_spacing

    assert parse_spacing(None) is None
    assert parse_spacing("none") == 0.0 and parse_spacing("None") == 0.0
    assert parse_spacing("1.25") == 1.25
    for bad in ("0", "-2", "abc", "inf", "nan"):
        with pytest.raises(UserError, match="--spacing"):
            parse_spacing(bad)
