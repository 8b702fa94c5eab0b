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
    from lvseg_search.model.serving_layers import LocateLV

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
    from lvseg_search.model.formats import write_formats
    from lvseg_search.model.parity import check_parity
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


def _study_with_a_decoy(rng):
    """Five 120 x 140 images (1.2 mm) of one study, the LV 42 mm right of the centre in
    each; the third also holds a larger bright decoy 23 mm left of the centre, which a
    centred 64 mm view sees whole and the LV's edge only."""
    truth = _disk((120, 140), (60, 105), 9)
    decoy = _disk((120, 140), (60, 50), 12)
    raw = (100 + rng.normal(0, 5, (5, 120, 140)) + 900 * truth).astype(np.int16)
    raw[2][decoy] += 900
    return raw, np.full((5, 2), 1.2, np.float32), truth


def test_a_given_centre_cuts_the_view_there_and_nan_leaves_the_models_own():
    from lvseg_search.model.serving import build_serving_model, make_predictor

    rng = np.random.default_rng(1)
    raw, spacing, truth = _study_with_a_decoy(rng)
    net = _bright_is_lv(32)

    def dice(mask):
        return 2 * (mask.astype(bool) & truth).sum() / (mask.sum() + truth.sum())

    at_lv = np.tile(np.array([[0.0, (105 - 69.5) * 1.2]], np.float32), (5, 1))
    unset = at_lv.copy()
    unset[[0, 2]] = np.nan  # row 0 all NaN, row 2 half: both mean "the model's own"
    unset[2, 0] = 0.0
    for roi in ("centre", "localized"):
        plain = build_serving_model([net], 32, "zscore", 2.0, roi=roi)
        given = build_serving_model([net], 32, "zscore", 2.0, roi=roi, at_centre=True)
        assert {la.name for la in plain.layers}.isdisjoint({"chosen_centre"})
        own = {k: np.asarray(v) for k, v in plain({"raw": raw,
                                                   "pixel_spacing_mm": spacing}).items()}
        there = {k: np.asarray(v) for k, v in given({"raw": raw, "pixel_spacing_mm": spacing,
                                                     "roi_centre_mm": at_lv}).items()}
        mixed = {k: np.asarray(v) for k, v in given({"raw": raw, "pixel_spacing_mm": spacing,
                                                     "roi_centre_mm": unset}).items()}
        assert all(dice(m) > 0.9 for m in there["mask"])
        for i in range(5):
            expect = own if i in (0, 2) else there
            np.testing.assert_array_equal(mixed["mask"][i], expect["mask"][i])
            np.testing.assert_allclose(mixed["probabilities"][i], expect["probabilities"][i],
                                       atol=1e-6)
        # The eager predictor computes the same.
        predict = make_predictor([net], 32, "zscore", 2.0, roi=roi)
        np.testing.assert_allclose(predict(raw, spacing, unset)["probabilities"],
                                   mixed["probabilities"], atol=1e-5)
    assert dice(own["mask"][2]) < 0.1  # localized on its own, image 2 follows the decoy
    with pytest.raises(ValueError, match="needs a physical grid"):
        build_serving_model([net], 32, "zscore", None, at_centre=True)
    with pytest.raises(ValueError, match="needs a physical grid"):
        make_predictor([net], 32, "zscore", None)(raw, spacing, at_lv)


def test_study_centre_is_the_median_of_the_images_lv_centres():
    from lvseg_search.evaluate.study_roi import lv_centre_mm, study_centre_mm

    shape = (40, 60)  # centre at (19.5, 29.5)
    lv = _disk(shape, (10, 40), 4)
    both = lv | _disk(shape, (30, 5), 2)  # a smaller second region is not the LV
    np.testing.assert_allclose(lv_centre_mm(both, (2.0, 0.5)), [-19.0, 5.25], atol=1e-9)
    assert np.isnan(lv_centre_mm(np.zeros(shape, bool), (1.0, 1.0))).all()
    elsewhere = _disk(shape, (35, 10), 4)
    empty = np.zeros(shape, bool)
    masks = [lv, lv, elsewhere, empty, lv]
    np.testing.assert_allclose(study_centre_mm(masks, [(1.0, 1.0)] * 5), [-9.5, 10.5],
                               atol=1e-9)
    assert np.isnan(study_centre_mm([empty, empty], [(1.0, 1.0)] * 2)).all()


