"""search.json of older run folders: upgraded in order, with what they trained with."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from lvseg_search.data.augmentation import Augmentation
from lvseg_search.engine import upgrade
from lvseg_search.engine.options import SCHEMA_VERSION, SearchOptions

# The first search.json the package wrote: before augmentation, steps per epoch, the
# data's digest, split draws, oracles, the physical grid, the default trial, the
# shortest rung, LV-centred views and rungs that anneal.
FIRST = {"data": "/d", "space": "/s.toml", "space_digest": "x", "folds": 3,
         "test_patients": 0, "test_ids": [], "max_epochs": 9, "factor": 3,
         "hyperband_iterations": 1, "image_size": 128, "batch_size": 8,
         "normalization": "zscore", "seed": 0, "precision": "float32", "jit": False,
         "max_trials": None}


def test_the_first_record_reads_as_it_trained():
    record, filled = upgrade.upgrade(FIRST)
    options = SearchOptions.from_record(record, "search.json")
    assert options.schema_version == SCHEMA_VERSION == record["schema_version"]
    aug = options.augmentation
    assert (aug.rotation_deg, aug.scale, aug.shift, aug.intensity, aug.offset_mm) == (
        10.0, 0.1, 0.0, 0.1, 0.0)
    assert (aug.gamma, aug.contrast, aug.brightness, aug.noise, aug.blur,
            aug.low_resolution) == (0.0,) * 6
    assert (options.spacing_mm, options.field_of_view_mm, options.min_epochs,
            options.lr_per_rung, options.oracle, options.steps_per_epoch,
            options.include_default) == (0.0, 0.0, 1, False, "hyperband", 0, False)
    assert not options.physical
    assert {"spacing_mm", "min_epochs", "lr_per_rung", "augment_offset_mm",
            "augment_rotation_deg"} <= filled
    assert "data" not in filled and "schema_version" not in filled
    assert json.loads(json.dumps(FIRST)) == FIRST  # the input is left alone


def test_a_last_unversioned_record_keeps_every_value_it_holds():
    flat = {**FIRST, **{f"augment_{k}": v for k, v in asdict(Augmentation(gamma=0.5)).items()},
            "steps_per_epoch": 7, "data_digest": "abc", "test_seed": 2, "stratify": "group",
            "oracle": "random", "groups_file": "", "group_column": "group",
            "spacing_mm": 1.5, "field_of_view_mm": 200.0, "include_default": True,
            "min_epochs": 3, "lr_per_rung": True, "max_trials": 5}
    record, filled = upgrade.upgrade(flat)
    # Only what versions 2 to 4 added: no final stage, the blood pool scored, as it ran.
    assert filled == {"finalists", "final_epochs", "objective", "final_from"}
    options = SearchOptions.from_record(record, "search.json")
    assert options.augmentation == Augmentation(gamma=0.5)
    assert (options.steps_per_epoch, options.spacing_mm, options.min_epochs, options.oracle,
            options.lr_per_rung, options.include_default) == (7, 1.5, 3, "random", True, True)
    assert (options.finalists, options.final_epochs) == (0, 0)


def test_a_version_1_record_gets_no_final_stage_and_keeps_its_default_choice():
    options = SearchOptions(data="/d", space="/s", space_digest="x", min_epochs=2,
                            spacing_mm=1.0, field_of_view_mm=128.0, include_default=False)
    record = json.loads(json.dumps(asdict(options)))
    del record["finalists"], record["final_epochs"], record["objective"], record["final_from"]
    record["schema_version"] = 1
    again, filled = upgrade.upgrade(record)
    assert filled == {"finalists", "final_epochs", "objective", "final_from"}
    upgraded = SearchOptions.from_record(again, "search.json")
    assert (upgraded.finalists, upgraded.final_epochs, upgraded.include_default) == (0, 0, False)
    assert upgraded.schema_version == SCHEMA_VERSION == 4
    # Before the contours were scored, trials ranked by the blood pool; before finalists
    # could start from scratch, they continued their screening trial.
    assert (upgraded.objective, upgraded.final_from) == ("endo", "screening")


def test_a_version_3_record_with_finalists_keeps_continuing_them():
    options = SearchOptions(data="/d", space="/s", space_digest="x", finalists=2,
                            final_epochs=20, final_from="scratch")
    record = json.loads(json.dumps(asdict(options)))
    del record["final_from"]
    record["schema_version"] = 3
    again, filled = upgrade.upgrade(record)
    assert filled == {"final_from"}
    assert SearchOptions.from_record(again, "search.json").final_from == "screening"


def test_each_step_fills_only_what_it_added_in_order():
    names = [step.__name__ for step in upgrade.V0_STEPS]
    assert names[-1] == "_nest_augmentation"
    # Before LV-centred views, after the grid: only the offset and the rungs are filled.
    flat = {**FIRST, **{f"augment_{k}": v for k, v in asdict(Augmentation()).items()
                        if k != "offset_mm"},
            "spacing_mm": 1.2, "field_of_view_mm": 180.0, "min_epochs": 1,
            "include_default": False, "oracle": "hyperband", "groups_file": "",
            "group_column": "group", "test_seed": 0, "stratify": "slices",
            "steps_per_epoch": 0, "data_digest": ""}
    record, filled = upgrade.upgrade(flat)
    assert filled == {"augment_offset_mm", "lr_per_rung", "finalists", "final_epochs",
                      "objective", "final_from"}
    assert record["augmentation"]["offset_mm"] == 0.0 and record["spacing_mm"] == 1.2


def test_a_current_record_is_unchanged_and_every_field_is_recorded():
    options = SearchOptions(data="/d", space="/s", space_digest="x", min_epochs=2,
                            spacing_mm=1.0, field_of_view_mm=128.0)
    record = json.loads(json.dumps(asdict(options)))
    assert set(record) == {f.name for f in fields(SearchOptions)}
    again, filled = upgrade.upgrade(record)
    assert (again, filled) == (record, frozenset())
    assert SearchOptions.from_record(again, "search.json") == options


def test_a_newer_record_or_an_unknown_option_is_refused():
    from lvseg_search.errors import UserError

    with pytest.raises(ValueError, match="newer"):
        upgrade.upgrade({**FIRST, "schema_version": SCHEMA_VERSION + 1})
    record, _ = upgrade.upgrade(FIRST)
    with pytest.raises(UserError, match=r"search.json: unknown option\(s\) warp_drive"):
        SearchOptions.from_record({**record, "warp_drive": 1}, "search.json")


def test_a_record_from_a_newer_package_is_one_line(tmp_path):
    from lvseg_search.engine.run import read_options
    from lvseg_search.errors import UserError

    (tmp_path / "search.json").write_text(json.dumps({**FIRST, "schema_version": 99}))
    with pytest.raises(UserError, match=r"search.json: schema version 99 is newer .* upgrade"):
        read_options(tmp_path, "")
