import json

import pytest

from lvseg_search.cli import main
from lvseg_search.data import splits
from lvseg_search.errors import UserError

COUNTS = {f"P{i:02d}": 10 + i for i in range(10)}


def _check_disjoint(result, patients):
    for fold in result["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        assert not train & val
        assert not (train | val) & set(result["test"])
        assert train | val | set(result["test"]) == set(patients)
    vals = [p for fold in result["folds"] for p in fold["val"]]
    assert sorted(vals) == sorted(set(patients) - set(result["test"]))  # each once


def test_grouped_folds_with_held_out_test_patients():
    result = splits.make_splits(COUNTS, 4, test_patients=2, seed=1)
    assert len(result["folds"]) == 4 and len(result["test"]) == 2
    _check_disjoint(result, COUNTS)
    assert result == splits.make_splits(COUNTS, 4, test_patients=2, seed=1)
    assert result != splits.make_splits(COUNTS, 4, test_patients=2, seed=2)


def test_explicit_test_ids():
    result = splits.make_splits(COUNTS, 3, test_ids=["P03", "P07"])
    assert result["test"] == ["P03", "P07"]
    _check_disjoint(result, COUNTS)


@pytest.mark.parametrize("kwargs,needle", [
    ({"folds": 11}, "11 folds need at least 11 patients"),
    ({"folds": 9, "test_patients": 2}, "hold out fewer test patients"),
    ({"folds": 1}, "at least 2"),
    ({"folds": 3, "test_ids": ["nobody"]}, "unknown patient"),
    ({"folds": 3, "test_patients": 10}, "not between 1 and 9"),
])
def test_impossible_splits_are_refused(kwargs, needle):
    folds = kwargs.pop("folds")
    with pytest.raises(UserError, match=needle):
        splits.make_splits(COUNTS, folds, **kwargs)


def test_split_command_writes_splits_json(real_prepared, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert main(["split", str(real_prepared), "--folds", "3", "--out", str(out)]) == 0
    result = splits.load(out, ["SCD0000101", "SCD0000201", "SCD0000301"])
    assert sorted(len(f["val"]) for f in result["folds"]) == [1, 1, 1]
    _check_disjoint(result, ["SCD0000101", "SCD0000201", "SCD0000301"])


def test_more_folds_than_patients_is_a_clear_error(real_prepared, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert main(["split", str(real_prepared), "--folds", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--folds: 4 folds need at least 4 patients" in err
    assert not out.exists()


def test_leaky_splits_file_is_refused(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"folds": [{"train": ["A", "B"], "val": ["B"]}], "test": []}))
    with pytest.raises(UserError, match="puts a patient in two parts"):
        splits.load(path)
