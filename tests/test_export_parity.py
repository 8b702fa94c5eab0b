"""The export's parity check between the Keras model and each written format."""

import numpy as np
import pytest


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
