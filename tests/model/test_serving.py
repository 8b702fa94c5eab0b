"""The deployable model's preprocessing matches training, at any input size."""

import numpy as np
import pytest

from lvseg_search.data.pipeline import NORMALIZATIONS, PipelineConfig, _prepare
from lvseg_search.model.serving import Preprocess, resize_bilinear


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
