"""Ensemble selection across trials from their out-of-fold probabilities (Caruana et al.
2004, as Auto-sklearn uses it): greedy forward selection with replacement, each step
adding the member that most raises the CV Dice of the delivered masks of the averaged
probabilities, and the best ensemble seen over the steps kept.

Members and weights chosen on the folds that also score them make an optimistic figure,
so :func:`nested_selection` gives the selection-free one as well: each fold scored by
the ensemble selected on the other folds alone.

scikit-learn and Keras have no selection over given out-of-fold predictions with a
custom score, hence this one (a few dozen lines over NumPy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lvseg_search.evaluate.decision import TIE
from lvseg_search.evaluate.scoring import PatientImages, score_predictions
from lvseg_search.model.postprocess import fill_convex_hulls, keep_largest_regions

# A candidate's out-of-fold LV probabilities: per fold, per validation patient, per image.
FoldProbabilities = Sequence[Sequence[Sequence[np.ndarray]]]


@dataclass(frozen=True)
class Selection:
    """An ensemble chosen by :func:`select`.

    Attributes:
        weights: Member -> times chosen (its weight is that over their sum), in the order
            first chosen.
        cv_dice: Mean over the scored folds of the delivered masks' Dice.
        dice_per_fold: Per scored fold.
        steps: CV Dice after each selection step (the kept ensemble is the best prefix).
    """

    weights: dict[str, int]
    cv_dice: float
    dice_per_fold: list[float]
    steps: list[float] = field(default_factory=list)


def delivered_dice(probabilities: Sequence[Sequence[Sequence[np.ndarray]]],
                   patients: Sequence[Sequence[PatientImages]], largest_region: bool,
                   convex_hull: bool) -> list[float]:
    """Per fold, the Dice of the masks delivered from LV probabilities (two classes: a
    pixel is LV above 0.5, as the model's arg-max), post-processed as decided.

    Args:
        probabilities: Per fold, per patient, per image.
        patients: Per fold, its validation patients (with their expert masks).
        largest_region: Keep each mask's largest region.
        convex_hull: Fill it to its convex hull.
    """
    dice = []
    for fold_probs, fold_patients in zip(probabilities, patients, strict=True):
        masks = []
        for patient_probs in fold_probs:
            patient_masks = [(p > 0.5).astype(np.uint8) for p in patient_probs]
            if largest_region:
                patient_masks = keep_largest_regions(patient_masks)
                if convex_hull:
                    patient_masks = fill_convex_hulls(patient_masks)
            masks.append(patient_masks)
        dice.append(float(score_predictions(masks, fold_patients)[1]["dice"]))
    return dice


def average(candidates: Mapping[str, FoldProbabilities], weights: Mapping[str, int],
            folds: Sequence[int]) -> list[list[list[np.ndarray]]]:
    """The weighted mean of candidates' probabilities on the given folds.

    Args:
        candidates: Trial id -> per fold, per patient, per image LV probabilities.
        weights: Trial id -> its weight (members only).
        folds: The folds' indices, in the order returned.

    Returns:
        Per fold (of ``folds``), per patient, per image: the averaged probabilities.
    """
    total = sum(weights.values())
    out = []
    for k in folds:
        patients = len(next(iter(candidates.values()))[k])
        fold = []
        for j in range(patients):
            images = len(next(iter(candidates.values()))[k][j])
            fold.append([sum(w * np.asarray(candidates[m][k][j][i], np.float32)
                             for m, w in weights.items()) / total for i in range(images)])
        out.append(fold)
    return out


def select(candidates: Mapping[str, FoldProbabilities],
           patients: Sequence[Sequence[PatientImages]], *, largest_region: bool,
           convex_hull: bool, rounds: int = 20, max_members: int | None = None,
           folds: Sequence[int] | None = None) -> Selection:
    """Greedy forward selection with replacement.

    Args:
        candidates: Trial id -> its out-of-fold probabilities, best single trial first
            (ties go to the earlier one).
        patients: Per fold, its validation patients.
        largest_region: The delivered masks keep their largest region.
        convex_hull: And fill it to its convex hull.
        rounds: Selection steps.
        max_members: Distinct members at most (None: any).
        folds: The folds that score the selection (default: all).

    Returns:
        The best ensemble over the steps (the earliest of equally good ones).

    Raises:
        ValueError: No candidate, or ``max_members`` below 1.
    """
    if not candidates:
        raise ValueError("no candidate to select an ensemble from")
    if max_members is not None and max_members < 1:
        raise ValueError("max_members must be at least 1")
    scored = list(range(len(patients))) if folds is None else list(folds)
    fold_patients = [patients[k] for k in scored]
    weights: dict[str, int] = {}
    # The chosen members' probabilities summed so far: a step tries each candidate as
    # (sum + its probabilities) / (count + 1), without summing the members again.
    sums = [[[np.zeros_like(p, np.float32) for p in patient] for patient in
             next(iter(candidates.values()))[k]] for k in scored]
    best: Selection | None = None
    steps = []
    for step in range(rounds):
        allowed = [m for m in candidates if m in weights or max_members is None
                   or len(weights) < max_members]
        trial_scores = []
        for member in allowed:
            mixed = [[[(s + np.asarray(p, np.float32)) / (step + 1)
                       for s, p in zip(sum_patient, member_patient, strict=True)]
                      for sum_patient, member_patient in zip(sums[i], candidates[member][k],
                                                             strict=True)]
                     for i, k in enumerate(scored)]
            per_fold = delivered_dice(mixed, fold_patients, largest_region, convex_hull)
            trial_scores.append((float(np.mean(per_fold)), member, per_fold))
        score, member, per_fold = max(trial_scores, key=lambda s: s[0])  # first of ties
        weights = {**weights, member: weights.get(member, 0) + 1}
        for i, k in enumerate(scored):
            for sum_patient, member_patient in zip(sums[i], candidates[member][k],
                                                   strict=True):
                for j, p in enumerate(member_patient):
                    sum_patient[j] += np.asarray(p, np.float32)
        steps.append(score)
        if best is None or score > best.cv_dice:
            best = Selection(dict(weights), score, per_fold)
    return Selection(best.weights, best.cv_dice, best.dice_per_fold, steps)


def nested_selection(candidates: Mapping[str, FoldProbabilities],
                     patients: Sequence[Sequence[PatientImages]], *, largest_region: bool,
                     convex_hull: bool, rounds: int = 20,
                     max_members: int | None = None) -> tuple[list[float], list[dict[str, int]]]:
    """The selection-free figure: each fold scored by the ensemble selected on the
    others.

    Returns:
        Per fold, its Dice and the weights selected without it.

    Raises:
        ValueError: Fewer than two folds.
    """
    n = len(patients)
    if n < 2:
        raise ValueError("a nested figure needs at least two folds")
    dice, chosen = [], []
    for k in range(n):
        inner = select(candidates, patients, largest_region=largest_region,
                       convex_hull=convex_hull, rounds=rounds, max_members=max_members,
                       folds=[j for j in range(n) if j != k])
        dice += delivered_dice(average(candidates, inner.weights, [k]), [patients[k]],
                               largest_region, convex_hull)
        chosen.append(inner.weights)
    return dice, chosen


def beats(ensemble: float, single: float) -> bool:
    """Whether an ensemble's CV Dice beats the single best's by more than the decision
    table's tie margin (``decision.TIE``)."""
    return ensemble > single + TIE
