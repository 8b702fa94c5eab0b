"""roi = localized: the field of view cut around the LV that a whole-image pass finds, so
that a heart far from the image centre is not cut off."""

import numpy as np
import pytest


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_a_shifted_grid_is_centred_where_asked_and_maps_back_onto_the_image():
    from lvseg_search.model.resample import from_grid, to_grid

    image = np.zeros((1, 60, 80, 1), np.float32)
    # A disk 12 rows below and 20 columns left of the image centre (29.5, 39.5), 1.5 mm px.
    image[0, _disk((60, 80), (41.5, 19.5), 5), 0] = 1.0
    spacing = np.array([[1.5, 1.5]], np.float32)
    centre = np.array([[12 * 1.5, -20 * 1.5]], np.float32)
    grid = np.asarray(to_grid(image, spacing, 24, 1.5, centre))[0, ..., 0]
    rows, cols = np.nonzero(grid > 0.5)
    assert rows.mean() == pytest.approx(11.5, abs=0.01)  # the grid's centre
    assert cols.mean() == pytest.approx(11.5, abs=0.01)
    back = np.asarray(from_grid(to_grid(image, spacing, 24, 1.5, centre), spacing, 60, 80,
                                1.5, centre))
    np.testing.assert_allclose(back, image, atol=1e-6)  # the disk lies inside the view
    assert not np.asarray(from_grid(to_grid(image, spacing, 24, 1.5), spacing, 60, 80,
                                    1.5)).any()  # centred, the view misses it


def test_locate_lv_finds_the_largest_region_in_mm_from_the_image_centre():
    from lvseg_search.model.serving import LocateLV

    size = 16
    lv = np.zeros((3, size, size), np.float32)
    lv[0][_disk((size, size), (3, 10), 2)] = 0.9  # the larger region
    lv[0][_disk((size, size), (12, 3), 1)] = 0.9
    lv[1][_disk((size, size), (7.5, 7.5), 2)] = 0.9  # at the grid's centre
    probs = np.stack([1 - lv, lv], axis=-1)  # image 3: no LV anywhere
    locate = LocateLV(size, 4.0)  # 4 mm grid pixels
    centre = np.asarray(locate(probs))
    np.testing.assert_allclose(centre[0], [(3 - 7.5) * 4.0, (10 - 7.5) * 4.0], atol=1e-4)
    np.testing.assert_allclose(centre[1:], 0.0, atol=1e-4)
    # On a grid that was itself centred elsewhere, the offsets add up; no LV: stay there.
    before = np.array([[10.0, -5.0], [3.0, 4.0], [-8.0, 2.0]], np.float32)
    moved = np.asarray(locate(probs, before))
    np.testing.assert_allclose(moved, centre + before, atol=1e-4)


def _bright_is_lv(size):
    """A 'network' that calls every bright pixel LV (flip- and shift-equivariant)."""
    import keras

    x = keras.Input((size, size, 1))
    logits = keras.layers.Concatenate()([keras.ops.zeros_like(x), 4.0 * x - 4.0])
    return keras.Model(x, keras.layers.Softmax()(logits))


def test_localized_roi_segments_a_heart_that_the_centred_view_cuts_off(tmp_path):
    from lvseg_search.export import check_parity
    from lvseg_search.model.formats import write_formats
    from lvseg_search.model.serving import build_serving_model, make_predictor

    rng = np.random.default_rng(0)
    # 42 mm right of the centre at 1.2 mm pixels: mostly outside the centred 64 mm view.
    truth = _disk((120, 140), (60, 105), 9)
    raw = (100 + rng.normal(0, 5, (1, 120, 140)) + 900 * truth).astype(np.int16)
    spacing = np.array([[1.2, 1.2]], np.float32)
    net = _bright_is_lv(32)  # a 32 x 2 mm = 64 mm field of view

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    centred = make_predictor([net], 32, "zscore", 2.0)(raw, spacing)["mask"][0].astype(bool)
    localized = make_predictor([net], 32, "zscore", 2.0, roi="localized")(raw, spacing)
    assert dice(centred) < 0.1
    assert dice(localized["mask"][0].astype(bool)) > 0.9

    # Every exported format, with test-time augmentation too (one conversion for both).
    model = build_serving_model([net], 32, "zscore", 2.0, roi="localized", tta="dihedral",
                                largest_region=False)
    assert {"locate_view_0", "locate_lv_0", "tta_views"} <= {la.name for la in model.layers}

    def keras_run(r, s):
        return {k: np.asarray(v) for k, v in model({"raw": r, "pixel_spacing_mm": s}).items()}

    both = make_predictor([net], 32, "zscore", 2.0, roi="localized", tta="dihedral")
    np.testing.assert_allclose(keras_run(raw, spacing)["probabilities"],
                               both(raw, spacing)["probabilities"], atol=1e-5)
    runners, onnx_status = write_formats(model, tmp_path)
    assert onnx_status == "written"  # tf2onnx is a test extra
    batches = [(raw, spacing), (np.concatenate([raw, raw[:, ::-1]]),
                                np.array([[1.2, 1.2], [0.9, 1.4]], np.float32))]
    report = check_parity(keras_run, runners, batches)
    assert set(report) == {"saved_model", "keras_file", "tflite", "onnx"}
    with pytest.raises(ValueError, match="needs a physical grid"):
        build_serving_model([net], 32, "zscore", None, roi="localized")
