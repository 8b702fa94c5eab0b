"""A trial's score from hand-made fold curves: every figure at the last epoch, and the
cases that cannot be scored."""

import math

import pytest

from lvseg_search.engine.trial_score import (
    UnscorableTrial,
    cv_score,
    hparams_metrics,
    scored_epoch,
)


def _fold(k, curve, initial=0, **evaluation):
    return {"fold": k, "initial_epoch": initial, "history": {"val_dice": curve},
            "evaluation": evaluation, "parameters": 1234}


def test_every_figure_is_at_the_last_epoch():
    # Fold 0 peaks at epoch 2; the mean peaks at epoch 2 too. The score is still the
    # last epoch's, the one whose models the distances were measured on.
    results = [_fold(0, [0.2, 0.9, 0.6], apd_mm=2.0, hausdorff_mm=6.0, good_contours_pct=90.0),
               _fold(1, [0.3, 0.7, 0.8], apd_mm=4.0, hausdorff_mm=8.0, good_contours_pct=70.0)]
    m = cv_score(results)
    assert m["val_dice"] == pytest.approx(0.7)
    assert m["val_dice_std"] == pytest.approx(0.1)
    assert (m["val_dice_fold_0"], m["val_dice_fold_1"]) == pytest.approx((0.6, 0.8))
    assert m["scored_epoch"] == 3
    assert (m["apd_mm"], m["hausdorff_mm"], m["good_contours_pct"]) == pytest.approx(
        (3.0, 7.0, 80.0))
    assert m["parameters"] == 1234
    assert hparams_metrics(m)["scored_epoch"] == 3 and hparams_metrics(m)["cv_dice"] == m[
        "val_dice"]


def test_a_promoted_trial_counts_the_epochs_it_continues():
    m = cv_score([_fold(0, [0.5, 0.6], initial=3), _fold(1, [0.4, 0.7], initial=3)])
    assert m["scored_epoch"] == 5 and m["val_dice"] == pytest.approx(0.65)


def test_folds_missing_a_distance_average_the_others():
    m = cv_score([_fold(0, [0.5], apd_mm=2.0), _fold(1, [0.7], apd_mm=math.nan)])
    assert m["apd_mm"] == pytest.approx(2.0) and "hausdorff_mm" not in m


@pytest.mark.parametrize("results,needle", [
    ([], "no fold"),
    ([_fold(0, [0.5, math.nan]), _fold(1, [0.4, 0.6])], "fold 0: validation Dice is not"),
    ([_fold(0, [0.5, 0.6, 0.7]), _fold(1, [0.4, 0.6])], "different numbers of epochs"),
    ([_fold(0, [0.5, 0.6]), _fold(1, [0.6], initial=2)], "different numbers of epochs"),
    ([_fold(0, []), _fold(1, [0.6])], "fold 0: no validation Dice"),
])
def test_folds_that_cannot_be_scored_together_fail_the_trial(results, needle):
    with pytest.raises(UnscorableTrial, match=needle):
        cv_score(results)


def test_an_earlier_nan_epoch_does_not_matter_once_the_last_is_finite():
    m = cv_score([_fold(0, [math.nan, 0.5]), _fold(1, [0.2, 0.7])])
    assert m["val_dice"] == pytest.approx(0.6)


def test_runs_scored_by_the_older_rule_keep_their_epoch():
    assert scored_epoch({"best_epoch": 7.0}) == 7
    assert scored_epoch({"scored_epoch": 9.0, "best_epoch": 7.0}) == 9
    assert scored_epoch({}) == 0


def test_the_score_is_the_dice_of_the_masks_as_delivered():
    # The network-grid curves end at 0.6 and 0.8; the full-resolution masks as delivered
    # score 0.5 and 0.7, and that is what ranks the trial.
    m = cv_score([_fold(0, [0.2, 0.6], dice=0.5), _fold(1, [0.3, 0.8], dice=0.7)])
    assert m["val_dice"] == pytest.approx(0.6) and m["val_dice_network"] == pytest.approx(0.7)
    assert (m["val_dice_fold_0"], m["val_dice_fold_1"]) == pytest.approx((0.5, 0.7))
    with pytest.raises(UnscorableTrial, match="fold 1: validation Dice is not a number"):
        cv_score([_fold(0, [0.6], dice=0.5), _fold(1, [0.8], dice=math.nan)])