def test_a_study_centre_saves_the_image_whose_own_localization_follows_a_decoy(tmp_path):
    """Through every format that holds the signature taking a centre, as predict and
    scoring run them: per image, the decoy's image loses its LV; per study, none does."""
    import json

    from lvseg_search.evaluate.scoring import segment
    from lvseg_search.model.formats import saved_model_runner, write_formats
    from lvseg_search.model.parity import check_parity
    from lvseg_search.model.serving import build_serving_model, make_predictor
    from lvseg_search.predict import centres_on_study

    rng = np.random.default_rng(2)
    raw, spacing, truth = _study_with_a_decoy(rng)
    net = _bright_is_lv(32)

    def dice(mask):
        return 2 * (mask.astype(bool) & truth).sum() / (mask.sum() + truth.sum())

    predict = make_predictor([net], 32, "zscore", 2.0, roi="localized")
    _, alone = segment(predict, raw, spacing)
    _, together = segment(predict, raw, spacing, study_roi=True)
    assert dice(alone[2]) < 0.1 and min(dice(m) for m in alone[:2]) > 0.9
    assert min(dice(m) for m in together) > 0.9

    settings = {"roi": "localized", "tta": "flips", "largest_region": True}
    model = build_serving_model([net], 32, "zscore", 2.0, **settings)
    at_centre = build_serving_model([net], 32, "zscore", 2.0, **settings, at_centre=True)

    def keras_run(r, s, c=None):
        out = (model({"raw": r, "pixel_spacing_mm": s}) if c is None else
               at_centre({"raw": r, "pixel_spacing_mm": s, "roi_centre_mm": c}))
        return {k: np.asarray(v) for k, v in out.items()}

    runners, _ = write_formats(model, tmp_path, onnx=False, at_centre=at_centre)
    centre = np.array([[0.0, 42.0], [np.nan, np.nan], [-10.0, 5.0], [0.0, 42.0],
                       [np.nan, 1.0]], np.float32)
    report = check_parity(keras_run, runners, [(raw, spacing), (raw, spacing, centre)])
    assert {k: r["at_centre"] for k, r in report.items()} == {
        "saved_model": True, "tflite": True, "keras_file": False}
    serve = saved_model_runner(tmp_path / "saved_model")
    _, served = segment(serve, raw, spacing, study_roi=True)
    assert min(dice(m) for m in served) > 0.9
    # The SavedModel holds its signatures, named inputs and outputs, each graph once (a
    # function kept beside its signature was traced and saved a second time).
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "serve", "serve_at_centre"}
    assert set(loaded.signatures["serve_at_centre"].structured_input_signature[1]) == {
        "raw", "pixel_spacing_mm", "roi_centre_mm"}
    assert set(loaded.signatures["serving_default"].structured_outputs) == {
        "probabilities", "mask"}
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "saved_model" / "saved_model.pb").read_bytes())
    graphs = [f.signature.name for f in saved.meta_graphs[0].graph_def.library.function
              if f.signature.name.startswith("__inference_")
              and "signature_wrapper" not in f.signature.name
              and "_traced_" not in f.signature.name]
    assert len(graphs) == 2, graphs

    # predict centres a study's views when the card says the model locates the LV.
    card = tmp_path / "model_card.json"
    assert not centres_on_study(tmp_path, serve)  # no card
    card.write_text(json.dumps({"postprocessing": {"roi": "localized"}}))
    assert centres_on_study(tmp_path, serve)
    card.write_text(json.dumps({"postprocessing": {"roi": "centre"}}))
    assert not centres_on_study(tmp_path, serve)

    # A centre the model cannot take, or of the wrong shape or value: refused.
    with pytest.raises(ValueError, match="has no serve_at_centre signature"):
        runners["keras_file"](raw, spacing, centre)
    with pytest.raises(ValueError, match=r"roi_centre_mm: expected shape \(5, 2\)"):
        serve(raw, spacing, centre[:4])
    with pytest.raises(ValueError, match="must be finite mm"):
        runners["tflite"](raw, spacing, np.full((5, 2), np.inf, np.float32))
