"""The deployable model's file formats inside an exported model folder, and a runner
for each: a function from a raw int16 batch ``[B, H, W]`` and its pixel spacing
``[B, 2]`` (row, column, mm) to ``{"probabilities", "mask"}`` numpy arrays, so that
``export`` can check every format against the Keras model and ``predict`` can serve
one. Models of serving contract 1 (raw pixels only) run too; they ignore the spacing.
The SavedModel also holds a second signature, ``serve_at_centre``, that takes where to
cut each image's field of view (``roi_centre_mm``), as does a second TFLite file; a
runner given a centre uses it.
TensorFlow (and tf2onnx/onnxruntime) load lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search.model.contract import AT_CENTRE, RAW, ROI_CENTRE, SPACING

SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
TFLITE_AT_CENTRE_FILE = "model_at_centre.tflite"  # the AT_CENTRE signature alone
ONNX_FILE = "model.onnx"


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


def check_centre(roi_centre_mm, batch: int) -> np.ndarray:
    """Where to cut each image's field of view, as the ``serve_at_centre`` signature takes
    it.

    Raises:
        ValueError: Not ``[B, 2]``, or an infinite value (NaN: the model's own choice).
    """
    centre = np.asarray(roi_centre_mm, np.float32)
    if centre.shape != (batch, 2):
        raise ValueError(f"roi_centre_mm: expected shape ({batch}, 2), one (row, column) "
                         f"offset in mm from each image's centre, got {centre.shape}")
    if np.isinf(centre).any():
        raise ValueError("roi_centre_mm: values must be finite mm (NaN: the model's own "
                         f"choice), got {centre.tolist()}")
    return centre


def _no_centre(contract: int):
    return ValueError(f"roi_centre_mm: this model (serving contract {contract}) has no "
                      f"{AT_CENTRE} signature; export it again to centre its field of view")


def tflite_runner(path: Path):
    """A function running the TFLite model's serving signature on one raw batch, and
    the ``serve_at_centre`` signature of the file beside it when given a centre."""
    import warnings

    from lvseg_search._tf import tf

    def interpreter(file: Path, key: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the interpreter's move to LiteRT is announced
            loaded = tf().lite.Interpreter(model_path=str(file), num_threads=1)
        return loaded.get_signature_runner(key), loaded.get_signature_list()[key]["inputs"]

    runner, inputs = interpreter(path, "serving_default")
    takes_spacing = SPACING in inputs
    beside = Path(path).with_name(TFLITE_AT_CENTRE_FILE)
    at_centre = interpreter(beside, AT_CENTRE)[0] if beside.is_file() else None

    def run(raw, pixel_spacing, roi_centre_mm=None):
        raw, spacing = check_inputs(raw, pixel_spacing)
        if roi_centre_mm is None:
            return runner(raw=raw, **({SPACING: spacing} if takes_spacing else {}))
        if at_centre is None:
            raise _no_centre(2 if takes_spacing else 1)
        return at_centre(raw=raw, **{SPACING: spacing,
                                     ROI_CENTRE: check_centre(roi_centre_mm, len(raw))})

    run.at_centre = at_centre is not None
    return run


def saved_model_runner(path: Path):
    """A function running the SavedModel's ``serving_default`` signature."""
    from lvseg_search._tf import tf

    t = tf()
    loaded = t.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    takes_spacing = SPACING in serve.structured_input_signature[1]
    at_centre = loaded.signatures.get(AT_CENTRE)

    def run(raw, pixel_spacing, roi_centre_mm=None):
        raw, spacing = check_inputs(raw, pixel_spacing)
        extra = {SPACING: t.constant(spacing)} if takes_spacing else {}
        if roi_centre_mm is None:
            out = serve(raw=t.constant(raw), **extra)
        elif at_centre is None:
            raise _no_centre(run.contract)
        else:
            centre = check_centre(roi_centre_mm, len(raw))
            out = at_centre(raw=t.constant(raw), **extra, **{ROI_CENTRE: t.constant(centre)})
        return {k: v.numpy() for k, v in out.items()}

    run.contract = 2 if takes_spacing else 1
    run.at_centre = at_centre is not None
    # Classes the model gives, background included: the depth of its class
    # probabilities (models of the LV alone have none: 2).
    outputs = serve.structured_outputs
    run.classes = (int(outputs["class_probabilities"].shape[-1])
                   if "class_probabilities" in outputs else 2)
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
    raw_name = next(n for n in inputs if RAW in n)
    spacing_name = next((n for n in inputs if "spacing" in n), None)

    def run_onnx(raw, pixel_spacing):
        raw, spacing = check_inputs(raw, pixel_spacing)
        feed = {raw_name: raw, **({spacing_name: spacing} if spacing_name else {})}
        values = session.run(None, feed)
        return _by_output(dict(zip(names, values, strict=True)))

    run_onnx.at_centre = False  # ONNX holds serving_default only
    return run_onnx, "written"


OUTPUTS = ("class_probabilities", "probabilities", "mask")


def _by_output(named: dict[str, Any]) -> dict[str, Any]:
    """ONNX outputs under the serving contract's names: tf2onnx may decorate them
    (``probabilities:0``); the longest contract name a tensor's name holds is its own
    (``class_probabilities`` holds ``probabilities`` too)."""
    out: dict[str, Any] = {}
    for name, value in named.items():
        key = next((k for k in OUTPUTS if k in name), None)
        if key is not None and key not in out:
            out[key] = value
    return out


def write_saved_model(functions: dict[str, Any], path: Path) -> None:
    """Writes traced serving functions as one SavedModel, the first as
    ``serving_default`` too.

    A plain ``tf.Module`` holding the variables the functions read, the functions its
    signatures: Keras's ``ExportArchive`` traces its endpoints again, walks every layer
    for resources (a serving model holds none but its variables) and traces each inner
    network's default signature on the way. Measured: the real subset's 3-fold
    ensemble exported in 28 s instead of 40, its SavedModel 4.3 MB instead of 6.6,
    loaded in 0.95 s instead of 1.45.

    Args:
        functions: Signature name -> ``tf.function`` with an input signature
            (``graph_runner``), ``serve`` first.
        path: The SavedModel folder to write.
    """
    from lvseg_search._tf import tf

    t = tf()
    concrete = {name: fn.get_concrete_function() for name, fn in functions.items()}
    module = t.Module()
    variables: dict[int, Any] = {}
    for fn in concrete.values():
        for v in fn.variables:
            variables.setdefault(id(v), v)
    module.weights_ = list(variables.values())  # what the functions read, saved with them
    # Signatures only: a tf.function kept as an attribute is traced again for saving.
    signatures = {"serving_default": next(iter(concrete.values())), **concrete}
    t.saved_model.save(module, str(path), signatures=signatures)


def write_formats(model, folder: Path, onnx: bool = True, at_centre=None,
                  tflite: bool = True, traced: dict[str, Any] | None = None
                  ) -> tuple[dict[str, Any], str]:
    """Writes the serving model as ``.keras``, SavedModel and (optionally) TFLite and
    ONNX.

    Args:
        model: The Keras serving model (``serving.build_serving_model``).
        folder: Where the files go.
        onnx: Also write ONNX when tf2onnx is installed.
        at_centre: The same model taking ``roi_centre_mm`` too (``at_centre=True``):
            the SavedModel then holds it as the ``serve_at_centre`` signature, and
            ``model_at_centre.tflite`` alone (``.keras`` and ONNX hold the serving
            model only).
        tflite: Also write TFLite (one conversion per signature: the slowest format
            after ONNX).
        traced: ``graph_runner`` of the model (``serve``) and of ``at_centre``
            (``serve_at_centre``) where the caller has traced them already (None:
            traced here).

    Returns:
        A runner per written format (each reloaded from its file) and what happened to
        ONNX.
    """
    import keras

    from lvseg_search._tf import tf

    model.save(folder / KERAS_FILE)
    t = tf()
    traced = traced or {}
    functions = {"serve": traced.get("serve") or graph_runner(model)}
    if at_centre is not None:
        functions[AT_CENTRE] = traced.get(AT_CENTRE) or graph_runner(at_centre)
    write_saved_model(functions, folder / SAVED_MODEL)

    # TFLite, one file per signature: converted together, the two signatures keep the
    # shared weights as resource variables, which the interpreter reads as NaN unless
    # an initializer runs first.
    for key, name in (("serving_default", TFLITE_FILE), (AT_CENTRE, TFLITE_AT_CENTRE_FILE)):
        if not tflite or (key == AT_CENTRE and at_centre is None):
            continue
        converter = t.lite.TFLiteConverter.from_saved_model(str(folder / SAVED_MODEL),
                                                            signature_keys=[key])
        (folder / name).write_bytes(converter.convert())
    reloaded = keras.models.load_model(folder / KERAS_FILE, safe_mode=True)

    def keras_file(raw, pixel_spacing, roi_centre_mm=None):
        raw, spacing = check_inputs(raw, pixel_spacing)
        if roi_centre_mm is not None:
            raise _no_centre(2)
        return {k: np.asarray(v) for k, v in
                reloaded({RAW: raw, SPACING: spacing}).items()}

    keras_file.at_centre = False
    runners = {"saved_model": saved_model_runner(folder / SAVED_MODEL),
               "keras_file": keras_file}
    if tflite:
        runners["tflite"] = tflite_runner(folder / TFLITE_FILE)
    onnx_status = "not requested"
    if onnx:
        runner, onnx_status = write_onnx(folder / SAVED_MODEL, folder / ONNX_FILE)
        if runner is not None:
            runners["onnx"] = runner
    return runners, onnx_status


def graph_runner(model):
    """The Keras model called as one traced graph for inputs of any batch and image size
    (what ``write_saved_model`` saves as a signature), not op by op: eagerly, the
    labelling loop of the largest region dispatches every step from Python, seconds a
    batch. Without autograph, as Keras traces its own exports: the graph ops loop with
    ``ops.while_loop`` themselves.

    Args:
        model: A serving model (its inputs a dict).

    Returns:
        A function from the dict of input arrays to the dict of output tensors.
    """
    from lvseg_search._tf import tf

    return tf().function(lambda inputs: model(inputs), input_signature=_input_signature(model),
                         autograph=False)


def _input_signature(model) -> list[dict[str, Any]]:
    """The model's dict of inputs as tensor specs named after them."""
    from lvseg_search._tf import tf

    return [{name: tf().TensorSpec(tensor.shape, tensor.dtype, name=name)
             for name, tensor in model.input.items()}]
