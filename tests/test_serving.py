"""The deployable model's preprocessing matches training, at any input size; volumes
and ejection fraction from slice areas."""

import numpy as np
import pytest

from lvseg_search.pipeline import NORMALIZATIONS, PipelineConfig, _prepare
from lvseg_search.predict import stack_volumes
from lvseg_search.serving import Preprocess, resize_bilinear


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


def test_parity_check_fails_a_format_that_differs():
    from lvseg_search.errors import UserError
    from lvseg_search.export import check_parity

    batch = [np.zeros((1, 8, 8), np.int16)]

    def reference(raw):
        return {"probabilities": np.full(raw.shape, 0.25, np.float32),
                "mask": np.zeros(raw.shape, np.uint8)}

    def close(raw):
        return {**reference(raw), "probabilities": reference(raw)["probabilities"] + 5e-5}

    def off(raw):
        return {**reference(raw), "probabilities": reference(raw)["probabilities"] + 2e-4}

    report = check_parity(reference, {"close": close}, batch)
    assert report["close"]["max_abs_diff"] == pytest.approx(5e-5, rel=1e-3)
    with pytest.raises(UserError, match="off: exported model differs"):
        check_parity(reference, {"close": close, "off": off}, batch)
