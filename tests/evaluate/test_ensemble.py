"""Ensemble selection across trials (Caruana) on out-of-fold probabilities, and its
nested, selection-free figure."""

from __future__ import annotations

import numpy as np
import pytest

from lvseg_search.evaluate.ensemble import beats, delivered_dice, nested_selection, select
from lvseg_search.evaluate.scoring import PatientImages

SIZE = 32


def _disk(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _patient(pid: str, n: int = 3) -> PatientImages:
    masks = np.stack([_disk(16, 16, 6 + i) for i in range(n)])
    return PatientImages(pid, np.zeros_like(masks, np.int16), masks,
                         np.ones((n, 2), np.float32), np.arange(n), np.zeros(n, int))


def _probabilities(patient: PatientImages, blob: tuple[int, int] | None,
                   wrong: bool = False) -> list[np.ndarray]:
    """0.9 on the expert mask (0.1 if ``wrong``), 0.1 elsewhere, and a false 0.7 blob."""
    out = []
    for m in patient.masks:
        p = np.where(m > 0, 0.1 if wrong else 0.9, 0.1).astype(np.float32)
        if blob is not None:
            p[_disk(*blob, 3) > 0] = 0.7
        out.append(p)
    return out


@pytest.fixture
def folds():
    return [[_patient("a")], [_patient("b")]]


def _candidate(folds, blob, wrong_in=()):
    return [[_probabilities(p, blob, wrong=k in wrong_in) for p in fold]
            for k, fold in enumerate(folds)]


def test_members_whose_errors_differ_average_them_away(folds):
    candidates = {"A": _candidate(folds, (4, 4)), "B": _candidate(folds, (27, 27)),
                  "C": _candidate(folds, None, wrong_in=(0, 1))}
    single = {m: np.mean(delivered_dice(c, folds, False, False)) for m, c in candidates.items()}
    assert single["A"] == single["B"] < 1.0 and single["C"] == 0.0
    chosen = select(candidates, folds, largest_region=False, convex_hull=False, rounds=5)
    # A first (the first of equals), then B: the blobs fall to 0.4 and the masks are exact.
    assert chosen.weights == {"A": 1, "B": 1}
    assert chosen.cv_dice == pytest.approx(1.0) and chosen.dice_per_fold == [1.0, 1.0]
    assert chosen.steps[0] == pytest.approx(single["A"]) and max(chosen.steps) == 1.0
    assert beats(chosen.cv_dice, single["A"])
    # Capped at one member: the best single trial, however many times chosen.
    one = select(candidates, folds, largest_region=False, convex_hull=False, rounds=3,
                 max_members=1)
    assert set(one.weights) == {"A"} and one.cv_dice == pytest.approx(single["A"])
    dice, weights = nested_selection(candidates, folds, largest_region=False,
                                     convex_hull=False, rounds=5)
    assert dice == [1.0, 1.0] and weights == [{"A": 1, "B": 1}] * 2


def test_post_processing_is_part_of_the_score(folds):
    candidates = {"A": _candidate(folds, (4, 4)), "B": _candidate(folds, (27, 27))}
    # With the largest region kept, each blob goes anyway: one member is as good.
    chosen = select(candidates, folds, largest_region=True, convex_hull=False, rounds=4)
    assert chosen.weights == {"A": 1} and chosen.cv_dice == pytest.approx(1.0)
    assert not beats(chosen.cv_dice, 1.0)


def test_the_nested_figure_shows_what_selection_on_the_same_folds_hides(folds):
    # D is right on fold 0 only, E on fold 1 only, F half right on both.
    candidates = {"D": _candidate(folds, None, wrong_in=(1,)),
                  "E": _candidate(folds, None, wrong_in=(0,)),
                  "F": _candidate(folds, (4, 4))}
    chosen = select(candidates, folds, largest_region=False, convex_hull=False, rounds=6)
    dice, weights = nested_selection(candidates, folds, largest_region=False,
                                     convex_hull=False, rounds=6)
    # Selected on fold 1 alone, E is perfect there and wrong on fold 0; and the reverse.
    assert weights[0] == {"E": 1} and weights[1] == {"D": 1}
    assert dice == [0.0, 0.0] and np.mean(dice) < chosen.cv_dice


def test_bad_arguments_are_refused(folds):
    with pytest.raises(ValueError, match="no candidate"):
        select({}, folds, largest_region=False, convex_hull=False)
    with pytest.raises(ValueError, match="max_members"):
        select({"A": _candidate(folds, None)}, folds, largest_region=False,
               convex_hull=False, max_members=0)
    with pytest.raises(ValueError, match="two folds"):
        nested_selection({"A": _candidate(folds, None)[:1]}, folds[:1],
                         largest_region=False, convex_hull=False)
