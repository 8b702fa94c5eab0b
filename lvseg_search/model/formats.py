"""The deployable model's file formats inside an exported model folder, and a runner
for each: a function from a raw int16 batch ``[B, H, W]`` and its pixel spacing
``[B, 2]`` (row, column, mm) to ``{"probabilities", "mask"}`` numpy arrays, so that
``export`` can check every format against the Keras model and ``predict`` can serve
one. Models of serving contract 1 (raw pixels only) run too; they ignore the spacing.
TensorFlow (and tf2onnx/onnxruntime) load lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
SPACING = "pixel_spacing_mm"  # the serving signature's second input (contract 2)


def check_inputs(raw, pixel_spacing) -> tuple[np.ndarray, np.ndarray]:
    """The serving inputs as the signature takes them.

    Raises:
        ValueError: ``raw`` is not ``[B, H, W]``, or the spacing is not ``[B, 2]`` of
            positive finite millimetres.
    """
    raw = np.asarray(raw, np.int16)
    spacing = np.asarray(pixel_spacing, np.float32)
    if raw.ndim != 3:
        raise ValueError(f"raw: expected int16 [batch, height, width], got shape {raw.shape}")
    if spacing.shape != (raw.shape[0], 2):
        raise ValueError(f"pixel_spacing_mm: expected shape ({raw.shape[0]}, 2), one (row, "
                         f"column) pair in mm per image, got {spacing.shape}")
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError("pixel_spacing_mm: every value must be a positive number of mm, got "
                         f"{spacing.tolist()}")
    return raw, spacing


def tflite_runner(path: Path):
    """A function running the TFLite model's serving signature on one raw batch."""
    import warnings

    from lvseg_search._tf import tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the interpreter's move to LiteRT is announced
        interpreter = tf().lite.Interpreter(model_path=str(path), num_threads=1)
    runner = interpreter.get_signature_runner("serving_default")
    takes_spacing = SPACING in interpreter.get_signature_list()["serving_default"]["inputs"]

    def run(raw, pixel_spacing):
        raw, spacing = check_inputs(raw, pixel_spacing)
        return runner(raw=raw, **({SPACING: spacing} if takes_spacing else {}))

    return run


def saved_model_runner(path: Path):
    """A function running the SavedModel's ``serving_default`` signature."""
    from lvseg_search._tf import tf

    t = tf()
    loaded = t.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    takes_spacing = SPACING in serve.structured_input_signature[1]

    def run(raw, pixel_spacing):
        raw, spacing = check_inputs(raw, pixel_spacing)
        extra = {SPACING: t.constant(spacing)} if takes_spacing else {}
        return {k: v.numpy() for k, v in serve(raw=t.constant(raw), **extra).items()}

    run.contract = 2 if takes_spacing else 1
    return run


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
    inputs = [i.name for i in session.get_inputs()]
    raw_name = next(n for n in inputs if "raw" in n)
    spacing_name = next((n for n in inputs if "spacing" in n), None)

    def run_onnx(raw, pixel_spacing):
        raw, spacing = check_inputs(raw, pixel_spacing)
        feed = {raw_name: raw, **({spacing_name: spacing} if spacing_name else {})}
        values = session.run(None, feed)
        named = dict(zip(names, values, strict=True))
        return {"probabilities": next(v for k, v in named.items() if "prob" in k),
                "mask": next(v for k, v in named.items() if "mask" in k)}

    return run_onnx, "written"


def write_formats(model, folder: Path, onnx: bool = True) -> tuple[dict[str, Any], str]:
    """Writes the serving model as ``.keras``, SavedModel, TFLite and (optionally) ONNX.

    Args:
        model: The Keras serving model (``serving.build_serving_model``).
        folder: Where the files go.
        onnx: Also write ONNX when tf2onnx is installed.

    Returns:
        A runner per written format (each reloaded from its file) and what happened to
        ONNX.
    """
    import keras

    from lvseg_search._tf import tf

    model.save(folder / KERAS_FILE)
    model.export(str(folder / SAVED_MODEL), format="tf_saved_model", verbose=False)
    converter = tf().lite.TFLiteConverter.from_saved_model(str(folder / SAVED_MODEL))
    (folder / TFLITE_FILE).write_bytes(converter.convert())
    reloaded = keras.models.load_model(folder / KERAS_FILE, safe_mode=True)

    def keras_file(raw, pixel_spacing):
        raw, spacing = check_inputs(raw, pixel_spacing)
        return {k: np.asarray(v) for k, v in
                reloaded({"raw": raw, SPACING: spacing}).items()}

    runners = {"saved_model": saved_model_runner(folder / SAVED_MODEL),
               "keras_file": keras_file, "tflite": tflite_runner(folder / TFLITE_FILE)}
    onnx_status = "not requested"
    if onnx:
        runner, onnx_status = write_onnx(folder / SAVED_MODEL, folder / ONNX_FILE)
        if runner is not None:
            runners["onnx"] = runner
    return runners, onnx_status
