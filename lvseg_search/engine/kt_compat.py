"""The one module that touches keras-tuner's internals.

keras-tuner's public API covers its oracles, tuners and hyperparameters, but not six
things this package needs: Hyperband's shortest rung (fixed at 1 by its constructor),
whether a Hyperband schedule has run out, the first draw of an oracle, loading a trial
from its file, writing the oracle's and trials' state atomically, and giving a lost
worker's trial to another. Each is reached
here through a private name of keras-tuner 1.4, the series ``pyproject.toml`` pins;
``tests/engine/test_kt_compat.py`` checks each touch point against the installed
keras-tuner, and ``tests/test_architecture.py`` checks that no other module uses a
private keras-tuner name or ``keras_tuner.engine``/``src``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import keras_tuner
from keras_tuner.engine.trial import Trial
from keras_tuner.engine.tuner import maybe_distribute as _maybe_distribute
from keras_tuner.src.distribute.oracle_client import OracleClient

from lvseg_search import atomic

__all__ = ["HyperbandOracle", "LeanBuildTuner", "Trial", "atomic_state", "default_first",
           "hyperband_brackets", "hyperband_planned_trials", "hyperband_schedule_done",
           "is_remote_oracle", "load_trial", "maybe_distribute", "requeue_lost_worker"]


def load_trial(path: Path | str) -> Trial:
    """A trial read from its ``trial.json``.

    Raises:
        ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError: The file is
            not a whole trial record (keras-tuner's own errors, passed on).
    """
    return Trial.load(str(path))


@contextlib.contextmanager
def maybe_distribute(strategy: Any) -> Iterator[None]:
    """Inside ``strategy.scope()`` when a strategy is given (keras-tuner's helper)."""
    with _maybe_distribute(strategy):
        yield


def is_remote_oracle(oracle: Any) -> bool:
    """Whether ``oracle`` is a distributed worker's client of the chief's oracle (it has
    none of a local oracle's schedule state)."""
    return isinstance(oracle, OracleClient)


def hyperband_brackets(oracle: keras_tuner.oracles.HyperbandOracle) -> int:
    """The number of brackets of a Hyperband oracle's iteration (its own count)."""
    return oracle._get_num_brackets()


def hyperband_planned_trials(oracle: keras_tuner.oracles.HyperbandOracle) -> int:
    """The trials a Hyperband oracle's whole schedule gives (every rung of every bracket
    of every iteration, promotions included), by its own sizes."""
    per_iteration = sum(oracle._get_size(b, r) for b in range(oracle._get_num_brackets())
                        for r in range(oracle._get_num_rounds(b)))
    return per_iteration * oracle.hyperband_iterations


def hyperband_schedule_done(oracle: keras_tuner.oracles.HyperbandOracle) -> bool:
    """Whether a local Hyperband oracle's next answer is STOPPED: every bracket complete
    and the last bracket of the last iteration started (``populate_space``'s own end
    test in keras-tuner 1.4)."""
    oracle._remove_completed_brackets()
    return (not oracle._brackets and oracle._current_bracket == 0
            and oracle._current_iteration + 1 == oracle.hyperband_iterations)


class HyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """keras-tuner's Hyperband oracle with its shortest rung as a parameter.

    keras-tuner keeps ``min_epochs`` (its shortest rung; brackets whose first rung would
    be shorter are not run) as an attribute fixed at 1, and saves and restores it with
    its state; here it is set before the first bracket starts. Everything else is the
    stock oracle.

    Args:
        min_epochs: Epochs of the first rung of the most aggressive bracket.
        **kwargs: keras-tuner's ``HyperbandOracle`` arguments.
    """

    def __init__(self, *, min_epochs: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.min_epochs = int(min_epochs)
        # The stock constructor opened its first bracket for a shortest rung of 1.
        self._current_bracket = self._get_num_brackets() - 1
        self._brackets = []
        self._start_new_bracket()


def default_first(oracle_class: type) -> type:
    """``oracle_class`` whose first trial is given (``first_values`` on the instance):
    its first random draw is replaced (a resumed search, which has trials, draws as
    usual). keras-tuner's oracles sample every trial at random; the rest of their
    behaviour (Hyperband's brackets, the Bayesian model) is untouched."""

    class DefaultFirst(oracle_class):
        first_values: dict[str, Any] = {}

        def _random_values(self):
            if self.first_values and not self.trials:
                return dict(self.first_values)
            return super()._random_values()

    DefaultFirst.__name__ = DefaultFirst.__qualname__ = f"DefaultFirst{oracle_class.__name__}"
    return DefaultFirst


def atomic_state(oracle_class: type) -> type:
    """``oracle_class`` writing ``oracle.json`` and each ``trial.json`` under a temporary
    name renamed into place. keras-tuner writes them in place, so a full disk or a stop
    signal in the middle of a write would leave a truncated file that the next run
    cannot resume from; the contents are keras-tuner's own state, unchanged."""

    class AtomicState(oracle_class):
        def save(self):
            atomic.write_text(Path(self._get_oracle_fname()), json.dumps(self.get_state()))

        def _save_trial(self, trial):
            atomic.write_text(Path(self._get_trial_dir(trial.trial_id)) / "trial.json",
                              json.dumps(trial.get_state()))

    AtomicState.__name__ = AtomicState.__qualname__ = f"Atomic{oracle_class.__name__}"
    return AtomicState


@keras_tuner.synchronized
def requeue_lost_worker(oracle: keras_tuner.Oracle, tuner_id: str) -> str | None:
    """Forgets a worker that stopped reporting and puts the trial it held in the
    oracle's retry queue, which the next worker to ask is given first (as keras-tuner
    does for a chief's own unfinished trials when it resumes). Without this, the chief
    keeps the trial running and waits for the worker forever before it exits.

    Returns:
        The trial put back, or None if the worker held none.
    """
    oracle.tuner_ids.discard(tuner_id)
    trial = oracle.ongoing_trials.pop(tuner_id, None)
    if trial is None:
        return None
    oracle._retry_queue.append(trial.trial_id)
    oracle.save()
    return trial.trial_id


class LeanBuildTuner(keras_tuner.Tuner):
    """keras-tuner's ``Tuner`` whose model build does not clear the Keras session first.

    The stock build clears the session and collects garbage before every trial; a tuner
    that already released the previous trial's memory itself would pay ~0.3 s a trial to
    do it twice.
    """

    def _try_build(self, hp):
        model = self._build_hypermodel(hp)
        if not isinstance(model, keras.Model):
            raise keras_tuner.errors.FatalTypeError(
                f"the hypermodel returned {type(model).__name__}, not a keras.Model")
        return model

    def build_trial_model(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """A trial's model, built as keras-tuner builds it (hypermodel, strategy scope)."""
        return self._try_build(hp)
