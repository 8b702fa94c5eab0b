"""The deployable model's preprocessing matches training, at any input size."""

import numpy as np
import pytest

from lvseg_search.data.pipeline import NORMALIZATIONS, PipelineConfig, _prepare
from lvseg_search.model.graph_ops import resize_bilinear
from lvseg_search.model.serving_layers import Preprocess


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_preprocess_matches_the_training_pipeline(normalization):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3000, (3, 80, 72)).astype(np.int16)
    ours = np.asarray(Preprocess(48, normalization)(raw))
    config = PipelineConfig(image_size=48, normalization=normalization)
    for i in range(3):
        expected, _ = _prepare({"image": raw[i], "mask": np.zeros((80, 72), np.uint8)}, config)
        np.testing.assert_allclose(ours[i], np.asarray(expected), atol=2e-5)


@pytest.mark.parametrize("size", [(7, 5), (32, 32), (100, 61)])
def test_resize_bilinear_matches_tensorflow(size):
    import tensorflow as tf

    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear(x, *size))
    np.testing.assert_allclose(ours, tf.image.resize(x, size).numpy(), atol=1e-5)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(("shape", "spacing"), [((80, 72), (1.3, 1.3)), ((60, 90), (0.7, 1.9)),
                                                ((256, 200), (2.1, 2.1))])
def test_physical_grid_preprocess_matches_the_training_pipeline(normalization, shape, spacing):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3000, (2, *shape)).astype(np.int16)
    pixel_spacing = np.array([spacing, spacing[::-1]], np.float32)
    ours = np.asarray(Preprocess(40, normalization, 1.5)(raw, pixel_spacing))
    config = PipelineConfig(image_size=40, spacing_mm=1.5, normalization=normalization)
    for i in range(2):
        expected, _ = _prepare({"image": raw[i], "mask": np.zeros(shape, np.uint8),
                                "pixel_spacing_mm": pixel_spacing[i]}, config)
        np.testing.assert_allclose(ours[i], np.asarray(expected), atol=2e-5)


def test_grid_weights_match_between_the_model_and_the_pipeline():
    from lvseg_search.data.pipeline import grid_weights as tf_weights
    from lvseg_search.model.resample import grid_weights

    for out_size, in_size, out_sp, in_sp in [(64, 256, 1.4, [1.3, 0.7, 2.5]),
                                             (200, 48, [1.0, 2.0], 1.4)]:
        ours = np.asarray(grid_weights(out_size, in_size, np.float32(out_sp),
                                       np.float32(in_sp)))
        theirs = tf_weights(out_size, in_size, np.float32(out_sp), np.float32(in_sp)).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
        # Rows inside the input sum to 1 (a constant stays constant), outside to 0.
        sums = ours.sum(-1)
        assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0))


def test_same_spacing_same_size_is_the_identity():
    from lvseg_search.model.resample import from_grid, to_grid

    x = np.random.default_rng(2).random((2, 24, 24, 3)).astype(np.float32)
    spacing = np.full((2, 2), 1.25, np.float32)
    np.testing.assert_allclose(np.asarray(to_grid(x, spacing, 24, 1.25)), x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(from_grid(x, spacing, 24, 24, 1.25)), x, atol=1e-6)


def test_outside_the_field_of_view_is_background_and_no_lv():
    from lvseg_search.model.serving_layers import RestoreSize

    # A 10 x 10 grid of 2 mm on a 60 x 60 image of 1 mm: only the central 20 mm is seen.
    probs = np.zeros((1, 10, 10, 2), np.float32)
    probs[..., 1] = 1.0  # LV everywhere the network sees
    raw = np.zeros((1, 60, 60), np.int16)
    lv, mask = RestoreSize(1, 2.0)(probs, raw, np.ones((1, 2), np.float32))
    mask = np.asarray(mask)[0]
    assert mask[20:40, 20:40].all() and mask.sum() == 400
    assert np.asarray(lv)[0, :10].max() == 0.0
