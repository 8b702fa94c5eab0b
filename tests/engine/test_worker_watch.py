"""The chief's watch over its workers' heartbeats, on a real oracle and real files."""

from __future__ import annotations

import time

import keras_tuner

from lvseg_search.engine.kt_compat import atomic_state
from lvseg_search.engine.worker_watch import Heartbeat, WorkerWatch, heartbeat_file


def _oracle(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("depth", [2, 3, 4])
    oracle = atomic_state(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_dice", "max"), max_trials=4, seed=1)
    oracle._set_project_dir(str(tmp_path), "tuner")
    oracle.hyperparameters = hp
    return oracle


def test_a_silent_worker_loses_its_trial_to_the_next_and_a_beating_one_keeps_it(tmp_path):
    oracle = _oracle(tmp_path)
    said = []
    watch = WorkerWatch(oracle, tmp_path, timeout=0.5, say=said.append)
    watch.stop()  # checked by hand below, at chosen times
    beat = Heartbeat(tmp_path, "w0", every=0.05)
    lost_trial = oracle.create_trial("w1").trial_id  # w1 never beats
    kept_trial = oracle.create_trial("w0").trial_id
    assert watch.check() == []  # w1 first seen now
    # Back within the time-out, a worker gets its own trial again (keras-tuner's rule).
    assert oracle.create_trial("w1").trial_id == lost_trial
    time.sleep(0.7)
    assert watch.check() == [("w1", lost_trial)]
    assert "w1" not in oracle.tuner_ids and "w1" not in oracle.ongoing_trials
    assert said and f"its trial {lost_trial} goes to the next worker" in said[0]
    # w0 beats: kept. The next worker to ask is given the lost trial first.
    assert oracle.ongoing_trials["w0"].trial_id == kept_trial
    assert oracle.create_trial("w2").trial_id == lost_trial
    # A worker restarted after the time-out joins as a new one.
    assert oracle.create_trial("w1").trial_id not in (lost_trial, kept_trial)
    beat.stop()
    stamp = heartbeat_file(tmp_path, "w0").stat().st_mtime
    time.sleep(0.1)
    assert heartbeat_file(tmp_path, "w0").stat().st_mtime == stamp  # stopped beating
    # The oracle's saved state has the lost trial running again under its new worker.
    again = _oracle(tmp_path)
    again.reload()
    assert lost_trial in again.trials
