"""Segmentation scores with physical units: Dice per image and per patient, and the
Sunnybrook challenge's contour distances (average perpendicular distance, good-contour
rate, Hausdorff distance), all in millimetres from the shards' pixel spacing.

Contours are the masks' iso-lines at 0.5 (scikit-image's ``find_contours``); distances
are point-to-polyline (APD) and point-set Hausdorff (SciPy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import directed_hausdorff
from skimage.measure import find_contours

GOOD_APD_MM = 5.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, truth).sum() / total)


def volume_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Dice over all slices of one patient together (a volume overlap)."""
    inter = sum(int(np.logical_and(p, t).sum()) for p, t in zip(preds, truths, strict=True))
    total = sum(int(np.asarray(p, bool).sum() + np.asarray(t, bool).sum())
                for p, t in zip(preds, truths, strict=True))
    return 1.0 if total == 0 else 2.0 * inter / total


def contour_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """The longest boundary of a mask as ``[N, 2]`` (row, col) points in millimetres;
    empty when the mask is."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2))
    # Pad so regions touching the border still give closed contours.
    lines = find_contours(np.pad(mask.astype(float), 1), 0.5)
    line = max(lines, key=len) - 1.0
    return line * np.asarray(spacing_mm, dtype=float)[None, :]


def _point_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance of each point to the closed polyline (exact point-to-segment)."""
    a = polyline
    b = np.roll(polyline, -1, axis=0)
    ab = b - a
    length2 = np.maximum((ab**2).sum(axis=1), 1e-12)
    ap = points[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab[None]).sum(axis=2) / length2[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((points[:, None, :] - closest) ** 2).sum(axis=2)).min(axis=1)


def average_perpendicular_distance(pred: np.ndarray, truth: np.ndarray,
                                   spacing_mm: Sequence[float]) -> float:
    """Mean distance (mm) from the predicted contour's points to the manual contour,
    as in the 2009 challenge; NaN when either contour is missing."""
    p, t = contour_mm(pred, spacing_mm), contour_mm(truth, spacing_mm)
    if len(p) == 0 or len(t) == 0:
        return math.nan
    return float(_point_to_polyline(p, t).mean())


def hausdorff_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Symmetric Hausdorff distance (mm) between the two contours; NaN when either is
    missing."""
    p, t = contour_mm(pred, spacing_mm), contour_mm(truth, spacing_mm)
    if len(p) == 0 or len(t) == 0:
        return math.nan
    return float(max(directed_hausdorff(p, t)[0], directed_hausdorff(t, p)[0]))


def score_image(pred: np.ndarray, truth: np.ndarray,
                spacing_mm: Sequence[float]) -> dict[str, float]:
    """All per-image scores: ``dice``, ``apd_mm``, ``hausdorff_mm`` and ``good_contour``
    (1 when APD < 5 mm, 0 when worse or when one contour is missing, NaN when there is
    neither a manual nor a predicted contour)."""
    apd = average_perpendicular_distance(pred, truth, spacing_mm)
    if math.isnan(apd):
        good = math.nan if not np.any(pred) and not np.any(truth) else 0.0
    else:
        good = float(apd < GOOD_APD_MM)
    return {"dice": dice(pred, truth), "apd_mm": apd,
            "hausdorff_mm": hausdorff_mm(pred, truth, spacing_mm), "good_contour": good}
