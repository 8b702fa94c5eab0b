"""A trial's cross-validated score from its folds' saved results, and the names its
figures take in TensorBoard's HParams dashboard."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class UnscorableTrial(ValueError):
    """A trial whose folds cannot be scored together (a NaN score, folds trained for
    different numbers of epochs); the tuner records it as failed."""


def cv_score(results: list[dict[str, Any]]) -> dict[str, float]:
    """Scores a trial from its fold results, every figure at one epoch (the last) and on
    the masks as delivered.

    Each fold is scored by its model as saved (its last epoch): the Dice that ranks the
    trial, and the contour distances (APD, Hausdorff, good contours), come from the same
    fold models, the ones a promoted trial continues, ``export --ensemble`` averages and
    ``export`` retrains for as many epochs. Picking the best of each trial's epochs
    instead would rank it by a model that no checkpoint holds, and by a maximum over
    noisy epochs, which is biased upwards.

    The Dice that ranks the trial (and that Hyperband promotes by) is that of the masks
    as the product delivers them: the network's probabilities resized back to each
    image's stored grid, arg-max, largest region, against the stored mask (the fold
    result's ``evaluation.dice``). The per-epoch curves stay at the network's input size,
    which is cheaper; their last value is kept as ``val_dice_network``. Fold results
    written before they held the delivered Dice are scored by their last epoch's.

    Args:
        results: The folds' saved results (``history.val_dice``, ``initial_epoch``,
            ``fold``, optional ``evaluation`` and ``parameters``).

    Returns:
        ``val_dice`` (mean over folds), ``val_dice_std``, ``val_dice_fold_<k>``,
        ``scored_epoch`` (1-based number of epochs trained), the distance metrics
        (mean over the folds that have them) and ``parameters``.

    Raises:
        UnscorableTrial: No fold, a fold without validation scores, folds trained for
            different numbers of epochs, or a NaN or infinite Dice.
    """
    if not results:
        raise UnscorableTrial("no fold to score")
    ends, last = [], []
    for r in results:
        curve = r["history"].get("val_dice") or []
        if not curve:
            raise UnscorableTrial(f"fold {r['fold']}: no validation Dice recorded")
        ends.append(int(r["initial_epoch"]) + len(curve))
        last.append(float(curve[-1]))
    if len(set(ends)) > 1:
        raise UnscorableTrial("folds trained for different numbers of epochs ("
                              + ", ".join(f"fold {r['fold']}: {e}" for r, e in
                                          zip(results, ends, strict=True)) + ")")
    delivered = [r.get("evaluation", {}).get("dice") for r in results]
    on_delivered = all(d is not None for d in delivered)
    values = np.array(delivered if on_delivered else last, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = [str(r["fold"]) for r, v in zip(results, values, strict=True)
               if not np.isfinite(v)]
        raise UnscorableTrial(f"fold {', '.join(bad)}: validation Dice is not a number")
    metrics = {"val_dice": float(values.mean()), "val_dice_std": float(values.std()),
               "scored_epoch": float(ends[0]),
               "val_dice_network": float(np.mean(last))}
    for r, value in zip(results, values, strict=True):
        metrics[f"val_dice_fold_{r['fold']}"] = float(value)
    for key in EVALUATION_METRICS:
        found = [r["evaluation"][key] for r in results
                 if not math.isnan(r.get("evaluation", {}).get(key, math.nan))]
        if found:
            metrics[key] = float(np.mean(found))
    metrics["parameters"] = float(results[0].get("parameters", 0))
    return metrics


def last_metrics(trial: Any) -> dict[str, float]:
    """A keras-tuner trial's metrics, each at its last recorded value (the one the trial
    is scored by)."""
    return {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}


def scored_epoch(metrics: dict[str, float]) -> int:
    """The epoch (1-based count) a trial's figures are at; runs written before every
    figure was taken at the last epoch ranked by the best mean epoch (``best_epoch``)."""
    value = metrics.get("scored_epoch", metrics.get("best_epoch"))
    return int(value) if value is not None else 0


EVALUATION_METRICS = ("apd_mm", "hausdorff_mm", "good_contours_pct",
                      # Each contour's, where the data has a myocardium (``scoring``).
                      "endo_dice", "epi_dice", "myo_dice", "epi_apd_mm", "epi_hausdorff_mm",
                      "epi_good_contours_pct")


def hparams_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A trial's metrics under the names of its TensorBoard HParams session."""
    out = {"cv_dice": metrics.get("val_dice"), "cv_dice_std": metrics.get("val_dice_std")}
    for key, value in metrics.items():
        if key.startswith("val_dice_fold_"):
            out[f"dice_fold_{key.rsplit('_', 1)[1]}"] = value
        elif key in (*EVALUATION_METRICS, "scored_epoch", "best_epoch", "parameters"):
            out[key] = value
    return {k: v for k, v in out.items() if v is not None}
