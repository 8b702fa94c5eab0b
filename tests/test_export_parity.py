"""The export's parity check between the Keras model and each written format."""

import numpy as np
import pytest


def test_parity_check_fails_a_format_that_differs():
    from lvseg_search.errors import UserError
    from lvseg_search.export import check_parity

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
    from lvseg_search.export import check_parity

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
    assert check_parity(reference, {"same": reference}, batch)["same"] == {
        "max_abs_diff": 0.0, "mask_mismatch_pixels": 0}
