"""Segmentation scores with physical units: Dice per image and per patient, and the
Sunnybrook challenge's contour distances (average perpendicular distance, good-contour
rate, Hausdorff distance), all in millimetres from the shards' pixel spacing.

Contours are the masks' iso-lines at 0.5 (scikit-image's ``find_contours``); distances
are point-to-polyline (APD, to within 0.025 mm) and point-set Hausdorff (SciPy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.distance import directed_hausdorff
from skimage.measure import find_contours

from lvseg_search.model.postprocess import largest_region

GOOD_APD_MM = 5.0
_EIGHT_CONNECTED = np.ones((3, 3), bool)


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
    """The outer boundary of a mask's largest connected region as ``[N, 2]`` (row, col)
    points in millimetres (one contour per image, as the challenge scores); empty when
    the mask is."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2))
    mask = largest_region(mask)
    # Trace only the region's bounding box (an untrained network's speckle elsewhere
    # would otherwise cost most of the time), padded so border regions close.
    rows, cols = np.nonzero(mask)
    r0, c0 = rows.min(), cols.min()
    crop = mask[r0:rows.max() + 1, c0:cols.max() + 1]
    # Holes do not move the outer boundary, but an untrained network's region is full of
    # them and find_contours would trace (and assemble, in Python) every one. A hole is
    # background not 8-connected to the outside, as find_contours connects background
    # ("low") values: filled so, the region's outer iso-line is the same.
    crop = ndimage.binary_fill_holes(crop, structure=_EIGHT_CONNECTED)
    lines = find_contours(np.pad(crop.astype(float), 1), 0.5)
    line = max(lines, key=len) - 1.0 + np.array([r0, c0], dtype=float)
    return line * np.asarray(spacing_mm, dtype=float)[None, :]


class Reference:
    """A manual contour prepared for repeated scoring: its points and a k-d tree over
    the closed polyline resampled every ``step_mm``.

    The tree over-estimates the exact point-to-segment distance by at most
    ``step_mm / 2`` (0.025 mm, far below a pixel) and stays fast for the long, ragged
    contours of untrained networks. A search scores every fold model of every trial
    against the same manual contours, so they are traced and indexed once.

    Args:
        points: ``[N, 2]`` contour points in mm (empty: no contour).
        step_mm: Resampling step along the polyline.
    """

    def __init__(self, points: np.ndarray, step_mm: float = 0.05):
        self.points = np.asarray(points, dtype=float)
        self.tree = cKDTree(_densify(self.points, step_mm)) if len(self.points) else None

    def distances(self, points: np.ndarray) -> np.ndarray:
        """Distance (mm) of each of ``points`` to the closed polyline."""
        return self.tree.query(points)[0]


def _densify(polyline: np.ndarray, step_mm: float) -> np.ndarray:
    """Points along the closed polyline, at most ``step_mm`` apart."""
    a = polyline
    b = np.roll(polyline, -1, axis=0)
    lengths = np.sqrt(((b - a) ** 2).sum(axis=1))
    counts = np.maximum(np.ceil(lengths / step_mm).astype(int), 1)
    seg = np.repeat(np.arange(len(a)), counts)
    first = np.cumsum(counts) - counts
    t = (np.arange(counts.sum()) - first[seg]) / counts[seg]
    return a[seg] + t[:, None] * (b - a)[seg]


def reference(truth: np.ndarray, spacing_mm: Sequence[float]) -> Reference:
    """The manual mask's contour, prepared for :func:`score_image`."""
    return Reference(contour_mm(truth, spacing_mm))


def _apd(p: np.ndarray, t: Reference) -> float:
    return math.nan if len(p) == 0 or len(t.points) == 0 else float(t.distances(p).mean())


def _hausdorff(p: np.ndarray, t: np.ndarray) -> float:
    if len(p) == 0 or len(t) == 0:
        return math.nan
    return float(max(directed_hausdorff(p, t)[0], directed_hausdorff(t, p)[0]))


def average_perpendicular_distance(pred: np.ndarray, truth: np.ndarray,
                                   spacing_mm: Sequence[float]) -> float:
    """Mean distance (mm) from the predicted contour's points to the manual contour,
    as in the 2009 challenge; NaN when either contour is missing."""
    return _apd(contour_mm(pred, spacing_mm), reference(truth, spacing_mm))


def hausdorff_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Symmetric Hausdorff distance (mm) between the two contours; NaN when either is
    missing."""
    return _hausdorff(contour_mm(pred, spacing_mm), contour_mm(truth, spacing_mm))


def score_image(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                ref: Reference | None = None) -> dict[str, float]:
    """All per-image scores: ``dice``, ``apd_mm``, ``hausdorff_mm`` and ``good_contour``
    (1 when APD < 5 mm, 0 when worse or when one contour is missing, NaN when there is
    neither a manual nor a predicted contour).

    Args:
        pred: Predicted mask.
        truth: Manual mask.
        spacing_mm: Pixel spacing (row, col).
        ref: ``reference(truth, spacing_mm)`` when already computed.
    """
    p = contour_mm(pred, spacing_mm)
    t = ref if ref is not None else reference(truth, spacing_mm)
    apd = _apd(p, t)
    if math.isnan(apd):
        good = math.nan if not np.any(pred) and not np.any(truth) else 0.0
    else:
        good = float(apd < GOOD_APD_MM)
    return {"dice": dice(pred, truth), "apd_mm": apd,
            "hausdorff_mm": _hausdorff(p, t.points), "good_contour": good}
