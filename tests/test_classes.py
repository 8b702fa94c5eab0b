"""Classes as data: roles, regions, partial labels in the losses, per-contour
post-processing and scores, and the LV mass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvseg_search.classes import IGNORE, Classes, fully_labelled, regions

MYO = Classes(("background", "lv_blood_pool", "myocardium"), myocardium=2, ignore=IGNORE)


def _ring(size=48, centre=(24, 24), inner=8, outer=12):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - centre[0], xx - centre[1])
    labels = np.zeros((size, size), np.uint8)
    labels[r <= outer] = 2
    labels[r <= inner] = 1
    return labels


def test_classes_round_trip_and_read_older_records():
    assert Classes.from_json(MYO.to_json()) == MYO
    # A manifest before roles were written names the classes only.
    old = Classes.from_json({"classes": {"0": "background", "1": "lv_blood_pool",
                                         "2": "myocardium"}})
    assert (old.blood_pool, old.myocardium, old.ignore) == (1, 2, None)
    assert Classes.from_json({"classes": {"0": "background", "1": "lv_blood_pool"}}) == Classes()
    assert MYO.objective("epi") == "epi" and Classes().objective("epi") == "endo"
    with pytest.raises(ValueError):
        MYO.objective("both")
    with pytest.raises(ValueError):
        Classes(("background", "lv_blood_pool"), myocardium=2)


def test_regions_are_the_challenge_contours():
    labels = _ring()
    found = regions(labels, MYO)
    assert found["endo"].sum() == (labels == 1).sum()
    assert found["epi"].sum() == (labels > 0).sum()
    assert found["myo"].sum() == (labels == 2).sum()
    partial = np.where(labels == 1, 1, IGNORE).astype(np.uint8)
    assert fully_labelled(labels, MYO) and not fully_labelled(partial, MYO)


def test_partial_losses_equal_the_plain_ones_without_ignored_pixels_and_train_what_is_known():
    import keras

    from lvseg_search.model.losses import CrossentropyDiceLoss, PartialCrossentropy, SoftDiceLoss

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=(2, 8, 8)).astype("float32")
    labels = rng.integers(0, 3, (2, 8, 8, 1)).astype("uint8")
    plain = float(keras.losses.SparseCategoricalCrossentropy()(labels, probs))
    assert float(PartialCrossentropy(IGNORE)(labels, probs)) == pytest.approx(plain, rel=1e-5)
    assert float(SoftDiceLoss(ignore=IGNORE)(labels, probs)) == pytest.approx(
        float(SoftDiceLoss()(labels, probs)), rel=1e-6)
    assert float(CrossentropyDiceLoss(ignore=IGNORE)(labels, probs)) == pytest.approx(
        float(CrossentropyDiceLoss()(labels, probs)), rel=1e-5)
    # An ignored pixel is known not to be blood pool: its cross-entropy is -log(1 - p1).
    partial = np.full((1, 1, 1, 1), IGNORE, np.uint8)
    p = np.array([[[[0.2, 0.5, 0.3]]]], np.float32)
    assert float(PartialCrossentropy(IGNORE)(partial, p)) == pytest.approx(-math.log(0.5),
                                                                           rel=1e-5)
    # On a partly labelled image only the blood pool's Dice term counts: the
    # myocardium is there but unlabelled, so predicting it beside the blood pool costs
    # nothing, while predicting blood pool outside the expert's costs.
    labels = np.full((1, 4, 4, 1), IGNORE, np.uint8)
    labels[0, :2, :2] = 1
    as_myo = np.zeros((1, 4, 4, 3), np.float32)
    as_myo[..., 2] = 1.0
    as_myo[0, :2, :2] = [0.0, 1.0, 0.0]
    as_blood = as_myo.copy()
    as_blood[0, 2:, 2:] = [0.0, 1.0, 0.0]
    dice = SoftDiceLoss(ignore=IGNORE)
    assert float(dice(labels, as_myo)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice(labels, as_blood)) > 0.2
    # ...and no myocardium at all costs nothing either (the expert did not say).
    as_background = as_myo.copy()
    as_background[..., 2] = 0.0
    as_background[..., 0] = 1.0 - as_background[..., 1]
    assert float(dice(labels, as_background)) == pytest.approx(0.0, abs=1e-6)


def test_ignored_pixels_keep_their_label_on_the_network_grid():
    from lvseg_search.data.pipeline import grid_masks

    mask = np.where(_ring(32, (16, 16), 6, 9) == 1, 1, IGNORE).astype(np.uint8)
    out = grid_masks(mask[None, ..., None], np.array([[1.0, 1.0]], np.float32), 16,
                     2.0).numpy()[0, ..., 0]
    assert set(np.unique(out)) == {1, IGNORE}
    assert (out == 1).sum() == pytest.approx((mask == 1).sum() / 4, rel=0.15)


def test_postprocessing_per_contour_in_numpy_and_in_the_graph_agree():
    from keras import ops

    from lvseg_search.model.postprocess import fill_convex_hulls, keep_largest_regions
    from lvseg_search.model.serving_layers import ContourRegions

    labels = _ring()
    labels[2:5, 2:5] = 1  # a stray blood-pool blob
    labels[40:44, 2:6] = 2  # a stray myocardium blob
    labels[24, 20] = 0  # a notch in the blood pool
    rng = np.random.default_rng(1)
    speckled = np.where(rng.random(labels.shape) < 0.05, rng.integers(0, 3, labels.shape),
                        labels).astype(np.uint8)
    # A fourth class (a data set's right ventricle): its largest region, outside the
    # epicardial one.
    rv = Classes(("background", "lv_blood_pool", "myocardium", "rv"), myocardium=2)
    with_rv = labels.copy()
    with_rv[10:20, 34:44] = 3
    with_rv[44:46, 44:46] = 3
    for case, classes in ((labels, MYO), (speckled, MYO), (with_rv, rv)):
        largest = keep_largest_regions([case], classes)[0]
        hull = fill_convex_hulls([largest], classes)[0]
        assert (largest[2:5, 2:5] == 0).all() and (largest[40:44, 2:6] == 0).all()
        # The myocardium is the ring between the two contours: nothing of it inside
        # the blood pool's region, and the blood pool inside the epicardial region.
        assert hull[24, 20] == 1
        for step, expected in (("largest_region", largest), ("convex_hull", hull)):
            source = case if step == "largest_region" else largest
            graph = ops.convert_to_numpy(ContourRegions(classes.to_json(), step)(
                np.stack([source, source[::-1]])))
            np.testing.assert_array_equal(graph[0], expected)
    assert (largest[10:20, 34:44] == 3).all() and (largest[44:46, 44:46] == 0).all()


def test_each_contour_is_scored_and_a_frame_without_o_contour_only_for_its_blood_pool():
    from lvseg_search.evaluate.scoring import PatientImages, score_predictions

    full = _ring()
    partial = np.where(full == 1, 1, IGNORE).astype(np.uint8)
    patient = PatientImages("P", np.zeros((2, 48, 48), np.int16), np.stack([full, partial]),
                            np.ones((2, 2)), np.array([0, 0]), np.array([0, 1]), classes=MYO)
    shrunk = _ring(inner=8, outer=11)  # the epicardium 1 pixel too small
    rows, summary = score_predictions([[shrunk, shrunk]], [patient])
    assert rows[0]["dice"] == 1.0 and rows[1]["dice"] == 1.0
    assert 0.8 < rows[0]["epi_dice"] < 1.0 and 0.6 < rows[0]["myo_dice"] < 1.0
    assert math.isnan(rows[1]["epi_dice"]) and math.isnan(rows[1]["myo_dice"])
    assert summary["epi_images"] == 1.0
    assert summary["endo_dice"] == 1.0
    assert summary["dice"] == pytest.approx((1.0 + rows[0]["epi_dice"]) / 2)
    assert score_predictions([[shrunk, shrunk]], [patient], "epi")[1]["dice"] == rows[0][
        "epi_dice"]
    assert score_predictions([[shrunk, shrunk]], [patient], "endo")[1]["dice"] == 1.0


def test_lv_mass_is_the_myocardial_volume_at_end_diastole_times_its_density():
    from lvseg_search.evaluate.volumes import stack_volumes

    rows = [{"slice_index": s, "phase_index": p, "area_mm2": 1000.0 - 300 * p,
             "myo_area_mm2": 800.0} for s in range(4) for p in range(2)]
    positions = [10.0 * r["slice_index"] for r in rows]
    volumes, summary = stack_volumes(rows, positions)
    assert summary["ed_phase"] == 0 and summary["edv_ml"] == pytest.approx(40.0)
    assert summary["myocardial_volume_ed_ml"] == pytest.approx(32.0)
    assert summary["lv_mass_ed_g"] == pytest.approx(32.0 * 1.05)
    assert list(volumes["myocardial_volume_ml"]) == pytest.approx([32.0, 32.0])
    # No whole stack: no mass, and why.
    _, summary = stack_volumes(rows[:2], positions[:2])
    assert summary["lv_mass_ed_g"] is None and "whole short-axis stack" in summary["why_no_mass"]


def test_phantom_mass_from_its_rasterized_contours_matches_its_known_mass(tmp_path):
    import json

    from lvseg_search.data.manifest import open_data
    from lvseg_search.data.phantom import SLICE_GAP_MM, TRUTH, synth
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.prepare import prepare

    synth(tmp_path / "phantom", 2, seed=5, size=96, progress=False, o_contours="ed")
    truth = json.loads((tmp_path / "phantom" / TRUTH).read_text())["patients"]
    manifest = prepare(tmp_path / "phantom", tmp_path / "data", myocardium=True,
                       progress=False)
    # ED frames carry both contours; the others keep their blood pool only.
    assert manifest["ignore_label"] == IGNORE and manifest["roles"]["myocardium"] == 2
    assert all(p["partially_labelled_slices"] == p["slices"] / 2
               for p in manifest["patients"])
    data = open_data(tmp_path / "data")
    for patient in load_patient_images(data, data.patient_ids):
        assert patient.classes.has_myocardium
        ed = patient.phase_index == 0
        pixel = patient.spacing_mm[0].prod()
        ring = sum((m == 2).sum() for m in patient.masks[ed]) * pixel * SLICE_GAP_MM / 1000
        known = truth[patient.patient_id]["lv_mass_ed_g"]
        assert 7.0 <= truth[patient.patient_id]["wall_mm"] <= 11.0
        assert ring * 1.05 == pytest.approx(known, rel=0.05)
