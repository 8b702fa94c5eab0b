"""``lvseg-search export results/NAME --out MODEL_DIR``: the best configuration of a
search as a deployable model.

The best trial is retrained on every non-test patient for as many epochs as it was scored at (or its
fold models are averaged, ``--ensemble``), with the test-time augmentation and
largest-region post-processing that its out-of-fold predictions favour
(``evaluate.decision``), scored on the held-out test patients, and
written as a SavedModel with a serving signature, a ``.keras`` file, a TFLite model
(and ONNX when tf2onnx is installed), each checked against the Keras model on the same
inputs, plus ``model_card.json``.
"""

from __future__ import annotations

import contextlib
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search import __version__, atomic
from lvseg_search.engine.lock import run_lock
from lvseg_search.engine.run import SEARCH_FILE, Run, best_trial, find_trial, load_run
from lvseg_search.engine.trial_score import scored_epoch
from lvseg_search.errors import UserError
from lvseg_search.model.formats import (
    AT_CENTRE,
    KERAS_FILE,
    ONNX_FILE,
    ROI_CENTRE,
    SAVED_MODEL,
    TFLITE_AT_CENTRE_FILE,
    TFLITE_FILE,
    write_formats,
)

CARD = "model_card.json"
PARITY_TOLERANCE = 1e-4  # float32 formats must agree with the Keras model this closely


