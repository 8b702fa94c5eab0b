"""Learning-rate schedules: values over the horizon, and a promoted (resumed) fit
continuing its parent's schedule at the absolute epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvseg_search.model.schedule import (
    COSINE_FLOOR,
    FINAL,
    learning_rate_at,
    rate_in_rungs,
    retrained_ends,
    rung_ends,
    scheduler,
)


def test_cosine_runs_from_the_base_rate_to_its_floor_at_max_epochs():
    assert learning_rate_at(0, 0.01, "cosine", 30) == pytest.approx(0.01)
    half = learning_rate_at(15, 0.01, "cosine", 30)
    assert half == pytest.approx(0.01 * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5))
    assert learning_rate_at(30, 0.01, "cosine", 30) == pytest.approx(0.01 * COSINE_FLOOR)
    assert learning_rate_at(45, 0.01, "cosine", 30) == pytest.approx(0.01 * COSINE_FLOOR)
    rates = [learning_rate_at(e, 0.01, "cosine", 30) for e in range(31)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert learning_rate_at(7, 0.01, "constant", 30) == 0.01
    with pytest.raises(ValueError):
        learning_rate_at(0, 0.01, "step", 30)


def test_poly_decays_as_nnunet_and_holds_its_last_rate_past_the_horizon():
    from lvseg_search.model.schedule import POLY_EXPONENT

    assert learning_rate_at(0, 0.01, "poly", 30) == pytest.approx(0.01)
    assert learning_rate_at(15, 0.01, "poly", 30) == pytest.approx(0.01 * 0.5 ** POLY_EXPONENT)
    last = learning_rate_at(29, 0.01, "poly", 30)
    assert last == pytest.approx(0.01 * (1 / 30) ** POLY_EXPONENT) and last > 0
    assert learning_rate_at(40, 0.01, "poly", 30) == pytest.approx(last)
    rates = [learning_rate_at(e, 0.01, "poly", 30) for e in range(30)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_spaces_without_a_schedule_train_at_a_constant_rate():
    assert scheduler({"learning_rate": 0.01}, [30]) == []
    assert scheduler({"learning_rate": 0.01, "lr_schedule": "constant"}, [30]) == []


def _rates_of_fit(values, ends, initial: int, epochs: int) -> list[tuple[int, float]]:
    """(epoch, learning rate) of each epoch of a fit from ``initial`` to ``epochs``."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))))

    model.fit(x, y, epochs=epochs, initial_epoch=initial, verbose=0,
              callbacks=[*scheduler(values, ends), Record()])
    return seen


def test_one_decay_continues_at_the_absolute_epoch():
    values = {"learning_rate": 0.01, "lr_schedule": "cosine"}
    # A promotion in a search without per-rung restarts: the parent trained epochs 0..2,
    # the child goes on to 9 along the same decay over 9.
    seen = _rates_of_fit(values, [9], 3, 9)
    assert [e for e, _ in seen] == list(range(3, 9))
    for epoch, lr in seen:
        assert lr == pytest.approx(learning_rate_at(epoch, 0.01, "cosine", 9), rel=1e-6)
    assert seen[0][1] < 0.01 * math.cos(0.0)


def test_a_promoted_trial_restarts_at_the_base_rate_and_anneals_to_its_rung_end():
    values = {"learning_rate": 0.01, "lr_schedule": "cosine"}
    # The parent's rung: epochs 0..2, decaying to the floor's neighbourhood by its end.
    parent = _rates_of_fit(values, [3], 0, 3)
    assert parent[0][1] == pytest.approx(0.01)
    assert parent[-1][1] < 0.01 * 0.3
    # The child (rungs ending at 3 and 9) starts over at 0.01 at epoch 3 and decays over
    # 6 epochs, as a network trained 6 epochs from scratch would.
    child = _rates_of_fit(values, [3, 9], 3, 9)
    fresh = _rates_of_fit(values, [6], 0, 6)
    assert [e for e, _ in child] == list(range(3, 9))
    assert [lr for _, lr in child] == pytest.approx([lr for _, lr in fresh], rel=1e-6)
    assert rate_in_rungs(9, 0.01, "cosine", [3, 9]) == pytest.approx(0.01 * COSINE_FLOOR)
    assert rate_in_rungs(40, 0.01, "poly", [3, 9]) == pytest.approx(
        learning_rate_at(8, 0.01, "poly", 9, start=3))


def test_rung_ends_follow_the_trials_a_promoted_trial_continues():
    trials = {
        "00": {"tuner/epochs": 6, "tuner/initial_epoch": 0},
        "08": {"tuner/epochs": 12, "tuner/initial_epoch": 6, "tuner/trial_id": "00"},
        "12": {"tuner/epochs": 24, "tuner/initial_epoch": 12, "tuner/trial_id": "08"},
    }
    assert rung_ends(trials["12"], trials.__getitem__, 24, True) == [6, 12, 24]
    assert rung_ends(trials["00"], trials.__getitem__, 24, True) == [6]
    # One decay: runs written before restarts, and oracles without rungs.
    assert rung_ends(trials["12"], trials.__getitem__, 24, False) == [24]
    assert rung_ends({"learning_rate": 0.01}, trials.__getitem__, 24, True) == [24]
    # Retrained for another epoch count: the last rung ends there instead.
    assert retrained_ends([6, 12, 24], 24) == [6, 12, 24]
    assert retrained_ends([6, 12, 24], 48) == [6, 12, 48]
    assert retrained_ends([6, 12, 24], 10) == [6, 10]
    assert retrained_ends([24], 30) == [30]


def test_a_finalist_restarts_the_schedule_where_its_trial_ended():
    trials = {
        "00": {"tuner/epochs": 6, "tuner/initial_epoch": 0},
        "08": {"tuner/epochs": 24, "tuner/initial_epoch": 6, "tuner/trial_id": "00"},
        "15": {"tuner/epochs": 48, "tuner/initial_epoch": 24, "tuner/trial_id": "08",
               FINAL: 1},
        "r3": {"learning_rate": 0.01},  # a random search's trial: max_epochs, one decay
        "r9": {"tuner/epochs": 48, "tuner/initial_epoch": 24, "tuner/trial_id": "r3",
               FINAL: 1},
    }
    assert rung_ends(trials["15"], trials.__getitem__, 24, True) == [6, 24, 48]
    assert rung_ends(trials["r9"], trials.__getitem__, 24, True) == [24, 48]
    # A run whose rungs did not restart decayed once over max_epochs; its finalist
    # restarts there all the same.
    assert rung_ends(trials["15"], trials.__getitem__, 24, False) == [24, 48]
    rates = [rate_in_rungs(e, 0.01, "cosine", [24, 48]) for e in (23, 24, 47)]
    assert rates[1] == pytest.approx(0.01) and rates[0] < 0.001 and rates[2] < 0.001
