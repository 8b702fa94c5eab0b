"""The final stage of a search: after screening (Hyperband's rungs, or the random and
Bayesian trials at their budget), the best few distinct configurations, and the space's
default network, are trained again with the same folds to a final budget.

Screening ranks configurations on short training; a single run's CV Dice on a few
patients moves by a few hundredths with initialization alone, and a fixed network
trained long beat every short-trained search in our measurements. So the finalists are
trained on to a final budget as long as a fixed run's, and the search's result is read
from them. Where a finalist starts is the run's ``final_from``:

- ``screening`` continues its configuration's longest-trained screening trial (its fold
  checkpoints) with the learning rate restarted and annealed to the final epoch, as
  Hyperband's promotions do. It costs only the epochs added, and keeps the
  initialization that ranked the configuration: on the demo's phantom a 12-epoch trial
  so promoted scored CV Dice 0.968 and 0.955 where the same configurations trained 12
  epochs from scratch with one decay scored 0.882 and 0.946.
- ``scratch`` trains a new initialization with one learning-rate decay to the final
  epoch. On the real subset (``quick``'s 1800-batch finalists, seeds 0-2) it delivered
  what continuing did (searches: 0.879 against 0.880 out of fold; the default network
  as a finalist: 0.854 against 0.858) and took 9% longer, so continuing is the default
  (docs/benchmarks.md).

Finalists are keras-tuner trials like the others (their values carry ``tuner/final``,
``tuner/epochs`` and ``tuner/initial_epoch``): the oracle gives them out through its
public ``populate_space`` once its own schedule is over, so they resume after a kill, are
scored per fold and show in HParams and the report.
"""

from __future__ import annotations

from typing import Any

import keras_tuner

from lvseg_search.engine.kt_compat import hyperband_schedule_done
from lvseg_search.model.schedule import FINAL

# keras-tuner's trial statuses (its TrialStatus values).
_STOPPED, _RUNNING, _IDLE, _COMPLETED = "STOPPED", "RUNNING", "IDLE", "COMPLETED"


