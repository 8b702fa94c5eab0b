"""Contract tests of the keras-tuner adapter: each private touch point against the
installed keras-tuner, so that a release that moves one fails here, not in a search."""

from __future__ import annotations

import keras
import keras_tuner
import pytest

from lvseg_search.engine import kt_compat


def _hp() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("depth", [2, 3, 4])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    return hp


def _oracle(cls, tmp_path, **kwargs):
    oracle = cls(objective=keras_tuner.Objective("val_dice", "max"), seed=1, **kwargs)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters = _hp()
    return oracle


def test_the_pinned_series_is_installed():
    major, minor = (int(x) for x in keras_tuner.__version__.split(".")[:2])
    assert (major, minor) == (1, 4), keras_tuner.__version__


@pytest.mark.parametrize(("max_epochs", "factor", "min_epochs", "brackets"),
                         [(27, 3, 1, 4), (27, 3, 3, 3), (24, 2, 6, 3), (9, 3, 9, 1)])
def test_hyperband_oracle_takes_its_shortest_rung(max_epochs, factor, min_epochs, brackets,
                                                  tmp_path):
    oracle = _oracle(kt_compat.HyperbandOracle, tmp_path, max_epochs=max_epochs,
                     factor=factor, min_epochs=min_epochs)
    assert kt_compat.hyperband_brackets(oracle) == brackets
    trial = oracle.create_trial("t")
    # The most aggressive bracket that fits opens first, at the shortest rung.
    assert trial.hyperparameters.values["tuner/epochs"] == min_epochs
    assert trial.hyperparameters.values["tuner/bracket"] == brackets - 1


def test_schedule_done_follows_the_oracles_own_end(tmp_path):
    oracle = _oracle(kt_compat.HyperbandOracle, tmp_path, max_epochs=4, factor=2,
                     min_epochs=2, hyperband_iterations=1)
    said_done = []
    while True:
        said_done.append(kt_compat.hyperband_schedule_done(oracle))
        trial = oracle.create_trial("t")
        if trial.status != "RUNNING":
            break
        oracle.update_trial(trial.trial_id, {"val_dice": 0.1 * len(said_done)})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert trial.status == "STOPPED"
    # Bracket 1: 3 trials of 2 epochs, 2 continued to 4; bracket 0: 3 of 4 epochs. The
    # adapter says done once the last of them has started, and not before.
    assert said_done == [False] * 8 + [True]


@pytest.mark.parametrize("cls", [keras_tuner.oracles.RandomSearchOracle,
                                 keras_tuner.oracles.BayesianOptimizationOracle,
                                 kt_compat.HyperbandOracle])
def test_default_first_replaces_the_first_draw_only(cls, tmp_path):
    kwargs = {"max_epochs": 4, "factor": 2} if cls is kt_compat.HyperbandOracle else {
        "max_trials": 4}
    oracle = _oracle(kt_compat.default_first(cls), tmp_path, **kwargs)
    oracle.first_values = {"depth": 3, "learning_rate": 0.005}
    first = oracle.create_trial("t")
    assert {k: first.hyperparameters.values[k] for k in ("depth", "learning_rate")} == {
        "depth": 3, "learning_rate": 0.005}
    oracle.update_trial(first.trial_id, {"val_dice": 0.5})
    first.status = "COMPLETED"
    oracle.end_trial(first)
    second = oracle.create_trial("t")
    assert second.hyperparameters.values["learning_rate"] != 0.005


def test_load_trial_reads_what_keras_tuner_saved(tmp_path):
    oracle = _oracle(keras_tuner.oracles.RandomSearchOracle, tmp_path, max_trials=2)
    trial = oracle.create_trial("t")
    oracle.update_trial(trial.trial_id, {"val_dice": 0.7})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    path = tmp_path / "p" / f"trial_{trial.trial_id}" / "trial.json"
    loaded = kt_compat.load_trial(path)
    assert (loaded.trial_id, loaded.status, loaded.score) == (trial.trial_id, "COMPLETED", 0.7)
    assert loaded.hyperparameters.values == trial.hyperparameters.values
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError):
        kt_compat.load_trial(path)


def test_remote_oracle_is_keras_tuners_client(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    local = _oracle(keras_tuner.oracles.RandomSearchOracle, tmp_path, max_trials=2)
    from keras_tuner.src.distribute.oracle_client import OracleClient

    assert kt_compat.is_remote_oracle(OracleClient(local))
    assert not kt_compat.is_remote_oracle(local)


def test_lean_build_is_what_keras_tuner_calls_and_builds_in_the_strategy(tmp_path):
    # keras-tuner's fit loop builds through _try_build; the adapter's override must be it.
    assert "_try_build" in vars(kt_compat.LeanBuildTuner)
    assert callable(keras_tuner.Tuner._try_build)

    def build(hp):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Int("u", 1, 2))])
        model.compile(loss="mse")
        return model

    tuner = kt_compat.LeanBuildTuner(
        oracle=_oracle(keras_tuner.oracles.RandomSearchOracle, tmp_path / "o", max_trials=1),
        hypermodel=build, directory=str(tmp_path), project_name="p")
    hp = keras_tuner.HyperParameters()
    hp.Fixed("u", 2)
    model = tuner.build_trial_model(hp)
    assert model.layers[-1].units == 2
    with kt_compat.maybe_distribute(None):
        pass
    bad = kt_compat.LeanBuildTuner(
        oracle=_oracle(keras_tuner.oracles.RandomSearchOracle, tmp_path / "o2", max_trials=1),
        hypermodel=lambda hp: "not a model", directory=str(tmp_path), project_name="q")
    with pytest.raises(keras_tuner.errors.FatalTypeError):
        bad.build_trial_model(hp)


def test_atomic_state_writes_keras_tuners_own_state_through_a_renamed_file(tmp_path,
                                                                          monkeypatch):
    """The oracle's and trials' files hold what keras-tuner writes and reloads, written
    through ``atomic.write_text`` (a temporary file renamed into place)."""
    import json

    from lvseg_search import atomic

    written = []
    real = atomic.write_text
    monkeypatch.setattr(atomic, "write_text",
                        lambda path, text: (written.append(path.name), real(path, text)))
    cls = kt_compat.atomic_state(keras_tuner.oracles.RandomSearchOracle)
    oracle = _oracle(cls, tmp_path, max_trials=3)
    trial = oracle.create_trial("t")
    assert set(written) == {"oracle.json", "trial.json"}
    project = tmp_path / "p"
    oracle.save()
    assert json.loads((project / "oracle.json").read_text()) == json.loads(
        json.dumps(oracle.get_state()))
    trial_file = project / f"trial_{trial.trial_id}" / "trial.json"
    assert kt_compat.load_trial(trial_file).hyperparameters.values == trial.hyperparameters.values
    again = _oracle(cls, tmp_path, max_trials=3)
    again.reload()
    assert set(again.trials) == {trial.trial_id}
    assert not list(project.rglob(".*.tmp"))


def test_hyperband_planned_trials_are_the_trials_its_schedule_gives(tmp_path):
    oracle = _oracle(kt_compat.HyperbandOracle, tmp_path, max_epochs=8, factor=2,
                     min_epochs=2, hyperband_iterations=1)
    planned = kt_compat.hyperband_planned_trials(oracle)
    given = 0
    while True:
        trial = oracle.create_trial("t")
        if trial.status == "STOPPED":
            break
        given += 1
        oracle.update_trial(trial.trial_id, {"val_dice": given % 5 / 10})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert planned == given
