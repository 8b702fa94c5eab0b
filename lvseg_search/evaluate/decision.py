"""Test-time augmentation, largest-region and convex-hull post-processing and where the
field of view is cut, decided by cross-validation.

Whether averaging over flipped copies, keeping only the largest region or filling it to
its convex hull helps depends on the network and the data (the hull, on whether the
experts drew the papillary muscles inside the contour), so none is assumed: each
patient is predicted by the fold model that never saw it (out-of-fold, as nnU-Net
decides its post-processing), and the CV Dice of every setting is computed the way the
search computes a trial's (mean over folds of the mean per-image Dice of the masks as
delivered). The setting with the highest CV Dice is kept; a gain below :data:`TIE`
counts as none, and ties go to the cheaper setting, except that a field of view cut
around the localized LV wins a tie with one cut around the image centre: it also holds
for hearts far from the centre, which the patients of a cross-validation may not show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lvseg_search.classes import Classes
from lvseg_search.evaluate.scoring import PatientImages, score_predictions, segment_modes
from lvseg_search.model.contract import ROI_MODES
from lvseg_search.model.postprocess import fill_convex_hulls, keep_largest_regions
from lvseg_search.model.serving import make_modes_predictor
from lvseg_search.model.tta import TTA_MODES

# A CV Dice gain smaller than this is within the noise of a few patients' folds: the
# cheaper setting is kept.
TIE = 1e-3
# Post-processing steps tried: (largest region, convex hull of it). The hull of several
# regions would bridge them, so it comes only after the largest region.
POSTPROCESSING = ((False, False), (True, False), (True, True))
# What names a setting (a row of the table).
CHOICE_KEYS = ("roi", "tta", "largest_region", "convex_hull")


def same_setting(row: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two rows (or a row and a decision) name the same setting."""
    return all(row[k] == other[k] for k in CHOICE_KEYS)


def _cost(row: dict[str, Any]) -> tuple[int, int, bool, bool]:
    """Order of preference among tied settings: fewer views, a localized field of view,
    less post-processing."""
    return (TTA_MODES.index(row["tta"]), -ROI_MODES.index(row["roi"]),
            bool(row["largest_region"]), bool(row["convex_hull"]))


def out_of_fold_table(folds: Sequence[tuple[Any, Sequence[PatientImages]]], image_size: int,
                      normalization: str, spacing_mm: float | None,
                      modes: Sequence[str] = TTA_MODES,
                      rois: Sequence[str] = ("centre",), classes: Classes | None = None,
                      objective: str = "mean") -> list[dict[str, Any]]:
    """CV figures of every test-time augmentation with each post-processing
    (:data:`POSTPROCESSING`), for each way of cutting the field of view.

    Args:
        folds: Per fold, its network and the validation patients it never trained on.
        image_size: The networks' input rows and columns.
        normalization: The per-image normalization of training.
        spacing_mm: The networks' grid pixel size (None: whole images resized).
        modes: Test-time augmentations to try (``tta.TTA_MODES``).
        rois: Fields of view to try (``contract.ROI_MODES``; ``localized`` needs a
            physical grid).
        classes: The networks' classes (None: the LV); with a myocardium each step is
            applied per contour and ``cv_dice`` is the ``objective``.
        objective: ``classes.OBJECTIVES``.

    Returns:
        One row per setting, preferred first: ``roi``, ``tta``, ``largest_region``,
        ``convex_hull``, ``cv_dice``
        (mean over folds), ``cv_dice_std``, ``dice_per_fold``, ``apd_mm``,
        ``good_contours_pct`` (means over folds); with a myocardium also ``endo_dice``,
        ``epi_dice``, ``myo_dice``, ``epi_apd_mm`` and ``epi_good_contours_pct``.
    """
    multi = classes is not None and classes.count > 2
    labels = classes if multi else None
    # The modes of a field of view from one network call per batch: the dihedral views
    # hold the flips' and the image's own, and the locating passes are the modes' alike
    # (measured on the real subset's three folds: every setting's masks in 8.5 s instead
    # of 12.1, the same to the pixel).
    masks = {}
    for roi in rois:
        by_fold = []
        for network, patients in folds:
            predict = make_modes_predictor([network], image_size, normalization,
                                           spacing_mm, modes, roi=roi, classes=labels)
            by_fold.append([segment_modes(predict, p.images, p.spacing_mm, modes,
                                          study_roi=roi == "localized", classes=labels)
                            for p in patients])
        for mode in modes:
            masks[roi, mode] = [[segmented[mode][1] for segmented in fold]
                                for fold in by_fold]
    rows = []
    for roi, mode in [(r, m) for r in rois for m in modes]:
        per_fold = masks[roi, mode]
        # Each step works on the one before: the largest regions are found once.
        largest = [[keep_largest_regions(m, labels) for m in masks] for masks in per_fold]
        delivered = {(False, False): per_fold, (True, False): largest,
                     (True, True): [[fill_convex_hulls(m, labels) for m in masks]
                                    for masks in largest]}
        for largest_region, hull in POSTPROCESSING:
            summaries = [score_predictions(masks, patients, objective)[1]
                         for masks, (_, patients)
                         in zip(delivered[largest_region, hull], folds, strict=True)]
            dice = np.array([s["dice"] for s in summaries])
            row = {"roi": roi, "tta": mode, "largest_region": largest_region,
                   "convex_hull": hull,
                   "cv_dice": float(dice.mean()), "cv_dice_std": float(dice.std()),
                   "dice_per_fold": [float(d) for d in dice],
                   "apd_mm": _mean(s["apd_mm"] for s in summaries),
                   "good_contours_pct": _mean(s["good_contours_pct"] for s in summaries)}
            if multi:
                row.update({k: _mean(s[k] for s in summaries) for k in CONTOUR_KEYS})
            rows.append(row)
    return sorted(rows, key=_cost)