def configuration(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A trial's network and training recipe: its values without the oracle's own
    ``tuner/`` bookkeeping (Hyperband's rungs, the final stage's marker)."""
    return tuple(sorted((k, v) for k, v in values.items() if not k.startswith("tuner/")))


def is_final(values: dict[str, Any]) -> bool:
    """Whether a trial's values are those of a finalist."""
    return bool(values.get(FINAL))


def screening(trials) -> list[Any]:
    """The screening's trials among ``trials`` (all but the finalists)."""
    return [t for t in trials if not is_final(t.hyperparameters.values)]


def rank_configurations(trials: list[Any]) -> list[tuple[tuple[tuple[str, Any], ...], float]]:
    """The screening's distinct configurations, best first, each with its best score
    (over its rungs) among the completed screening trials.

    Args:
        trials: keras-tuner trials (any status; only completed screening ones count).
    """
    best: dict[tuple[tuple[str, Any], ...], float] = {}
    for trial in screening(trials):
        if trial.status != _COMPLETED or trial.score is None:
            continue
        key = configuration(trial.hyperparameters.values)
        best[key] = max(best.get(key, float("-inf")), float(trial.score))
    return sorted(best.items(), key=lambda item: -item[1])


def trained_epochs(values: dict[str, Any], max_epochs: int) -> int:
    """Epochs a screening trial trained: its rung's (Hyperband), else the budget."""
    return int(values.get("tuner/epochs", max_epochs))


def longest_trial(trials: list[Any], key: tuple[tuple[str, Any], ...], max_epochs: int) -> Any:
    """The completed screening trial of a configuration trained longest (the best of
    those), which its finalist continues."""
    own = [t for t in trials if t.status == _COMPLETED and t.score is not None
           and configuration(t.hyperparameters.values) == key]
    return max(own, key=lambda t: (trained_epochs(t.hyperparameters.values, max_epochs),
                                   t.score))


def with_final_stage(oracle_class: type) -> type:
    """``oracle_class`` followed by a final stage (:func:`configure`): once its own
    schedule or its ``screening_trials`` are over and every screening trial has ended,
    it gives out the finalists one trial each, then stops."""

    class FinalStage(oracle_class):
        finalists: int = 0
        final_epochs: int = 0
        final_from: str = "screening"
        screening_epochs: int = 0  # what a trial without Hyperband's tuner/epochs trained
        screening_trials: int | None = None
        default_values: dict[str, Any] = {}

        def chosen(self) -> list[tuple[tuple[str, Any], ...]]:
            """The finalists' configurations: the top ``finalists`` of the screening,
            and the default network if it is not among them."""
            if not self.finalists:
                return []
            ranked = [key for key, _ in rank_configurations(self.trials.values())]
            top = ranked[:self.finalists]
            default = configuration(self.default_values)
            if self.default_values and default in ranked and default not in top:
                top.append(default)
            return top

        def pending(self) -> list[tuple[tuple[str, Any], ...]]:
            """Chosen configurations without a final trial yet (a failed finalist is not
            tried again: it is reported as failed)."""
            done = {configuration(t.hyperparameters.values) for t in self.trials.values()
                    if is_final(t.hyperparameters.values)}
            return [key for key in self.chosen() if key not in done]

        # Set once the screening's own oracle said it is over (in this process).
        screening_over: bool = False

        def populate_space(self, trial_id):
            screened = screening(self.trials.values())
            capped = (self.screening_trials is not None
                      and len(screened) >= self.screening_trials)
            if not capped and not self.screening_over:
                response = super().populate_space(trial_id)
                if response["status"] != _STOPPED or not self.finalists:
                    return response
            self.screening_over = True
            if any(t.status == _RUNNING for t in screened):
                return {"status": _IDLE}  # the ranking waits for every screening trial
            pending = self.pending()
            if not pending:
                return {"status": _STOPPED}
            values = {**dict(pending[0]), "tuner/epochs": self.final_epochs,
                      "tuner/initial_epoch": 0, FINAL: 1}
            if self.final_from != "scratch":
                parent = longest_trial(screened, pending[0], self.screening_epochs)
                values.update({"tuner/initial_epoch": trained_epochs(
                    parent.hyperparameters.values, self.screening_epochs),
                    "tuner/trial_id": parent.trial_id})
            return {"status": _RUNNING, "values": values}

    FinalStage.__name__ = FinalStage.__qualname__ = f"FinalStage{oracle_class.__name__}"
    return FinalStage


def configure(oracle: Any, *, max_trials: int | None, finalists: int, final_epochs: int,
              max_epochs: int, default: dict[str, Any] | None,
              final_from: str = "screening") -> None:
    """Sets a (perhaps resumed) oracle's screening budget and final stage from the run's
    options: a new budget extends or caps the screening, and the finalists come after it.

    Args:
        oracle: An oracle of a :func:`with_final_stage` class.
        max_trials: Screening trials at most (None: the oracle's own schedule).
        finalists: Configurations to train again (0: no final stage).
        final_epochs: The epoch each finalist trains to.
        max_epochs: The screening's longest trial (what a random or Bayesian trial
            trained).
        default: The space's default network (a finalist too when screened).
        final_from: Where a finalist starts: ``screening`` (its configuration's longest
            screening trial, continued) or ``scratch`` (a new initialization).
    """
    oracle.finalists = int(finalists)
    oracle.final_epochs = int(final_epochs)
    oracle.final_from = final_from
    oracle.screening_epochs = int(max_epochs)
    oracle.default_values = dict(default or {})
    oracle.screening_trials = max_trials
    oracle.screening_over = False
    if max_trials is None or not oracle.finalists:
        oracle.max_trials = max_trials
        return
    # keras-tuner stops at max_trials before asking the oracle: room for every finalist
    # there can be (one per screened configuration, and the default network), the same
    # in every process of the run, as trial ids are padded to its width.
    oracle.max_trials = 2 * max_trials + 1


def screening_done(oracle: Any) -> bool:
    """Whether a local oracle's screening gives no more trials: its cap reached, or
    Hyperband's schedule over."""
    cap = getattr(oracle, "screening_trials", oracle.max_trials)
    if cap is not None and len(screening(oracle.trials.values())) >= cap:
        return True
    return (isinstance(oracle, keras_tuner.oracles.HyperbandOracle)
            and hyperband_schedule_done(oracle))


def final_stage_done(oracle: Any) -> bool:
    """Whether an oracle's final stage has nothing left to train (true without one)."""
    return not getattr(oracle, "finalists", 0) or not oracle.pending()
