"""The export's parity check between the Keras model and each written format."""

import numpy as np
import pytest


def test_parity_check_fails_a_format_that_differs():
    from lvseg_search.errors import UserError
    from lvseg_search.model.parity import check_parity

    batch = [(np.zeros((1, 8, 8), np.int16), np.ones((1, 2), np.float32))]

    def reference(raw, spacing):
        return {"probabilities": np.full(raw.shape, 0.25, np.float32),
                "mask": np.zeros(raw.shape, np.uint8)}

    def close(raw, spacing):
        same = reference(raw, spacing)
        return {**same, "probabilities": same["probabilities"] + 5e-5}

    def off(raw, spacing):
        same = reference(raw, spacing)
        return {**same, "probabilities": same["probabilities"] + 2e-4}

    report = check_parity(reference, {"close": close}, batch)
    assert report["close"]["max_abs_diff"] == pytest.approx(5e-5, rel=1e-3)
    with pytest.raises(UserError, match="off: exported model differs"):
        check_parity(reference, {"close": close, "off": off}, batch)


def test_parity_fails_on_nan_outputs_and_on_any_differing_mask_pixel():
    from lvseg_search.errors import UserError
    from lvseg_search.model.parity import check_parity

    batch = [(np.zeros((1, 8, 8), np.int16), np.ones((1, 2), np.float32))]

    def reference(raw, spacing):
        return {"probabilities": np.full(raw.shape, 0.25, np.float32),
                "mask": np.zeros(raw.shape, np.uint8)}

    def nan(raw, spacing):
        probs = reference(raw, spacing)["probabilities"].copy()
        probs[0, 3, 3] = np.nan  # max(|diff|) would skip it and read 0
        return {**reference(raw, spacing), "probabilities": probs}

    def one_pixel(raw, spacing):
        mask = reference(raw, spacing)["mask"].copy()
        mask[0, 2, 2] = 1
        return {**reference(raw, spacing), "mask": mask}

    with pytest.raises(UserError, match="nan: exported model gives NaN"):
        check_parity(reference, {"nan": nan}, batch)
    with pytest.raises(UserError, match="one_pixel: exported model's mask differs .* in 1 pix"):
        check_parity(reference, {"one_pixel": one_pixel}, batch)
    with pytest.raises(UserError, match="keras: the model's probabilities hold NaN"):
        check_parity(nan, {"same": reference}, batch)

    def fails(raw, spacing):  # as onnxruntime fails when it cannot allocate
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory\n"
                           "second line of the runtime's message")

    with pytest.raises(UserError) as refused:
        check_parity(reference, {"onnx": fails}, batch)
    assert str(refused.value) == (
        "onnx: exported model fails on a (1, 8, 8) batch (RuntimeError: [ONNXRuntimeError] "
        ": 1 : FAIL : Failed to allocate memory); nothing was written; --no-onnx skips ONNX")
    assert check_parity(reference, {"same": reference}, batch)["same"] == {
        "max_abs_diff": 0.0, "mask_mismatch_pixels": 0, "mask_tie_pixels": 0,
        "at_centre": False}


def test_a_mask_pixel_may_differ_only_where_the_classes_tie():
    """Float formats round differently: a pixel whose LV probability sits on the class
    boundary may flip (counted); a flip anywhere else fails the export."""
    from lvseg_search.errors import UserError
    from lvseg_search.model.parity import check_parity

    batch = [(np.zeros((1, 4, 4), np.int16), np.ones((1, 2), np.float32))]
    probs = np.full((1, 4, 4), 0.1, np.float32)
    probs[0, 1, 1] = 0.50002  # LV by a hair
    probs[0, 2, 2] = 0.9

    def reference(raw, spacing):
        return {"probabilities": probs, "mask": (probs >= 0.5).astype(np.uint8)}

    def rounded(raw, spacing):
        p = probs.copy()
        p[0, 1, 1] = 0.49998
        return {"probabilities": p, "mask": (p >= 0.5).astype(np.uint8)}

    def wrong(raw, spacing):
        mask = (probs >= 0.5).astype(np.uint8)
        mask[0, 2, 2] = 0  # 0.9 is no tie
        return {"probabilities": probs, "mask": mask}

    report = check_parity(reference, {"rounded": rounded}, batch)
    assert report["rounded"]["mask_tie_pixels"] == 1
    assert report["rounded"]["mask_mismatch_pixels"] == 0
    with pytest.raises(UserError, match="wrong: .* in 1 pixel.* not ties of classes"):
        check_parity(reference, {"wrong": wrong}, batch)
    # With three classes the LV can tie anywhere from 1/3 to 1/2, not at 0.1.
    low = probs.copy()
    low[0, 3, 3] = 0.4

    def three(raw, spacing):
        mask = (low >= 0.5).astype(np.uint8)
        mask[0, 3, 3] = 1
        return {"probabilities": low, "mask": mask}

    def three_ref(raw, spacing):
        return {"probabilities": low, "mask": (low >= 0.5).astype(np.uint8)}

    assert check_parity(three_ref, {"three": three}, batch, classes=3)["three"][
        "mask_tie_pixels"] == 1
    with pytest.raises(UserError, match="not ties of classes"):
        check_parity(three_ref, {"three": three}, batch, classes=2)
