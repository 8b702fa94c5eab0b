"""Post-processing: the delivered LV mask is the network's largest connected region,
optionally filled to its convex hull."""

from __future__ import annotations

import numpy as np

from lvseg_search.evaluate.measures import contour_mm
from lvseg_search.evaluate.scoring import segment
from lvseg_search.model.postprocess import (
    convex_hull,
    fill_convex_hulls,
    keep_largest_regions,
    largest_region,
)


def _two_regions() -> np.ndarray:
    mask = np.zeros((16, 16), np.uint8)
    mask[2:8, 2:8] = 1  # 36 pixels: the LV
    mask[11:13, 11:14] = 1  # 6 pixels: a false positive elsewhere
    mask[9, 9] = 1  # touches nothing 4-connected
    return mask


def test_largest_region_keeps_only_the_biggest_region():
    kept = largest_region(_two_regions())
    assert kept.dtype == bool
    assert kept.sum() == 36 and kept[2:8, 2:8].all()


def test_largest_region_of_one_region_or_none_is_the_mask():
    one = np.zeros((8, 8), bool)
    one[1:4, 1:5] = True
    np.testing.assert_array_equal(largest_region(one), one)
    assert not largest_region(np.zeros((8, 8), np.uint8)).any()


def test_diagonal_neighbours_are_separate_regions():
    mask = np.zeros((6, 6), np.uint8)
    mask[0:2, 0:2] = 1
    mask[2, 2] = 1
    assert largest_region(mask).sum() == 4


def test_keep_largest_regions_keeps_each_masks_dtype():
    out = keep_largest_regions([_two_regions(), np.zeros((4, 4), np.uint8)])
    assert [m.dtype for m in out] == [np.uint8, np.uint8]
    assert out[0].sum() == 36 and out[1].sum() == 0


def test_segment_delivers_the_largest_region_and_the_raw_probabilities():
    raw = _two_regions().astype(np.float32)

    def predict(batch, spacing):
        assert spacing.shape == (len(batch), 2)
        return {"probabilities": np.repeat(raw[None], len(batch), 0),
                "mask": np.repeat(_two_regions()[None], len(batch), 0)}

    probs, masks = segment(predict, np.zeros((3, 16, 16), np.int16), np.ones((3, 2)),
                           batch_size=2)
    assert all(m.dtype == np.uint8 and m.sum() == 36 for m in masks)
    assert all(p.sum() == raw.sum() for p in probs)


def test_contours_trace_the_largest_region():
    points = contour_mm(_two_regions(), (1.0, 1.0))
    assert points[:, 0].max() < 8.5 and points[:, 1].max() < 8.5


def _masks_for_the_graph() -> np.ndarray:
    """Masks where labelling is easy to get wrong: a long snake (many steps), equal
    regions (ties), diagonal touches, one-pixel regions, an empty and a full mask."""
    rng = np.random.default_rng(0)
    masks = (rng.random((8, 23, 31)) > 0.45).astype(np.uint8)
    masks[0] = 0
    masks[1] = 1
    snake = np.zeros((23, 31), np.uint8)
    snake[::2] = 1
    for r in range(1, 23, 2):
        snake[r, 30 if r % 4 == 1 else 0] = 1
    masks[2] = snake
    masks[3] = 0
    masks[3, 2:5, 2:5] = masks[3, 10:13, 20:23] = 1  # two regions of 9: the first wins
    masks[4] = 0
    masks[4, ::2, ::2] = 1  # only diagonal touches: all one-pixel regions
    return masks


def _assert_layer_equals(layer_class, reference, masks: np.ndarray) -> None:
    """A post-processing layer, eager and traced, gives the NumPy reference's masks."""
    import keras

    expected = np.stack(reference(masks))
    eager = np.asarray(layer_class()(masks))
    inp = keras.Input((None, None), dtype="uint8")
    traced = keras.Model(inp, layer_class()(inp)).predict_on_batch(masks)
    for got in (eager, np.asarray(traced)):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_largest_region_layer_equals_the_scipy_post_processing():
    from lvseg_search.model.serving_layers import LargestRegion

    _assert_layer_equals(LargestRegion, keep_largest_regions, _masks_for_the_graph())


