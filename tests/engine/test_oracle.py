"""Bayesian optimization leaves random sampling after a third of its trials."""

import keras_tuner

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


def _rungs(oracle, tmp_path, n: int) -> list[int]:
    """The epochs of the first ``n`` trials, each completed as it comes, ranked by the
    order they came in."""
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters = _space()
    epochs = []
    for i in range(n):
        trial = oracle.create_trial("t")
        if trial.status != "RUNNING":
            break
        epochs.append(trial.hyperparameters.values["tuner/epochs"])
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
