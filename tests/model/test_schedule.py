"""Learning-rate schedules: values over the horizon, and a promoted (resumed) fit
continuing its parent's schedule at the absolute epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvseg_search.model.schedule import COSINE_FLOOR, learning_rate_at, scheduler


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
    assert scheduler({"learning_rate": 0.01}, 30) == []
    assert scheduler({"learning_rate": 0.01, "lr_schedule": "constant"}, 30) == []


def test_a_resumed_fit_continues_the_schedule_at_its_absolute_epoch():
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

    values = {"learning_rate": 0.01, "lr_schedule": "cosine"}
    # A Hyperband promotion: the parent trained epochs 0..2, the child goes on to 9.
    model.fit(x, y, epochs=9, initial_epoch=3, verbose=0,
              callbacks=[*scheduler(values, 9), Record()])
    assert [e for e, _ in seen] == list(range(3, 9))
    for epoch, lr in seen:
        assert lr == pytest.approx(learning_rate_at(epoch, 0.01, "cosine", 9), rel=1e-6)
    assert seen[0][1] < 0.01 * math.cos(0.0)
