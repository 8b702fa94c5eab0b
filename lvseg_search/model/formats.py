"""The deployable model's file formats inside an exported model folder, and a runner
for each: a function from a raw int16 batch to ``{"probabilities", "mask"}`` numpy
arrays, so that ``export`` can check every format against the Keras model and
``predict`` can serve one. TensorFlow (and tf2onnx/onnxruntime) load lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"


def tflite_runner(path: Path):
    """A function running the TFLite model's serving signature on one raw batch."""
    import warnings

    from lvseg_search._tf import tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the interpreter's move to LiteRT is announced
        interpreter = tf().lite.Interpreter(model_path=str(path), num_threads=1)
    runner = interpreter.get_signature_runner("serving_default")
    return lambda raw: runner(raw=np.asarray(raw, np.int16))


def saved_model_runner(path: Path):
    """A function running the SavedModel's ``serving_default`` signature."""
    from lvseg_search._tf import tf

    t = tf()
    loaded = t.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    return lambda raw: {k: v.numpy() for k, v in serve(raw=t.constant(raw, t.int16)).items()}


def write_onnx(saved_model: Path, out: Path) -> tuple[Any, str]:
    """Converts the SavedModel to ONNX when tf2onnx is installed; returns a runner
    (or None) and what happened."""
    try:
        import onnxruntime
        import tf2onnx  # noqa: F401
    except ImportError:
        return None, "skipped: install the 'onnx' extra (tf2onnx, onnxruntime)"
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
         "--signature_def", "serving_default", "--opset", "17", "--output", str(out)],
        capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        return None, f"failed: {lines[-1] if lines else 'tf2onnx gave no reason'}"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(out), options,
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run_onnx(raw):
        values = session.run(None, {session.get_inputs()[0].name: np.asarray(raw, np.int16)})
        named = dict(zip(names, values, strict=True))
        return {"probabilities": next(v for k, v in named.items() if "prob" in k),
                "mask": next(v for k, v in named.items() if "mask" in k)}

    return run_onnx, "written"
