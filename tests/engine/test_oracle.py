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
