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


GROUPS = {p: ("A" if i % 2 else "B") for i, p in enumerate(sorted(COUNTS))}


def test_folds_balance_groups_then_slices():
    result = splits.make_splits(COUNTS, 5, seed=0, groups=GROUPS)
    _check_disjoint(result, COUNTS)
    assert result["stratify"] == "group"
    for row in result["balance"]:
        assert row["groups"] == {"A": 1, "B": 1}  # one of each group in every fold
    sizes = [row["slices"] for row in result["balance"]]
    assert max(sizes) - min(sizes) <= 2  # 10 patients of 10-19 slices: 29 a fold at best
    assert sizes == [sum(COUNTS[p] for p in f["val"]) for f in result["folds"]]


def test_folds_balance_slices_without_groups():
    counts = {f"Q{i}": n for i, n in enumerate([40, 5, 6, 7, 8, 9, 30, 10, 11, 12])}
    result = splits.make_splits(counts, 3, seed=4)
    assert result["stratify"] == "slices" and "groups" not in result["balance"][0]
    sizes = [row["slices"] for row in result["balance"]]
    assert max(sizes) - min(sizes) <= 2, sizes  # 138 slices: 46 a fold
    # Other seeds give other (equally balanced) folds; the same seed the same ones.
    others = [splits.make_splits(counts, 3, seed=s)["folds"] for s in range(5)]
    assert len({json.dumps(f) for f in others}) > 1
    assert splits.make_splits(counts, 3, seed=4) == result


def test_the_test_set_stays_put_across_fold_seeds():
    tests = {tuple(splits.make_splits(COUNTS, 3, test_patients=2, seed=s)["test"])
             for s in range(6)}
    assert len(tests) == 1  # --seed moves the folds only
    moved = {tuple(splits.make_splits(COUNTS, 3, test_patients=2, test_seed=s)["test"])
             for s in range(6)}
    assert len(moved) > 1
    assert splits.make_splits(COUNTS, 3, test_patients=2, test_seed=5)["test_seed"] == 5


def test_stratifying_needs_a_group_for_every_patient():
    with pytest.raises(UserError, match="no group for patient"):
        splits.make_splits(COUNTS, 3, groups={"P00": "A"})


def test_sunnybrook_cohorts_come_from_case_ids():
    from lvseg_search.data.groups import sunnybrook_group

    assert sunnybrook_group("SC-HF-I-1") == "HF-I"
    assert sunnybrook_group("SC-HF-NI-36") == "HF-NI"
    assert sunnybrook_group("SC-HYP-01") == "HYP"
    assert sunnybrook_group("sc-n-40") == "N"
    assert sunnybrook_group("SCD0000101") is None and sunnybrook_group("SC-X-1") is None


def test_split_command_stratifies_real_cases_by_their_cohort(real_prepared, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert main(["split", str(real_prepared), "--folds", "3", "--stratify", "group",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "balanced by group, then slices" in printed and "HF-I 1" in printed
    result = json.loads(out.read_text())
    assert [row["groups"] for row in result["balance"]] == [{"HF-I": 1}] * 3
    assert sorted(row["slices"] for row in result["balance"]) == [18, 18, 20]


def test_split_command_takes_groups_from_a_csv(tiny_data, tmp_path, capsys):
    from lvseg_search.data.manifest import open_data

    ids = open_data(tiny_data).patient_ids
    csv = tmp_path / "groups.csv"
    csv.write_text("patient_id,cohort\n" + "".join(f"{p},{'x' if i < 3 else 'y'}\n"
                                                   for i, p in enumerate(ids)))
    out = tmp_path / "splits.json"
    assert main(["split", str(tiny_data), "--folds", "2", "--groups", str(csv),
                 "--group-column", "cohort", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(sum(r["groups"].values()) for r in result["balance"]) == [2, 3]
    assert {r["groups"].get("y", 0) for r in result["balance"]} == {1}


@pytest.mark.parametrize("content,argv,needle", [
    (None, ["--stratify", "group"], "no group from the case ids"),
    ("patient_id,site\nX,1\n", ["--groups", "G"], "columns 'patient_id' and 'group'"),
    ("patient_id,group\nSYN0001,a\nSYN0001,b\n", ["--groups", "G"], "has two groups"),
    ("patient_id,group\nSYN0001,\n", ["--groups", "G"], "lacks a patient_id or a group"),
    ("patient_id,group\nSYN0001,a\n", ["--groups", "G"], "no group in"),
    ("patient_id,group\n", ["--groups", "G", "--stratify", "slices"], "drop --stratify"),
    (None, ["--groups", "G"], "cannot be read"),
])
def test_bad_groups_are_one_clear_line(tiny_data, tmp_path, capsys, content, argv, needle):
    csv = tmp_path / "g.csv"
    if content is not None:
        csv.write_text(content)
    out = tmp_path / "splits.json"
    argv = [str(csv) if a == "G" else a for a in argv]
    assert main(["split", str(tiny_data), "--folds", "2", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()
