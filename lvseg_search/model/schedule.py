"""Learning-rate schedules over a trial's rungs.

A schedule is a function of the *absolute* epoch and the ends of the rungs the network
trained through, not of the epochs one call to ``fit`` runs. With one rung (random search,
Bayesian optimization, ``--oracle fixed``, and run folders written before rungs restarted)
the rate decays over the search's ``max_epochs``. A Hyperband trial anneals to the end of
its own rung, and a trial promoted from it restarts at the base rate and anneals to the end
of the next (warm restarts, Loshchilov & Hutter, SGDR, 2017): each rung then scores a
network trained to stable weights, which ranks trials where a mid-schedule one did not
(README, Benchmarks). ``export`` replays the same rungs, so that the network it retrains
learns at the rates of the one that was scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

SCHEDULES = ("constant", "cosine", "poly")
COSINE_FLOOR = 0.01  # cosine decays to this fraction of the base rate at a rung's end
POLY_EXPONENT = 0.9  # nnU-Net's polynomial decay: base * (1 - epoch / horizon) ** 0.9

# The trial value that marks a finalist of the search's final stage
# (``engine.final_stage``): it continues its ``tuner/trial_id`` to its ``tuner/epochs``.
FINAL = "tuner/final"


def learning_rate_at(epoch: int, base: float, schedule: str, horizon: int,
                     start: int = 0) -> float:
    """The learning rate of 0-based ``epoch`` in a decay from ``start`` to ``horizon``.

    Args:
        epoch: Absolute epoch (0 = first epoch of the network's training).
        base: The trial's ``learning_rate``.
        schedule: One of ``SCHEDULES``.
        horizon: The epoch the decay ends at; cosine reaches its floor there, poly its
            last epoch's rate (kept for any epoch past it).
        start: The epoch the decay starts at (the base rate there).

    Raises:
        ValueError: Unknown schedule.
    """
    if schedule == "constant":
        return base
    length, step = max(horizon - start, 1), max(epoch - start, 0)
    if schedule == "cosine":
        import keras

        # Keras's cosine step schedule, stepped once per epoch; past the horizon it stays
        # at the floor.
        decay = keras.optimizers.schedules.CosineDecay(base, length, alpha=COSINE_FLOOR)
        return float(keras.ops.convert_to_numpy(decay(step)))
    if schedule == "poly":
        return base * (1.0 - min(step, length - 1) / length) ** POLY_EXPONENT
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose {SCHEDULES}")


def rung_ends(values: dict[str, Any], parent_values: Callable[[str], dict[str, Any]],
              max_epochs: int, per_rung: bool) -> list[int]:
    """The epochs at which a trial's schedule restarts, ending with its own last epoch.

    Args:
        values: The trial's hyperparameter values (Hyperband's ``tuner/epochs`` and
            ``tuner/trial_id`` where it set them).
        parent_values: A trial id -> that trial's values (the trials it continues).
        max_epochs: The search's ``max_epochs``: the only rung without Hyperband's values
            or without ``per_rung``.
        per_rung: Whether the search restarts its schedule at each rung.

    Returns:
        Increasing epoch counts, e.g. ``[6, 12, 24]`` for a trial promoted twice.
    """
    if values.get(FINAL):
        # A finalist restarts the schedule where the trial it continues ended.
        parent = values.get("tuner/trial_id")
        earlier = (rung_ends(parent_values(parent), parent_values, max_epochs, per_rung)
                   if parent is not None else [])
        return [*earlier, int(values["tuner/epochs"])]
    if not per_rung or "tuner/epochs" not in values:
        return [max_epochs]
    ends = [int(values["tuner/epochs"])]
    parent = values.get("tuner/trial_id")
    while parent is not None:
        earlier = parent_values(parent)
        ends.insert(0, int(earlier["tuner/epochs"]))
        parent = earlier.get("tuner/trial_id")
    return ends


def retrained_ends(ends: Sequence[int], epochs: int) -> list[int]:
    """The rungs of a network retrained for ``epochs``: a trial's own, the last one cut or
    stretched to end there.

    Args:
        ends: The trial's rung ends (:func:`rung_ends`).
        epochs: The epochs retrained.
    """
    return [e for e in ends[:-1] if e < epochs] + [epochs]


def rate_in_rungs(epoch: int, base: float, schedule: str, ends: Sequence[int]) -> float:
    """The learning rate of 0-based ``epoch`` for a network trained through ``ends``.

    Args:
        epoch: Absolute epoch.
        base: The trial's ``learning_rate``.
        schedule: One of ``SCHEDULES``.
        ends: The rung ends (:func:`rung_ends`); past the last, its end rate.

    Raises:
        ValueError: ``ends`` is empty.
    """
    start = 0
    for end in ends:
        if epoch < end or end == ends[-1]:
            return learning_rate_at(epoch, base, schedule, end, start)
        start = end
    raise ValueError("no rung ends given")


def scheduler(values: dict[str, Any], ends: Sequence[int]) -> list[Any]:
    """Callbacks applying a trial's schedule (none for a constant rate).

    Args:
        values: The trial's hyperparameter values (``learning_rate``, ``lr_schedule``;
            trials of spaces without ``lr_schedule`` are constant).
        ends: The rung ends the schedule restarts at (:func:`rung_ends`); one, the search's
            ``max_epochs``, for a single decay.
    """
    import keras

    schedule = values.get("lr_schedule", "constant")
    if schedule == "constant":
        return []
    base = float(values["learning_rate"])
    ends = list(ends)
    return [keras.callbacks.LearningRateScheduler(
        lambda epoch, _lr: rate_in_rungs(epoch, base, schedule, ends))]
