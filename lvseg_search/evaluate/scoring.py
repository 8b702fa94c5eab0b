"""Scoring a segmenter on prepared patients at their stored resolution: per-image Dice,
APD, Hausdorff and good contours, per-patient volume Dice, and their summary.

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

from lvseg_search.data import shards
from lvseg_search.data.manifest import PreparedData
from lvseg_search.evaluate.measures import Reference, reference, score_image, volume_dice
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
    _references: list[Reference] | None = field(default=None, repr=False)

    def references(self) -> list[Reference]:
        """The manual LV contours, traced and indexed once (a search scores many models
        against them)."""
        if self._references is None:
            self._references = [reference(m == LV, s)
                                for m, s in zip(self.masks, self.spacing_mm, strict=True)]
        return self._references


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
            study_roi: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
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

    Returns:
        Each image's LV probabilities (as the network gives them) and mask, in the
        order of ``images``.
    """
    centres = None
    if study_roi:
        _, first = segment(predict, images, spacing_mm, batch_size)
        centres = np.tile(study_centre_mm(first, spacing_mm).astype(np.float32),
                          (len(images), 1))
    probs: list[Any] = [None] * len(images)
    masks: list[Any] = [None] * len(images)
    # Serving models keep the largest region themselves (then this changes nothing);
    # models exported before they did, and plain predictors, deliver the arg-max.
    for indices in same_size_groups(images):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            args = (np.stack([images[i] for i in chunk]),
                    np.asarray([spacing_mm[i] for i in chunk], np.float32))
            out = predict(*args) if centres is None else predict(*args, centres[chunk])
            chunk_masks = np.asarray(out["mask"])
            if largest_region:
                chunk_masks = keep_largest_regions(chunk_masks)
            for i, p, m in zip(chunk, np.asarray(out["probabilities"]), chunk_masks,
                               strict=True):
                probs[i], masks[i] = p, m
    return probs, masks


def score_masks(pred: Sequence[np.ndarray],
                patient: PatientImages) -> tuple[list[dict[str, Any]], float]:
    """Scores predicted masks of one patient's slices against its expert masks.

    Returns:
        Per-image rows (patient, slice, phase and the scores of ``score_image``) and the
        patient's volume Dice.
    """
    truth = [m == LV for m in patient.masks]
    refs = patient.references()
    rows = []
    for i in range(len(patient.images)):
        scores = score_image(pred[i].astype(bool), truth[i], patient.spacing_mm[i], refs[i])
        rows.append({"patient_id": patient.patient_id,
                     "slice_index": int(patient.slice_index[i]),
                     "phase_index": int(patient.phase_index[i]), **scores})
    return rows, volume_dice([m.astype(bool) for m in pred], truth)


def score_patients(predict: Predictor, patients: Sequence[PatientImages],
                   batch_size: int = 16, largest_region: bool = True,
                   study_roi: bool = False
                   ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Scores a segmenter on patients.

    Args:
        predict: See :func:`segment`.
        patients: Patients from :func:`load_patient_images`.
        batch_size: Images per call of ``predict``.
        largest_region: See :func:`segment`.
        study_roi: Each patient's images are one study (see :func:`segment`).

    Returns:
        Per-image rows (see :func:`score_masks`) and a summary (see :func:`summarize_scores`).
    """
    return score_predictions([segment(predict, p.images, p.spacing_mm, batch_size,
                                      largest_region, study_roi)[1] for p in patients],
                             patients)


def score_predictions(masks: Sequence[Sequence[np.ndarray]], patients: Sequence[PatientImages]
                      ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Scores predicted masks, one list per patient in the order of its images.

    Returns:
        Per-image rows (see :func:`score_masks`) and a summary (see :func:`summarize_scores`).
    """
    rows: list[dict[str, Any]] = []
    volumes: dict[str, float] = {}
    for pred, p in zip(masks, patients, strict=True):
        patient_rows, volumes[p.patient_id] = score_masks(pred, p)
        rows += patient_rows
    return rows, summarize_scores(rows, volumes)


def summarize_scores(rows: Sequence[dict[str, Any]],
              volumes: dict[str, float] | None = None) -> dict[str, float]:
    """Summary of per-image scores: mean Dice, mean APD and Hausdorff (mm, over images
    where both contours exist), good contours (% of images with a contour to judge),
    mean per-patient volume Dice, and the number of images."""

    def mean(key: str) -> float:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(values)) if values else math.nan

    good = mean("good_contour")
    out = {"dice": mean("dice"), "apd_mm": mean("apd_mm"), "hausdorff_mm": mean("hausdorff_mm"),
           "good_contours_pct": good * 100 if not math.isnan(good) else math.nan,
           "images": float(len(rows))}
    if volumes:
        out["patient_dice"] = float(np.mean(list(volumes.values())))
    return out