def _tiny_network_and_images():
    """A random one-layer network on a 16 px grid, and 3 raw images to serve."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 1))
    net = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same", activation="softmax")(inp))
    images = {"raw": np.random.default_rng(1).integers(0, 1000, (3, 37, 29)).astype(np.int16),
              "pixel_spacing_mm": np.full((3, 2), 0.9, np.float32)}
    return net, images


def test_serving_model_delivers_the_largest_region_of_its_own_mask():
    import keras

    from lvseg_search.model.serving import build_serving_model

    net, images = _tiny_network_and_images()
    model = build_serving_model([net], 16, "zscore", 1.0)
    raw_mask = keras.Model(model.input, model.get_layer("restore_size").output[1])
    before = np.asarray(raw_mask.predict_on_batch(images))
    assert max(len(np.unique(_label(m))) for m in before) > 3  # several regions to drop
    after = np.asarray(model.predict_on_batch(images)["mask"])
    np.testing.assert_array_equal(after, np.stack(keep_largest_regions(before)))


def _label(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.label(mask)[0]


def _notched_disks() -> np.ndarray:
    """Disks with a notch cut into one side (a papillary muscle left out), an empty mask,
    one pixel and a one-pixel-wide line."""
    yy, xx = np.mgrid[:41, :47]
    masks = np.zeros((6, 41, 47), np.uint8)
    for k, (cy, cx, r) in enumerate(((20, 23, 12.5), (12, 30, 7.3), (28, 15, 9.8))):
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks[k, cy - 2:cy + 3, cx + 2:] = 0
    masks[4, 7, 9] = 1
    masks[5, 33, 4:40] = 1
    return masks


def test_convex_hull_fills_the_notch_and_nothing_beyond_the_disk():
    masks = _notched_disks()
    yy, xx = np.mgrid[:41, :47]
    disk = (yy - 20) ** 2 + (xx - 23) ** 2 <= 12.5 ** 2
    hull = convex_hull(masks[0])
    assert hull.dtype == bool and np.all(hull >= masks[0].astype(bool))
    # The notch is closed up to the chord between its corners; nothing grows past the
    # disk's own outline.
    assert hull[18:23, 25:33].all()
    assert not (hull & ~disk).any()
    assert not convex_hull(masks[3]).any()
    np.testing.assert_array_equal(convex_hull(masks[4]), masks[4].astype(bool))
    np.testing.assert_array_equal(convex_hull(masks[5]), masks[5].astype(bool))
    assert [m.dtype for m in fill_convex_hulls(masks)] == [np.uint8] * 6


def test_convex_hull_layer_equals_the_numpy_post_processing():
    from lvseg_search.model.serving_layers import ConvexHull

    masks = np.concatenate([_notched_disks(), np.stack(keep_largest_regions(
        np.pad(_masks_for_the_graph(), ((0, 0), (0, 18), (0, 16)))))])
    _assert_layer_equals(ConvexHull, fill_convex_hulls, masks)


def test_serving_model_fills_the_hull_of_its_largest_region_only_when_asked():
    import pytest

    from lvseg_search.model.serving import build_serving_model

    net, images = _tiny_network_and_images()
    largest = np.asarray(build_serving_model([net], 16, "zscore", 1.0)
                         .predict_on_batch(images)["mask"])
    model = build_serving_model([net], 16, "zscore", 1.0, convex_hull=True)
    hull = np.asarray(model.predict_on_batch(images)["mask"])
    np.testing.assert_array_equal(hull, np.stack(fill_convex_hulls(largest)))
    assert (hull.sum() > largest.sum()) and "convex_hull" in [layer.name for layer in model.layers]
    with pytest.raises(ValueError, match="convex_hull needs largest_region"):
        build_serving_model([net], 16, "zscore", 1.0, largest_region=False, convex_hull=True)


def test_largest_region_runs_in_every_format_on_full_size_speckled_masks(tmp_path):
    """Two 256 x 256 images whose untrained network gives dozens of regions of each
    class: the exported formats keep the same regions as the Keras model, per contour
    (the blood pool's and the epicardial region's largest, each filled to its hull, the
    myocardium the ring between them; ``graph_ops.per_contour``, which runs the binary
    largest-region step on both regions at once), and deliver the class probabilities
    too. In ONNX without a table of segments x largest segment (a segment sum converts
    to one, through Unique: it asked 134 GB for the real subset's images)."""
    import keras

    from lvseg_search.classes import Classes
    from lvseg_search.model.formats import write_formats
    from lvseg_search.model.parity import check_parity
    from lvseg_search.model.serving import build_serving_model

    classes = Classes(("background", "lv_blood_pool", "myocardium"), myocardium=2)
    keras.utils.set_random_seed(5)
    inp = keras.Input((64, 64, 1))
    net = keras.Model(inp, keras.layers.Conv2D(3, 3, padding="same",
                                               activation="softmax")(inp))
    model = build_serving_model([net], 64, "zscore", 4.0, convex_hull=True, classes=classes)
    raw = np.random.default_rng(2).integers(0, 1000, (2, 256, 256)).astype(np.int16)
    spacing = np.full((2, 2), 1.0, np.float32)
    raw_mask = keras.Model(model.input, model.get_layer("restore_size").output[1])
    before = np.asarray(raw_mask.predict_on_batch({"raw": raw, "pixel_spacing_mm": spacing}))
    assert min(_label(m == 1).max() for m in before) > 30
    assert min(_label(m > 0).max() for m in before) > 10

    def keras_run(r, s):
        return {k: np.asarray(v) for k, v in model({"raw": r, "pixel_spacing_mm": s}).items()}

    expected = fill_convex_hulls(keep_largest_regions(before, classes), classes)
    delivered = keras_run(raw, spacing)
    np.testing.assert_array_equal(delivered["mask"], np.stack(expected))
    assert delivered["class_probabilities"].shape == (2, 256, 256, 3)
    assert (delivered["mask"] == 2).any()
    runners, onnx_status = write_formats(model, tmp_path)
    assert onnx_status == "written"
    report = check_parity(keras_run, runners, [(raw, spacing)], classes=3)
    assert set(report) == {"saved_model", "keras_file", "tflite", "onnx"}
    for runner in runners.values():  # every format gives the class probabilities
        out = runner(raw[:1], spacing[:1])
        np.testing.assert_allclose(out["class_probabilities"],
                                   delivered["class_probabilities"][:1], atol=1e-4)
    import onnx

    ops_used = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
    assert "Unique" not in ops_used
