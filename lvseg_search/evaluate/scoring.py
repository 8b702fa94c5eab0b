"""Scoring a segmenter on prepared patients at their stored resolution: per-image Dice,
APD, Hausdorff and good contours, per-patient volume Dice, and their summary.

With a myocardium in the data, each contour is scored as the Sunnybrook challenge
scores it: the endocardial contour (the blood pool's boundary) under the plain names
(``dice``, ``apd_mm``, ...), the epicardial contour (the boundary of blood pool and
myocardium) as ``epi_*``, and the myocardium's own Dice as ``myo_dice``. An image whose
expert drew no o-contour has no epicardial or myocardial score (NaN, left out of the
means); its blood pool is scored as any other.

Predictions come from the deployable model (``serving``), so a fold's validation
scores, the export's test scores and ``predict`` all run the same preprocessing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvseg_search.classes import Classes, fully_labelled, regions
from lvseg_search.data import shards
from lvseg_search.data.manifest import PreparedData
from lvseg_search.evaluate.measures import (
    Reference,
    dice,
    reference,
    score_image,
    volume_dice,
)
from lvseg_search.evaluate.study_roi import study_centre_mm
from lvseg_search.model.postprocess import keep_largest_regions

LV = 1


@dataclass
class PatientImages:
    """One patient's labelled slices, as stored (raw int16 pixels, masks, spacing)."""

    patient_id: str
    images: np.ndarray  # int16 [N, H, W]
    masks: np.ndarray  # uint8 [N, H, W]
    spacing_mm: np.ndarray  # float [N, 2] (row, col)
    slice_index: np.ndarray  # int [N]
    phase_index: np.ndarray  # int [N]
    classes: Classes = field(default_factory=Classes)
    _references: list[Reference] | None = field(default=None, repr=False)
    _epi_references: list[Reference | None] | None = field(default=None, repr=False)

    def references(self) -> list[Reference]:
        """The manual endocardial (blood pool) contours, traced and indexed once (a
        search scores many models against them)."""
        if self._references is None:
            bp = self.classes.blood_pool
            self._references = [reference(m == bp, s)
                                for m, s in zip(self.masks, self.spacing_mm, strict=True)]
        return self._references

    def epi_references(self) -> list[Reference | None]:
        """The manual epicardial contours (None where the expert drew none)."""
        if self._epi_references is None:
            self._epi_references = [
                reference(regions(m, self.classes)["epi"], s)
                if fully_labelled(m, self.classes) else None
                for m, s in zip(self.masks, self.spacing_mm, strict=True)]
        return self._epi_references


def load_patient_images(data: PreparedData, patients: Sequence[str]) -> list[PatientImages]:
    """Reads patients' shards from a prepared data folder.

    Args:
        data: The prepared data folder (``manifest.open_data``).
        patients: Patient ids.

    Raises:
        UserError: A patient is not in the manifest or its shard is bad.
    """
    out = []
    for pid in patients:
        records = shards.read_shard(data.shard(
            pid, "was the data folder prepared again since the search?"))
        out.append(PatientImages(
            patient_id=pid,
            images=_stack([r["image"] for r in records], np.int16),
            masks=_stack([r["mask"] for r in records], np.uint8),
            spacing_mm=np.array([r["pixel_spacing_mm"] for r in records], dtype=np.float64),
            slice_index=np.array([int(r["slice_index"]) for r in records]),
            phase_index=np.array([int(r["phase_index"]) for r in records]),
            classes=data.classes,
        ))
    return out


def _stack(arrays: list[np.ndarray], dtype) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return np.stack(arrays).astype(dtype)
    out = np.empty(len(arrays), dtype=object)  # mixed sizes: one array per image
    for i, a in enumerate(arrays):
        out[i] = a.astype(dtype)
    return out