def _versions() -> dict[str, str]:
    out = {"lvseg-search": __version__, "python": platform.python_version()}
    for name in ("tensorflow", "keras", "keras-tuner", "numpy", "tf2onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def retrain(run: Run, trial, epochs: int, verbose: bool = True):
    """Trains a trial's configuration on all non-test patients (training augmentation,
    the search's seed).

    Returns:
        The network, the patients it trained on, its training batches per epoch and the
        epochs its learning-rate schedule ended a decay at.
    """
    import keras

    from lvseg_search.data.pipeline import (
        batches_per_epoch,
        make_dataset,
        patient_files,
    )
    from lvseg_search.engine.tuner import weights_seed
    from lvseg_search.model.deep_supervision import inference_network
    from lvseg_search.model.schedule import retrained_ends, rung_ends, scheduler

    patients = sorted({p for fold in run.splits["folds"] for p in fold["train"] + fold["val"]})
    o = run.options
    config = o.pipeline().training()
    n = run.data.slices(patients)
    data = make_dataset(patient_files(run.data, patients, config), config, n, repeat=True)
    keras.utils.set_random_seed(weights_seed(o.seed, trial.trial_id))
    model = run.build_network(trial.trial_id)

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if verbose:
                print(f"export: retrain epoch {epoch + 1}/{epochs}  loss "
                      f"{logs['loss']:.4f}  dice {logs['dice']:.3f}", flush=True)

    # The trial's learning-rate schedule through its rungs (one: the search's horizon),
    # so that the epoch count chosen in the search is trained with the same rates.
    values = trial.hyperparameters.values
    ends = rung_ends(values, lambda t: run.trials[t].hyperparameters.values, o.max_epochs,
                     o.lr_per_rung)
    ends = retrained_ends(ends, epochs) if o.lr_per_rung else ends
    callbacks = [_Progress(), *scheduler(values, ends)]
    # A search with a fixed number of steps per epoch chose its epoch count in steps: the
    # retraining takes as many (each over all the patients).
    steps = o.steps_per_epoch or batches_per_epoch(n, config)
    model.fit(data, steps_per_epoch=steps, epochs=epochs,
              callbacks=callbacks, shuffle=False, verbose=0)
    # Deep supervision's auxiliary outputs served training only.
    return inference_network(model), patients, steps, ends


def _probe_inputs(patients: list[Any], at_centre: bool = False) -> list[tuple[Any, ...]]:
    """Inputs the formats are compared on: stored images with their spacing (test
    patients, else validation ones), the same at other pixel spacings, and odd-sized,
    non-square random images of unequal row and column spacing; batches of 1..4. With
    ``at_centre``, some also with where to cut each view (NaN rows among them)."""
    rng = np.random.default_rng(0)
    batches: list[tuple[Any, ...]] = []
    for p in patients[:2]:
        if p.images.dtype != object:
            n = min(4, len(p.images))
            spacing = p.spacing_mm[:n].astype(np.float32)
            batches.append((p.images[:n], spacing))
            batches.append((p.images[:n], spacing * np.float32(0.6)))
            batches.append((p.images[:n], spacing * np.float32(1.7)))
            if at_centre:
                centre = rng.uniform(-30, 30, (n, 2)).astype(np.float32)
                centre[n // 2] = np.nan
                batches.append((p.images[:n], spacing, centre))
    batches.append((rng.integers(0, 1200, (1, 97, 131)).astype(np.int16),
                    np.array([[1.9, 0.8]], np.float32)))
    batches.append((rng.integers(0, 1200, (2, 180, 120)).astype(np.int16),
                    np.array([[0.7, 0.7], [1.4, 1.2]], np.float32)))
    if at_centre:
        batches.append((*batches[-1], np.array([[12.0, -40.0], [np.nan, 5.0]], np.float32)))
    return batches


def _tie_pixels(ref: np.ndarray, got: np.ndarray, classes: int) -> np.ndarray:
    """Pixels where the two LV probabilities are so close to a tie of classes that float
    rounding decides the arg-max. With two classes the LV wins at 0.5: a pixel is a tie
    when the two probabilities lie on either side of it (or on it). With more, the LV ties
    with another class somewhere between 1/C and 1/2, which is all that can be told from
    the LV's probability alone."""
    if classes <= 2:
        return (ref - 0.5) * (got - 0.5) <= 0
    return (ref >= 1.0 / classes - PARITY_TOLERANCE) & (ref <= 0.5 + PARITY_TOLERANCE)


def check_parity(reference, candidates: dict[str, Any],
                 batches: list[np.ndarray], classes: int = 2) -> dict[str, dict[str, float]]:
    """Runs every format on the same inputs as the Keras model.

    Args:
        reference: The Keras serving model.
        candidates: Format name -> function from raw batch to ``{"probabilities", "mask"}``;
            one whose ``at_centre`` attribute is true also takes ``roi_centre_mm``.
        batches: Raw int16 batches with their pixel spacing, some perhaps with
            ``roi_centre_mm`` (run on the formats that take it).
        classes: The networks' classes (background included).

    Returns:
        Per format: ``max_abs_diff`` of the probabilities, ``mask_mismatch_pixels`` (0
        for every format that passes), ``mask_tie_pixels``: mask pixels that differ
        where the probabilities sit on a tie of classes, so that a difference within the
        tolerance decides the arg-max (float formats round differently; the count is
        reported, not hidden), and ``at_centre``: whether its ``serve_at_centre``
        signature was compared too.

    Raises:
        UserError: The Keras model or a format gives a NaN or infinite probability, a
            format fails to run, its probabilities differ by more than
            ``PARITY_TOLERANCE``, or any of its mask pixels differs other than at a tie
            (nothing is written then).
    """
    expected = [{k: np.asarray(v) for k, v in reference(*b).items()} for b in batches]
    if not all(np.isfinite(ref["probabilities"]).all() for ref in expected):
        raise UserError("keras: the model's probabilities hold NaN or infinite values; "
                        "nothing was written (re-run the search or export another --trial)")
    report = {}
    for name, run_format in candidates.items():
        diff, mismatch, ties = 0.0, 0, 0
        at_centre = bool(getattr(run_format, "at_centre", False))
        for b, ref in zip(batches, expected, strict=True):
            if len(b) > 2 and not at_centre:
                continue
            try:
                got = run_format(*b)
            except Exception as e:  # a runtime's own failure: one line, not its traceback
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                hint = "; --no-onnx skips ONNX" if name == "onnx" else ""
                raise UserError(f"{name}: exported model fails on a {b[0].shape} batch "
                                f"({type(e).__name__}: {first}); nothing was written"
                                f"{hint}") from e
            probs = np.asarray(got["probabilities"])
            mask = np.asarray(got["mask"])
            if probs.shape != ref["probabilities"].shape or mask.shape != ref["mask"].shape:
                raise UserError(f"{name}: output shape {probs.shape} differs from the Keras "
                                f"model's {ref['probabilities'].shape}; nothing was written")
            if not np.isfinite(probs).all():
                raise UserError(f"{name}: exported model gives NaN or infinite probabilities; "
                                "nothing was written")
            # NaN never wins a max(): a NaN difference must not pass as 0.
            diff = max(diff, float(np.abs(probs - ref["probabilities"]).max()))
            differ = mask != ref["mask"]
            tie = differ & _tie_pixels(ref["probabilities"], probs, classes)
            ties += int(tie.sum())
            mismatch += int((differ & ~tie).sum())
        report[name] = {"max_abs_diff": diff, "mask_mismatch_pixels": mismatch,
                        "mask_tie_pixels": ties, "at_centre": at_centre}
        if diff > PARITY_TOLERANCE:
            raise UserError(f"{name}: exported model differs from the Keras model by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); nothing was written")
        if mismatch:
            raise UserError(f"{name}: exported model's mask differs from the Keras model's in "
                            f"{mismatch} pixel(s) that are not ties of classes; nothing was "
                            "written")
    return report


def export(run_dir: Path, out: Path, *, ensemble: bool = False, epochs: int | None = None,
           trial_id: str | None = None, onnx: bool = True, overwrite: bool = False,
           verbose: bool = True, data: Path | None = None, tta: str | None = None,
           largest_region: bool | None = None, roi: str | None = None,
           convex_hull: bool | None = None) -> dict[str, Any]:
    """Exports the best (or a chosen) trial of a search.

    Args:
        run_dir: The search's run folder.
        out: The model folder to write.
        ensemble: Average the trial's fold models instead of retraining.
        epochs: Retrain for this many epochs (default: the epochs the trial was scored at).
        trial_id: Export this trial instead of the best.
        onnx: Also write ONNX when tf2onnx is installed.
        overwrite: Replace an existing model folder.
        verbose: Print progress.
        data: The prepared data folder, if it moved since the search.
        tta: Test-time augmentation (``tta.TTA_MODES``); None: the one of the best
            out-of-fold CV Dice.
        largest_region: Keep only each mask's largest region; None: decided by the
            out-of-fold CV Dice.
        roi: Cut the field of view around the image ``centre`` or the ``localized`` LV
            (``contract.ROI_MODES``); None: decided by the out-of-fold CV Dice.
        convex_hull: Fill the largest region to its convex hull; None: decided by the
            out-of-fold CV Dice.

    Returns:
        The model card.

    Raises:
        UserError: No completed trial, an unknown trial, a bad option, a data folder not
            found, or an exported format that disagrees with the Keras model.
    """
    # A folder that holds no search gets no lock file: load_run refuses it below.
    holds_search = (Path(run_dir) / SEARCH_FILE).is_file()
    with (run_lock(run_dir, "export", "export from it", create=False) if holds_search
          else contextlib.nullcontext()):
        return _export(run_dir, out, ensemble=ensemble, epochs=epochs, trial_id=trial_id,
                       onnx=onnx, overwrite=overwrite, verbose=verbose, data=data, tta=tta,
                       largest_region=largest_region, roi=roi, convex_hull=convex_hull)


def _export(run_dir: Path, out: Path, *, ensemble: bool, epochs: int | None,
            trial_id: str | None, onnx: bool, overwrite: bool, verbose: bool,
            data: Path | None, tta: str | None,
            largest_region: bool | None, roi: str | None,
            convex_hull: bool | None) -> dict[str, Any]:
    import keras

    from lvseg_search.evaluate.decision import table_text
    from lvseg_search.evaluate.scoring import load_patients, score_patients
    from lvseg_search.model.contract import RAW, ROI_MODES, SPACING
    from lvseg_search.model.formats import check_centre, check_inputs
    from lvseg_search.model.serving import build_serving_model
    from lvseg_search.model.tta import TTA_MODES

    start = time.perf_counter()
    run = load_run(run_dir, data)
    if trial_id is not None:
        trial = find_trial(run, str(trial_id))
        if trial is None or trial.status != "COMPLETED":
            raise UserError(f"--trial: {trial_id} is not a completed trial of {run.path}; "
                            "report.md lists them")
    else:
        trial = best_trial(run)
    metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
    epoch = scored_epoch(metrics) or 1
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs: {epochs} must be at least 1")
    if ensemble and epochs is not None:
        raise UserError("--epochs and --ensemble: the fold models are used as trained; "
                        "choose one")
    if tta is not None and tta not in TTA_MODES:
        raise UserError(f"--tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    o = run.options
    if roi is not None and roi not in ROI_MODES:
        raise UserError(f"--roi: {roi!r} is not one of {', '.join(ROI_MODES)}")
    if roi == "localized" and not o.physical:
        raise UserError(f"--roi localized: {run.path} trained on whole images resized "
                        "(--spacing none), which have no field of view to move; leave "
                        "--roi out")
    if convex_hull and largest_region is False:
        raise UserError("--convex-hull: fills the largest region's hull, which "
                        "--no-largest-region turns off; drop one of them")
    keras.mixed_precision.set_dtype_policy("float32")  # exported formats are float32
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        decision = _decide(run, trial.trial_id, tta, largest_region, roi, convex_hull)
        if verbose:
            print(f"export: test-time augmentation and post-processing, out-of-fold CV Dice "
                  f"of trial {trial.trial_id}:\n{table_text(decision['out_of_fold'], decision)}",
                  flush=True)
        if ensemble:
            networks = [run.fold_network(trial.trial_id, k) for k in range(run.n_folds)]
            trained_on = sorted({p for f in run.splits["folds"] for p in f["train"]})
            training = {"mode": "ensemble", "models": run.n_folds,
                        "epochs": scored_epoch(metrics)}
            if verbose:
                print(f"export: ensemble of trial {trial.trial_id}'s {run.n_folds} fold models",
                      flush=True)
        else:
            n = epochs or epoch
            if verbose:
                print(f"export: retraining trial {trial.trial_id} on all non-test patients "
                      f"for {n} epochs", flush=True)
            keras.backend.clear_session()
            network, trained_on, steps, ends = retrain(run, trial, n, verbose)
            networks = [network]
            training = {"mode": "retrain", "epochs": n, "steps_per_epoch": steps,
                        "schedule_ends": ends}
        training["patients"] = trained_on
        settings = {"tta": decision["tta"], "largest_region": decision["largest_region"],
                    "roi": decision["roi"], "convex_hull": decision["convex_hull"]}
        model = build_serving_model(networks, o.image_size, o.normalization,
                                    o.spacing_mm or None, **settings)
        # The same layers, taking where to cut each view: predict centres a study's views
        # on its LV through it (evaluate.study_roi).
        at_centre = (build_serving_model(networks, o.image_size, o.normalization,
                                         o.spacing_mm, **settings, at_centre=True)
                     if o.physical else None)

        def keras_run(raw, pixel_spacing, roi_centre_mm=None):
            raw, spacing = check_inputs(raw, pixel_spacing)
            if roi_centre_mm is None:
                out = model({RAW: raw, SPACING: spacing})
            else:
                out = at_centre({RAW: raw, SPACING: spacing,
                                 ROI_CENTRE: check_centre(roi_centre_mm, len(raw))})
            return {k: np.asarray(v) for k, v in out.items()}

        test = None
        if run.splits["test"]:
            test_patients = load_patients(run.data, run.splits["test"])
            rows, summary = score_patients(keras_run, test_patients,
                                           largest_region=decision["largest_region"],
                                           study_roi=decision["roi"] == "localized")
            per_patient = {p: float(np.mean([r["dice"] for r in rows if r["patient_id"] == p]))
                           for p in run.splits["test"]}
            test = {"patients": run.splits["test"], **summary, "dice_per_patient": per_patient}
            probe_patients = test_patients
            if verbose:
                print(f"export: test patients {', '.join(run.splits['test'])}: Dice "
                      f"{summary['dice']:.3f}, APD {summary['apd_mm']:.2f} mm, good contours "
                      f"{summary['good_contours_pct']:.0f}%", flush=True)
        else:
            probe_patients = load_patients(run.data, run.splits["folds"][0]["val"][:1])

        candidates, onnx_status = write_formats(model, tmp, onnx, at_centre)
        parity = check_parity(keras_run, candidates,
                              _probe_inputs(probe_patients, at_centre is not None),
                              classes=int(networks[0].output_shape[-1]))
        if verbose:
            for name, r in parity.items():
                print(f"export: {name}: max |probability difference| {r['max_abs_diff']:.2e}, "
                      f"{r['mask_mismatch_pixels']} mask pixel(s) differ"
                      + (f" ({r['mask_tie_pixels']} more at ties of classes)"
                         if r["mask_tie_pixels"] else ""), flush=True)
        card = _model_card(run, trial, metrics, training, test, parity, onnx_status, tmp,
                           decision)
        atomic.write_json(tmp / CARD, card)
    if verbose:
        print(f"export: done in {time.perf_counter() - start:.0f} s -> {out}")
    return card


def _decide(run: Run, trial_id: str, tta: str | None, largest_region: bool | None,
            roi: str | None, convex_hull: bool | None) -> dict[str, Any]:
    """The field of view, test-time augmentation and post-processing to export,
    from the trial's out-of-fold predictions (each fold model on the patients it never
    saw).

    Returns:
        The chosen ``roi``, ``tta``, ``largest_region`` and ``convex_hull``, its ``cv_dice``,
        ``decided_by`` and the whole ``out_of_fold`` table.
    """
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import TIE, choose

    table = out_of_fold_decisions(run, trial_id)
    chosen = choose(table, tta, largest_region, roi, convex_hull)
    forced = [name for name, value in (("--roi", roi), ("--tta", tta),
                                       ("--no-largest-region", largest_region),
                                       ("--convex-hull" if convex_hull else "--no-convex-hull",
                                        convex_hull))
              if value is not None]
    return {"roi": chosen["roi"], "tta": chosen["tta"],
            "largest_region": chosen["largest_region"], "convex_hull": chosen["convex_hull"],
            "cv_dice": chosen["cv_dice"],
            "decided_by": (" and ".join(forced) + " (the rest by " if forced else "")
            + f"out-of-fold CV Dice, highest wins, gains under {TIE:g} are ties that go "
              "to the cheaper setting, or to the localized field of view"
            + (")" if forced else ""),
            "out_of_fold": table}


def grid(o, roi: str = "centre") -> dict[str, Any]:
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


def _model_card(run: Run, trial, metrics: dict[str, float], training: dict[str, Any],
                test: dict[str, Any] | None, parity: dict[str, Any], onnx_status: str,
                folder: Path, decision: dict[str, Any]) -> dict[str, Any]:
    m = run.data.manifest
    o = run.options
    hp = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
    files = {name: {"bytes": (folder / name).stat().st_size}
             for name in (KERAS_FILE, TFLITE_FILE, TFLITE_AT_CENTRE_FILE, ONNX_FILE)
             if (folder / name).is_file()}
    files[SAVED_MODEL + "/"] = {"signature": "serving_default"}
    if o.physical:
        files[SAVED_MODEL + "/"]["also"] = AT_CENTRE
        files[TFLITE_AT_CENTRE_FILE]["signature"] = AT_CENTRE
    return {
        "model_card_version": 3,
        "serving_contract": 2,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "left-ventricle blood pool segmentation of short-axis cine cardiac MRI",
        "search": {"run": run.path.name, "space": Path(o.space).stem, "trial": trial.trial_id,
                   "folds": run.n_folds, "oracle": o.oracle, "max_epochs": o.max_epochs,
                   "min_epochs": o.min_epochs, "factor": o.factor,
                   "lr_per_rung": o.lr_per_rung,
                   "seed": o.seed, "precision_in_search": o.precision,
                   "steps_per_epoch": o.steps_per_epoch,  # 0: one pass over the training
                   "augmentation": o.augmentation.card(o.physical)},
        "grid": grid(o, decision["roi"]),
        "hyperparameters": hp,
        "cross_validation": {
            "dice_mean": metrics.get("val_dice"), "dice_std": metrics.get("val_dice_std"),
            "dice_per_fold": [metrics.get(f"val_dice_fold_{k}") for k in range(run.n_folds)],
            "scored_epoch": scored_epoch(metrics),
            "apd_mm": metrics.get("apd_mm"), "hausdorff_mm": metrics.get("hausdorff_mm"),
            "good_contours_pct": metrics.get("good_contours_pct")},
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
        "outputs": {"probabilities": "float32 [batch, height, width], LV probability on the "
                                     "input grid (0 outside the field of view)",
                    "mask": "uint8 [batch, height, width], 1 = LV blood pool"},
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
                      + (", filled to its convex hull" if decision["convex_hull"] else ""),
            "cv_dice": decision["cv_dice"], "decided_by": decision["decided_by"],
            "out_of_fold": decision["out_of_fold"]},
        "formats": files,
        "onnx": onnx_status,
        "parity_max_abs_diff": parity,
        "versions": _versions(),
        "limitations": "trained on the patients and scanners of the prepared data only; "
                       "not a medical device",
    }
