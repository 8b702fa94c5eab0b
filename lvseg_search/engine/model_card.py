"""The model card (``model_card.json``) of an exported model: what it is, how it was
searched and trained, its grid, inputs and outputs, its cross-validated and held-out
test figures, the decision of its post-processing, its files and parity."""

from __future__ import annotations

import contextlib
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lvseg_search import __version__
from lvseg_search.engine.options import SearchOptions
from lvseg_search.engine.run import Run
from lvseg_search.engine.trial_score import scored_epoch
from lvseg_search.model.contract import AT_CENTRE, CONTRACT_VERSION, ROI_CENTRE
from lvseg_search.model.describe import network_words
from lvseg_search.model.formats import (
    KERAS_FILE,
    ONNX_FILE,
    SAVED_MODEL,
    TFLITE_AT_CENTRE_FILE,
    TFLITE_FILE,
)

CARD = "model_card.json"
# 4: "card_version" (was "model_card_version", 3) and the network in words.
# 5: "finalist_ensemble" (the finalists' out-of-fold ensemble, members and weights when
#    delivered) and "latency".
CARD_VERSION = 6


def versions() -> dict[str, str]:
    """The versions of this package, Python and the libraries that made the model."""
    out = {"lvseg-search": __version__, "python": platform.python_version()}
    for name in ("tensorflow", "keras", "keras-tuner", "numpy", "tf2onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def grid(o: SearchOptions, roi: str = "centre") -> dict[str, Any]:
    """The network's grid, as the model card records it."""
    from lvseg_search.model.serving_layers import LOCALIZE_PASSES

    if not o.physical:
        return {"mode": "whole image resized", "image_size": o.image_size,
                "spacing_mm": None, "field_of_view_mm": None}
    return {"mode": "physical", "image_size": o.image_size, "spacing_mm": o.spacing_mm,
            "field_of_view_mm": round(o.image_size * o.spacing_mm, 3),
            "field_of_view_asked_mm": o.field_of_view_mm,
            "centred_on": ("image centre" if roi == "centre" else
                           f"the LV found by {LOCALIZE_PASSES} earlier pass(es) of the "
                           "network, each re-centred on the LV of the one before"),
            "centred_on_by_predict": ("image centre" if roi == "centre" else
                                      "the study's LV: the median of the LV centres that "
                                      "a first pass finds in the study's images, given "
                                      f"to the {AT_CENTRE} signature as roi_centre_mm"),
            "at_centre_signature": AT_CENTRE}


def model_card(run: Run, trial: Any, metrics: dict[str, float], training: dict[str, Any],
               test: dict[str, Any] | None, parity: dict[str, Any], onnx_status: str,
               folder: Path, decision: dict[str, Any],
               finalists: dict[str, Any] | None = None,
               latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of an exported trial.

    Args:
        run: The run folder.
        trial: The exported trial.
        metrics: Its last metrics (``trial_score.last_metrics``).
        training: How the delivered networks were trained (mode, epochs, patients).
        test: The held-out test patients' figures (None without them).
        parity: Per format, its parity with the Keras model.
        onnx_status: Whether ONNX was written, and if not why.
        folder: The model folder (its files are listed with their sizes).
        decision: The post-processing decision (``export``'s).
        finalists: The finalists' out-of-fold ensemble against the best finalist, and
            whether it was delivered (``export``'s; None: none computed).
        latency: Each format's time for one image.
    """
    m = run.data.manifest
    o = run.options
    classes = run.data.classes
    multi = classes.count > 2
    hp = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
    files = {name: {"bytes": (folder / name).stat().st_size}
             for name in (KERAS_FILE, TFLITE_FILE, TFLITE_AT_CENTRE_FILE, ONNX_FILE)
             if (folder / name).is_file()}
    files[SAVED_MODEL + "/"] = {"signature": "serving_default"}
    if o.physical:
        files[SAVED_MODEL + "/"]["also"] = AT_CENTRE
        if TFLITE_AT_CENTRE_FILE in files:
            files[TFLITE_AT_CENTRE_FILE]["signature"] = AT_CENTRE
    return {
        "card_version": CARD_VERSION,
        "serving_contract": CONTRACT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": ("left-ventricle blood pool and myocardium segmentation of short-axis cine "
                 "cardiac MRI" if classes.has_myocardium else
                 "left-ventricle blood pool segmentation of short-axis cine cardiac MRI"),
        # The classes the mask's ids stand for, and which are the LV's (predict's
        # volumes, EF and mass come from them).
        "classes": {k: v for k, v in classes.to_json().items() if k != "ignore_label"},
        "search": {"run": run.path.name, "space": Path(o.space).stem, "trial": trial.trial_id,
                   "folds": run.n_folds, "oracle": o.oracle, "max_epochs": o.max_epochs,
                   "min_epochs": o.min_epochs, "factor": o.factor,
                   "lr_per_rung": o.lr_per_rung, "final_from": o.final_from,
                   "seed": o.seed, "precision_in_search": o.precision,
                   "steps_per_epoch": o.steps_per_epoch,  # 0: one pass over the training
                   "augmentation": o.augmentation.card(o.physical)},
        "grid": grid(o, decision["roi"]),
        "network": network_words(hp),
        "hyperparameters": hp,
        "cross_validation": {
            "dice_mean": metrics.get("val_dice"), "dice_std": metrics.get("val_dice_std"),
            "dice_per_fold": [metrics.get(f"val_dice_fold_{k}") for k in range(run.n_folds)],
            "scored_epoch": scored_epoch(metrics),
            "apd_mm": metrics.get("apd_mm"), "hausdorff_mm": metrics.get("hausdorff_mm"),
            "good_contours_pct": metrics.get("good_contours_pct"),
            **({"objective": o.objective,
                "contours": {k: decision.get(k) for k in
                             ("endo_dice", "epi_dice", "myo_dice", "epi_apd_mm",
                              "epi_good_contours_pct")}} if multi else {})},
        "finalist_ensemble": finalists,
        "training": training,
        "test": test,
        "data": {"fingerprint_sha256": run.data.fingerprint(),
                 "source_layout": m.get("source_layout"), "patients": len(m["patients"]),
                 "slices": m.get("n_slices"), "classes": m.get("classes"),
                 "pseudonymized": m.get("pseudonymized")},
        "inputs": {
            "raw": {"dtype": "int16", "shape": ["batch", "height", "width"],
                    "meaning": "raw stored DICOM pixel values of short-axis MR frames, any "
                               "size; all images of one batch share a size"},
            "pixel_spacing_mm": {"dtype": "float32", "shape": ["batch", 2],
                                 "meaning": "each image's DICOM PixelSpacing (row, column) "
                                            "in mm" + ("" if o.physical else
                                                       "; ignored by this model (trained "
                                                       "with --spacing none)")},
            **({ROI_CENTRE: {
                "dtype": "float32", "shape": ["batch", 2],
                "meaning": f"{AT_CENTRE} signature only (SavedModel, "
                           f"{TFLITE_AT_CENTRE_FILE}): where to cut each image's field "
                           "of view, (row, column) mm from the image's centre; a row "
                           "holding NaN: where serving_default cuts it"}}
               if o.physical else {})},
        "preprocessing_inside": f"per-image {o.normalization} normalization, then "
                                + (f"{o.grid_text()} (bilinear, antialiased when shrinking)"
                                   if o.physical else o.grid_text()),
        "outputs": {"probabilities": "float32 [batch, height, width], LV blood pool "
                                     "probability on the input grid (0 outside the field "
                                     "of view)",
                    "mask": "uint8 [batch, height, width], " + (
                        ", ".join(f"{k} = {v}" for k, v in enumerate(classes.names) if k)
                        if multi else "1 = LV blood pool"),
                    **({"class_probabilities": "float32 [batch, height, width, classes], "
                                               "each class's probability (classes by id)"}
                       if multi else {})},
        "postprocessing": {
            "roi": decision["roi"], "tta": decision["tta"],
            "largest_region": decision["largest_region"],
            "convex_hull": decision["convex_hull"],
            "inside": "probabilities averaged over "
                      + {"none": "the image alone", "flips": "the 4 flips of the network "
                         "input", "dihedral": "the 8 flips and 90-degree turns of the "
                         "network input"}[decision["tta"]]
                      + "; mask = "
                      + ("each image's largest 4-connected region of the arg-max"
                         if decision["largest_region"] else "the arg-max")
                      + (", filled to its convex hull" if decision["convex_hull"] else "")
                      + ("; for the endocardial and the epicardial region each, the "
                         "myocardium the ring between them" if multi and (
                             decision["largest_region"] or decision["convex_hull"])
                         else ""),
            "cv_dice": decision["cv_dice"], "decided_by": decision["decided_by"],
            "out_of_fold": decision["out_of_fold"]},
        "formats": files,
        "onnx": onnx_status,
        "parity_max_abs_diff": parity,
        "latency": latency,
        "versions": versions(),
        "limitations": "trained on the patients and scanners of the prepared data only; "
                       "not a medical device",
    }
