"""Bayesian optimization leaves random sampling after a third of its trials."""

import keras_tuner

from lvseg_search.engine.kt_compat import hyperband_brackets
from lvseg_search.engine.tuner import initial_points, make_oracle


def _space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Choice("depth", [2, 3])
    for name in "abcdefghij":  # single-valued choices, as a space file's fixed entries
        hp.Choice(name, ["only"])
    return hp


def test_bayesian_fits_its_process_after_a_third_of_the_trials(tmp_path, monkeypatch):
    oracle = make_oracle("bayesian", seed=0, max_epochs=3, factor=3, hyperband_iterations=1,
                         max_trials=9)
    assert oracle.num_initial_points == initial_points(9) == 3
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters = _space()
    drawn = []
    original = type(oracle)._random_populate_space
    monkeypatch.setattr(type(oracle), "_random_populate_space",
                        lambda self: drawn.append(1) or original(self))
    for i in range(5):
        trial = oracle.create_trial("t")
        assert trial.status == "RUNNING"
        oracle.update_trial(trial.trial_id, {"val_dice": 0.1 * i})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    # keras-tuner's own default (3 per registered hyperparameter: 36 here) would have
    # drawn all five at random.
    assert len(drawn) == 3


def test_initial_points_without_a_cap():
    assert initial_points(None) == 20
    assert initial_points(1) == 3
    assert initial_points(30) == 10


def _rungs(oracle, tmp_path, n: int, trained: list[int] | None = None) -> list[int]:
    """The epochs of the first ``n`` trials, each completed as it comes, ranked by the
    order they came in (``trained``, when given, gets the epochs each trial trains)."""
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters = _space()
    epochs = []
    for i in range(n):
        trial = oracle.create_trial("t")
        if trial.status != "RUNNING":
            break
        values = trial.hyperparameters.values
        epochs.append(values["tuner/epochs"])
        if trained is not None:
            trained.append(values["tuner/epochs"] - values["tuner/initial_epoch"])
        oracle.update_trial(trial.trial_id, {"val_dice": 1.0 / (i + 1)})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return epochs


def test_hyperband_leaves_out_brackets_whose_first_rung_is_under_min_epochs(tmp_path):
    stock = make_oracle("hyperband", seed=0, max_epochs=9, factor=3, hyperband_iterations=1,
                        max_trials=None)
    assert set(_rungs(stock, tmp_path / "a", 40)) == {1, 3, 9}
    assert stock.min_epochs == 1  # keras-tuner's own schedule when not asked otherwise
    oracle = make_oracle("hyperband", seed=0, max_epochs=9, factor=3, hyperband_iterations=1,
                         max_trials=None, min_epochs=3)
    epochs = _rungs(oracle, tmp_path / "b", 40)
    # Bracket 1: five trials of 3 epochs, the best two continued to 9; bracket 0: three
    # trials of 9 epochs. No trial shorter than 3.
    assert epochs == [3] * 5 + [9] * 2 + [9] * 3
    assert oracle.get_state()["min_epochs"] == 3  # saved, so a resumed search keeps it


def test_the_default_first_rung_gives_three_brackets_the_aggressive_one_first(tmp_path):
    from lvseg_search.engine.options import resolve_options
    from lvseg_search.model.space import load_space

    options = resolve_options(load_space("quick"), tmp_path / "run", image_size=64)
    oracle = make_oracle("hyperband", seed=0, max_epochs=options.max_epochs,
                         factor=options.factor, hyperband_iterations=1, max_trials=None,
                         min_epochs=options.min_epochs)
    trained: list[int] = []
    epochs = _rungs(oracle, tmp_path / "o", 100, trained)
    # quick: 12 epochs, factor 2, first rung 6. Bracket 1 first: 5 trials of 6 epochs,
    # the best 3 continued to 12 (48 epochs in all); then bracket 0 (5 trials of 12).
    assert epochs == [6] * 5 + [12] * 3 + [12] * 5
    assert (sum(trained[:8]), sum(trained)) == (48, 108)


def test_the_default_first_rung_keeps_three_brackets_or_as_many_as_fit():
    from lvseg_search.engine.options import default_min_epochs

    for max_epochs, factor, brackets in ((27, 3, 3), (60, 3, 3), (18, 3, 3), (81, 3, 3),
                                         (24, 2, 3), (12, 4, 2), (3, 3, 2), (2, 2, 2),
                                         (1, 3, 1)):
        oracle = make_oracle("hyperband", seed=0, max_epochs=max_epochs, factor=factor,
                             hyperband_iterations=1, max_trials=None,
                             min_epochs=default_min_epochs(max_epochs, factor))
        assert hyperband_brackets(oracle) == brackets, (max_epochs, factor)
