"""What a search and an export will write, and the checks made before they write it."""

from __future__ import annotations

import errno

import keras_tuner
import pytest

from lvseg_search.engine import disk_space
from lvseg_search.engine.kt_compat import HyperbandOracle
from lvseg_search.errors import free_bytes


def test_a_write_larger_than_the_free_space_is_refused_as_the_system_would(tmp_path):
    free = free_bytes(tmp_path)
    disk_space.ensure_space(tmp_path, 1)  # room for a byte
    with pytest.raises(OSError) as caught:
        disk_space.ensure_space(tmp_path, free * 10 + 10**9)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)


def test_the_warning_is_one_line_and_only_when_space_is_short(tmp_path, capsys):
    assert not disk_space.warn_if_short(tmp_path, 1, "this step", "retry")
    assert capsys.readouterr().out == ""
    assert disk_space.warn_if_short(tmp_path, free_bytes(tmp_path) * 10 + 10**9,
                                    "this search (3 trials)", "run it again")
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith(f"lvseg-search: warning: {tmp_path}: ")
    assert "this search (3 trials) needs about" in said[0] and "(then run it again)" in said[0]


def test_the_estimates_grow_with_the_network_the_folds_and_the_trials():
    small, large = disk_space.fold_bytes(1_000), disk_space.fold_bytes(1_000_000)
    assert large - small == 4 * 999_000  # float32 weights
    assert disk_space.search_bytes(1_000, 3, 10) == 10 * (3 * small + disk_space.TRIAL_RECORDS)
    assert disk_space.search_bytes(1_000, 3, 0) == 0
    assert disk_space.export_bytes(2_000) > disk_space.export_bytes(1_000)


def test_planned_trials_count_the_schedule_and_the_final_stage(tmp_path):
    from lvseg_search.engine.final_stage import configure, with_final_stage

    oracle = with_final_stage(HyperbandOracle)(
        objective=keras_tuner.Objective("val_dice", "max"), max_epochs=8, factor=2,
        min_epochs=2, hyperband_iterations=1, seed=1)
    configure(oracle, max_trials=None, finalists=2, final_epochs=16, max_epochs=8,
              default=None)
    # 21 screening trials (the schedule's own count), 2 finalists and the default network.
    assert disk_space.planned_trials(oracle) == 21 + 3
    capped = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("val_dice", "max"), max_trials=5)
    assert disk_space.planned_trials(capped) == 5
