"""A trial's cross-validated score from its folds' saved results, and the names its
figures take in TensorBoard's HParams dashboard."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def cv_score(results: list[dict[str, Any]]) -> dict[str, float]:
    """Scores a trial from its fold results.

    The epoch is chosen once for all folds (the epoch with the best mean validation
    Dice), so the score is that of one training recipe, not of K separately picked
    epochs; that epoch count is what ``export`` retrains for.

    Returns:
        ``val_dice`` (mean over folds), ``val_dice_std``, ``val_dice_fold_<k>`` and
        ``best_epoch`` (1-based number of epochs trained).
    """
    curves = np.array([r["history"]["val_dice"] for r in results], dtype=np.float64)
    mean = curves.mean(axis=0)
    best = int(np.nanargmax(mean))
    metrics = {"val_dice": float(mean[best]), "val_dice_std": float(curves[:, best].std()),
               "best_epoch": float(results[0]["initial_epoch"] + best + 1)}
    for r, value in zip(results, curves[:, best], strict=True):
        metrics[f"val_dice_fold_{r['fold']}"] = float(value)
    # Contour distances of the fold models as saved (last epoch), averaged over folds.
    for key in EVALUATION_METRICS:
        values = [r["evaluation"][key] for r in results
                  if not math.isnan(r.get("evaluation", {}).get(key, math.nan))]
        if values:
            metrics[key] = float(np.mean(values))
    metrics["parameters"] = float(results[0].get("parameters", 0))
    return metrics


EVALUATION_METRICS = ("apd_mm", "hausdorff_mm", "good_contours_pct")


def hparams_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A trial's metrics under the names of its TensorBoard HParams session."""
    out = {"cv_dice": metrics.get("val_dice"), "cv_dice_std": metrics.get("val_dice_std")}
    for key, value in metrics.items():
        if key.startswith("val_dice_fold_"):
            out[f"dice_fold_{key.rsplit('_', 1)[1]}"] = value
        elif key in (*EVALUATION_METRICS, "best_epoch", "parameters"):
            out[key] = value
    return {k: v for k, v in out.items() if v is not None}