def same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by image size (a patient's slices may differ), each
    group in the original order, so that every group stacks into one batch."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[np.shape(image)].append(i)
    return list(groups.values())


Predictor = Callable[..., dict[str, Any]]


def segment(predict: Predictor, images: Sequence[np.ndarray], spacing_mm: Sequence[Any],
            batch_size: int = 16, largest_region: bool = True,
            study_roi: bool = False, classes: Classes | None = None
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Runs a segmenter over 2-D images, batching those of equal size.

    Args:
        predict: Maps raw int16 ``[B, H, W]`` and pixel spacing float32 ``[B, 2]`` (row,
            column, mm), and with ``study_roi`` also ``roi_centre_mm`` ``[B, 2]``, to
            ``{"probabilities", "mask"}``.
        images: ``[N, H, W]`` int16, or any sequence of differently sized images.
        spacing_mm: Each image's (row, column) pixel spacing, mm.
        batch_size: Images per call.
        largest_region: Keep each mask's largest region (see ``postprocess``); False
            delivers the predictor's masks as they come.
        study_roi: The images are one study: cut every image's field of view around
            the study's LV (``study_roi.study_centre_mm`` of a first pass).
        classes: The classes of the predictor's masks (None: LV masks); the largest
            region is kept per contour (``postprocess.per_contour``).

    Returns:
        Each image's LV probabilities (as the network gives them) and mask, in the
        order of ``images``.
    """
    centres = None
    if study_roi:
        _, first = segment(predict, images, spacing_mm, batch_size, classes=classes)
        centres = _study_centres(first, spacing_mm, classes)
    probs: list[Any] = [None] * len(images)
    masks: list[Any] = [None] * len(images)
    # Serving models keep the largest region themselves (then this changes nothing);
    # models exported before they did, and plain predictors, deliver the arg-max.
    for chunk, raw, spacing in _batches(images, spacing_mm, batch_size):
        out = predict(raw, spacing) if centres is None else predict(raw, spacing,
                                                                      centres[chunk])
        _scatter(out, chunk, probs, masks, largest_region, classes)
    return probs, masks


def _batches(images: Sequence[np.ndarray], spacing_mm: Sequence[Any], batch_size: int):
    """Batches of equally sized images: their indices, stacked pixels and spacings."""
    for indices in same_size_groups(images):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            yield (chunk, np.stack([images[i] for i in chunk]),
                   np.asarray([spacing_mm[i] for i in chunk], np.float32))


def _scatter(out: dict[str, Any], chunk: Sequence[int], probs: list[Any],
             masks: list[Any], largest_region: bool, classes: Classes | None) -> None:
    """A batch's probabilities and masks put back at their images' places."""
    chunk_masks = np.asarray(out["mask"])
    if largest_region:
        chunk_masks = keep_largest_regions(chunk_masks, classes)
    for i, p, m in zip(chunk, np.asarray(out["probabilities"]), chunk_masks, strict=True):
        probs[i], masks[i] = p, m


def _study_centres(first: Sequence[np.ndarray], spacing_mm: Sequence[Any],
                   classes: Classes | None) -> np.ndarray:
    """Every image's field-of-view centre: the study's LV found in a first pass's masks
    (with classes, the study's LV is its blood pool)."""
    if classes is not None:
        first = [m == classes.blood_pool for m in first]
    return np.tile(study_centre_mm(first, spacing_mm).astype(np.float32), (len(first), 1))


def segment_modes(predict: Callable[..., dict[str, dict[str, Any]]],
                  images: Sequence[np.ndarray], spacing_mm: Sequence[Any],
                  modes: Sequence[str], batch_size: int = 16, study_roi: bool = False,
                  classes: Classes | None = None
                  ) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """:func:`segment` (masks as the predictor gives them, no largest region kept) for
    several test-time augmentations, from one predictor call per batch where the modes
    cut the same field of view (``serving.make_modes_predictor``).

    With ``study_roi`` each mode's first pass finds its own study centre, as
    :func:`segment` would with that mode's predictor; the modes whose centres agree
    share the second pass.

    Args:
        predict: ``serving.make_modes_predictor``'s function.
        images: As for :func:`segment`.
        spacing_mm: As for :func:`segment`.
        modes: The test-time augmentations.
        batch_size: As for :func:`segment`.
        study_roi: As for :func:`segment`.
        classes: As for :func:`segment`.

    Returns:
        Per mode, each image's LV probabilities and mask, in the order of ``images``.
    """
    def run(subset: list[str], centres: np.ndarray | None, largest: bool):
        probs = {m: [None] * len(images) for m in subset}
        masks = {m: [None] * len(images) for m in subset}
        for chunk, raw, spacing in _batches(images, spacing_mm, batch_size):
            out = predict(raw, spacing, None if centres is None else centres[chunk],
                          modes=subset)
            for m in subset:
                _scatter(out[m], chunk, probs[m], masks[m], largest, classes)
        return {m: (probs[m], masks[m]) for m in subset}

    modes = list(modes)
    if not study_roi:
        return run(modes, None, largest=False)
    # The first pass as segment's: largest regions kept.
    first = run(modes, None, largest=True)
    centres = {m: _study_centres(first[m][1], spacing_mm, classes) for m in modes}
    alike: dict[bytes, list[str]] = {}
    for m in modes:
        alike.setdefault(centres[m].tobytes(), []).append(m)
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for subset in alike.values():
        out.update(run(subset, centres[subset[0]], largest=False))
    return {m: out[m] for m in modes}


def score_masks(pred: Sequence[np.ndarray],
                patient: PatientImages) -> tuple[list[dict[str, Any]], float]:
    """Scores predicted masks (class ids) of one patient's slices against its expert
    masks, per contour where the data has a myocardium (see the module's docstring).

    Returns:
        Per-image rows (patient, slice, phase and the scores of ``score_image``) and the
        patient's volume Dice of the blood pool.
    """
    classes = patient.classes
    truth = [m == classes.blood_pool for m in patient.masks]
    refs = patient.references()
    epi_refs = patient.epi_references() if classes.has_myocardium else None
    rows = []
    found = []
    for i in range(len(patient.images)):
        predicted = regions(pred[i], classes)
        found.append(predicted["endo"])
        scores = score_image(predicted["endo"], truth[i], patient.spacing_mm[i], refs[i])
        row = {"patient_id": patient.patient_id,
               "slice_index": int(patient.slice_index[i]),
               "phase_index": int(patient.phase_index[i]), **scores}
        if epi_refs is not None:
            row.update(_epicardial_scores(predicted, patient.masks[i], classes,
                                          patient.spacing_mm[i], epi_refs[i]))
        rows.append(row)
    return rows, volume_dice(found, truth)


EPI_KEYS = ("epi_dice", "epi_apd_mm", "epi_hausdorff_mm", "epi_good_contour", "myo_dice")


def _epicardial_scores(predicted: dict[str, np.ndarray], expert: np.ndarray,
                       classes: Classes, spacing_mm: Any,
                       ref: Reference | None) -> dict[str, float]:
    """The epicardial contour's scores and the myocardium's Dice of one image (NaN
    where the expert drew no o-contour)."""
    if ref is None:
        return dict.fromkeys(EPI_KEYS, math.nan)
    truth = regions(expert, classes)
    epi = score_image(predicted["epi"], truth["epi"], spacing_mm, ref)
    return {**{f"epi_{k}": v for k, v in epi.items()},
            "myo_dice": dice(predicted["myo"], truth["myo"])}


def score_patients(predict: Predictor, patients: Sequence[PatientImages],
                   batch_size: int = 16, largest_region: bool = True,
                   study_roi: bool = False, objective: str = "mean"
                   ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Scores a segmenter on patients.

    Args:
        predict: See :func:`segment`.
        patients: Patients from :func:`load_patient_images`.
        batch_size: Images per call of ``predict``.
        largest_region: See :func:`segment`.
        study_roi: Each patient's images are one study (see :func:`segment`).
        objective: See :func:`summarize_scores`.

    Returns:
        Per-image rows (see :func:`score_masks`) and a summary (see :func:`summarize_scores`).
    """
    return score_predictions([segment(predict, p.images, p.spacing_mm, batch_size,
                                      largest_region, study_roi, p.classes)[1]
                              for p in patients], patients, objective)


def score_predictions(masks: Sequence[Sequence[np.ndarray]], patients: Sequence[PatientImages],
                      objective: str = "mean"
                      ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Scores predicted masks, one list per patient in the order of its images.

    Args:
        masks: Class ids per image, per patient.
        patients: The patients.
        objective: See :func:`summarize_scores`.

    Returns:
        Per-image rows (see :func:`score_masks`) and a summary (see :func:`summarize_scores`).
    """
    rows: list[dict[str, Any]] = []
    volumes: dict[str, float] = {}
    for pred, p in zip(masks, patients, strict=True):
        patient_rows, volumes[p.patient_id] = score_masks(pred, p)
        rows += patient_rows
    return rows, summarize_scores(rows, volumes, objective)


def _pct(value: float) -> float:
    return value * 100 if not math.isnan(value) else math.nan


def summarize_scores(rows: Sequence[dict[str, Any]],
                     volumes: dict[str, float] | None = None,
                     objective: str = "mean") -> dict[str, float]:
    """Summary of per-image scores: mean Dice, mean APD and Hausdorff (mm, over images
    where both contours exist), good contours (% of images with a contour to judge),
    mean per-patient volume Dice, and the number of images.

    With epicardial scores in the rows it also gives ``endo_dice``, the ``epi_*``
    means, ``myo_dice`` and ``epi_images`` (images with an o-contour); ``dice`` is then
    the objective: the endocardial Dice (``endo``), the epicardial (``epi``) or their
    mean (``mean``; the endocardial alone where no image has an o-contour).
    """

    def mean(key: str) -> float:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(values)) if values else math.nan

    out = {"dice": mean("dice"), "apd_mm": mean("apd_mm"), "hausdorff_mm": mean("hausdorff_mm"),
           "good_contours_pct": _pct(mean("good_contour")),
           "images": float(len(rows))}
    if volumes:
        out["patient_dice"] = float(np.mean(list(volumes.values())))
    if rows and "epi_dice" in rows[0]:
        endo, epi = out["dice"], mean("epi_dice")
        out.update({"endo_dice": endo, "epi_dice": epi, "epi_apd_mm": mean("epi_apd_mm"),
                    "epi_hausdorff_mm": mean("epi_hausdorff_mm"),
                    "epi_good_contours_pct": _pct(mean("epi_good_contour")),
                    "myo_dice": mean("myo_dice"),
                    "epi_images": float(sum(not math.isnan(r["epi_dice"]) for r in rows))})
        out["dice"] = objective_dice(endo, epi, objective)
    return out


def objective_dice(endo: float, epi: float, objective: str = "mean") -> float:
    """The Dice that ranks trials (``classes.OBJECTIVES``) from the endocardial and the
    epicardial Dice: ``mean`` takes the endocardial alone where there is no epicardial
    (no image with an o-contour)."""
    if objective == "epi":
        return epi
    if objective == "mean" and not math.isnan(epi):
        return (endo + epi) / 2
    return endo
