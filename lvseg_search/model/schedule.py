"""Learning-rate schedules over a search's epoch horizon.

A schedule is a function of the *absolute* epoch and the search's ``max_epochs``, not of
the epochs one trial runs: a Hyperband trial promoted from epoch 3 to 9 continues its
parent's schedule where the parent stopped, and ``export`` retraining for the best
epoch count reproduces the learning rates the chosen epoch was trained with.
"""

from __future__ import annotations

from typing import Any

SCHEDULES = ("constant", "cosine", "poly")
COSINE_FLOOR = 0.01  # cosine decays to this fraction of the base rate at max_epochs
POLY_EXPONENT = 0.9  # nnU-Net's polynomial decay: base * (1 - epoch / horizon) ** 0.9


def learning_rate_at(epoch: int, base: float, schedule: str, horizon: int) -> float:
    """The learning rate of 0-based ``epoch``.

    Args:
        epoch: Absolute epoch (0 = first epoch of the network's training).
        base: The trial's ``learning_rate``.
        schedule: One of ``SCHEDULES``.
        horizon: The search's ``max_epochs``; cosine reaches its floor there, poly
            its last epoch's rate (kept for any epoch past it).

    Raises:
        ValueError: Unknown schedule.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        import keras

        # Keras's cosine step schedule, stepped once per epoch; past the horizon it stays
        # at the floor.
        decay = keras.optimizers.schedules.CosineDecay(base, max(horizon, 1),
                                                       alpha=COSINE_FLOOR)
        return float(keras.ops.convert_to_numpy(decay(epoch)))
    if schedule == "poly":
        horizon = max(horizon, 1)
        return base * (1.0 - min(epoch, horizon - 1) / horizon) ** POLY_EXPONENT
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose {SCHEDULES}")


def scheduler(values: dict[str, Any], horizon: int) -> list[Any]:
    """Callbacks applying a trial's schedule (none for a constant rate).

    Args:
        values: The trial's hyperparameter values (``learning_rate``, ``lr_schedule``;
            trials of spaces without ``lr_schedule`` are constant).
        horizon: The search's ``max_epochs``.
    """
    import keras

    schedule = values.get("lr_schedule", "constant")
    if schedule == "constant":
        return []
    base = float(values["learning_rate"])
    return [keras.callbacks.LearningRateScheduler(
        lambda epoch, _lr: learning_rate_at(epoch, base, schedule, horizon))]
