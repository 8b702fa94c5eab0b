"""Deployable models written before the package moved into stage sub-packages still load.

``tests/fixtures/serving_v1.keras`` was written by the flat layout (its layers' module is
``lvseg_search.serving``); the layers keep their registered names
(``lvseg_search>Preprocess`` ...), so importing today's serving module is enough.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_keras_file_from_the_flat_layout_loads_and_gives_the_same_outputs():
    code = f"""
import numpy as np, keras
import lvseg_search.model.serving  # registers the deployable model's layers
model = keras.models.load_model({str(FIXTURES / "serving_v1.keras")!r}, safe_mode=True)
expected = np.load({str(FIXTURES / "serving_v1_expected.npz")!r})
out = model(expected["raw"])
np.testing.assert_allclose(np.asarray(out["probabilities"]), expected["probabilities"],
                           atol=1e-6)
assert (np.asarray(out["mask"]) == expected["mask"]).all() and expected["mask"].any()
print("same")
"""
    # A fresh interpreter: nothing else of the package registered beforehand.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("same")
    assert np.load(FIXTURES / "serving_v1_expected.npz")["raw"].shape == (2, 20, 24)


def test_onnx_outputs_are_named_as_the_contract_names_them():
    from lvseg_search.model.formats import _by_output

    named = {"class_probabilities:0": 3, "probabilities:0": 1, "mask": 2}
    assert _by_output(named) == {"class_probabilities": 3, "probabilities": 1, "mask": 2}
    assert _by_output({"probabilities": 1, "mask": 2}) == {"probabilities": 1, "mask": 2}