# The figures of each contour in a table of a model with a myocardium.
CONTOUR_KEYS = ("endo_dice", "epi_dice", "myo_dice", "epi_apd_mm", "epi_good_contours_pct")


def _mean(values) -> float:
    found = [v for v in values if not math.isnan(v)]
    return float(np.mean(found)) if found else math.nan


def choose(table: Sequence[dict[str, Any]], tta: str | None = None,
           largest_region: bool | None = None, roi: str | None = None,
           convex_hull: bool | None = None) -> dict[str, Any]:
    """The setting to export: the highest CV Dice, the preferred one of those within
    :data:`TIE` of it, among the settings the user left open.

    Args:
        table: Rows of :func:`out_of_fold_table`.
        tta: Force this test-time augmentation (None: decided here).
        largest_region: Force largest-region post-processing on or off (None: decided).
        roi: Force this field of view (None: decided).
        convex_hull: Force convex-hull filling on or off (None: decided).

    Returns:
        The chosen row.

    Raises:
        ValueError: No row of the table matches the forced settings.
    """
    open_rows = [r for r in table if (tta is None or r["tta"] == tta)
                 and (largest_region is None or r["largest_region"] == largest_region)
                 and (roi is None or r["roi"] == roi)
                 and (convex_hull is None or r["convex_hull"] == convex_hull)]
    if not open_rows:
        raise ValueError(f"no out-of-fold figures for roi={roi}, tta={tta}, "
                         f"largest_region={largest_region}, convex_hull={convex_hull}")
    best = max(r["cv_dice"] for r in open_rows)
    return min((r for r in open_rows if r["cv_dice"] >= best - TIE), key=_cost)


def table_text(table: Sequence[dict[str, Any]], chosen: dict[str, Any] | None = None) -> str:
    """The table as aligned text lines, the chosen row marked."""
    contours = bool(table) and "epi_dice" in table[0]
    lines = ["roi        tta       largest region  convex hull  CV Dice          APD mm  "
             "good contours" + ("  endo Dice  epi Dice  myo Dice  epi APD mm" if contours
                                else "")]
    for r in table:
        mark = "  <- chosen" if chosen is not None and same_setting(r, chosen) else ""
        extra = (f"  {r['endo_dice']:9.4f}  {r['epi_dice']:8.4f}  {r['myo_dice']:8.4f}  "
                 f"{r['epi_apd_mm']:10.2f}" if contours else "")
        lines.append(f"{r['roi']:<10} {r['tta']:<9} "
                     f"{'yes' if r['largest_region'] else 'no':<15} "
                     f"{'yes' if r['convex_hull'] else 'no':<12} "
                     f"{r['cv_dice']:.4f} +- {r['cv_dice_std']:.3f}  {r['apd_mm']:6.2f}  "
                     f"{r['good_contours_pct']:12.1f}%{extra}{mark}")
    return "\n".join(lines)
