"""Cross-validated Hyperband: per-fold checkpoints, promotion, leakage, failures."""

import json
from pathlib import Path

import pytest

from lvseg_search.data import splits
from lvseg_search.engine.run import CHECKPOINT, RESULT
from lvseg_search.search import run_search

TINY = Path(__file__).parent / "spaces" / "tiny.toml"




def _trial_dirs(out):
    return {p.name.removeprefix("trial_"): p for p in (out / "tuner").glob("trial_*")}


def test_two_fold_search_keeps_folds_apart_and_resumes_promotions(tiny_run):
    from lvseg_search.engine.run import summarize_trials

    out = tiny_run  # 2 folds, 1 test patient, max_epochs 2, factor 2, 3 steps an epoch
    summary = summarize_trials(out)
    assert json.loads((out / "search.json").read_text())["steps_per_epoch"] == 3
    split = splits.load(out / "splits.json")
    assert len(split["folds"]) == 2 and len(split["test"]) == 1
    completed = summary["completed"]
    assert len(completed) >= 4 and not summary["failed"]
    promoted = 0
    for row in completed:
        tdir = _trial_dirs(out)[row["trial_id"]]
        scores = []
        for k in range(2):
            fold = tdir / f"fold_{k}"
            assert (fold / CHECKPOINT).is_file()
            result = json.loads((fold / RESULT).read_text())
            assert result["fold"] == k and result["steps_per_epoch"] == 3
            train, val = set(result["train_patients"]), set(result["val_patients"])
            assert train and val and not train & val
            assert not (train | val) & set(split["test"])
            assert sorted(val) == split["folds"][k]["val"]
            assert 0 < result["first_batch_seconds"] <= result["batch_seconds"]
            hp = row["hyperparameters"]
            assert result["initial_epoch"] == hp["tuner/initial_epoch"]
            assert len(result["history"]["val_dice"]) == hp["tuner/epochs"] - hp[
                "tuner/initial_epoch"]
            if "tuner/trial_id" in hp:
                parent = hp["tuner/trial_id"]
                assert result["resumed_from"] == f"trial_{parent}/fold_{k}/{CHECKPOINT}"
                assert (out / "tuner" / result["resumed_from"]).is_file()
                parent_result = json.loads((out / "tuner" / f"trial_{parent}" / f"fold_{k}"
                                            / RESULT).read_text())
                assert parent_result["epochs"] == result["initial_epoch"]
                promoted += 1
            else:
                assert result["resumed_from"] is None
            scores.append(row["metrics"][f"val_dice_fold_{k}"])
        assert row["score"] == pytest.approx(sum(scores) / 2, abs=1e-6)
    assert promoted >= 2  # one promoted trial, two folds


def test_hyperband_rungs_anneal_and_a_promotion_restarts_the_rate(tiny_data, tmp_path):
    from lvseg_search.engine.run import load_run
    from lvseg_search.model.schedule import COSINE_FLOOR

    space = tmp_path / "cosine.toml"
    space.write_text(TINY.read_text().replace(
        "[search]", 'lr_schedule = { values = ["cosine"] }\n\n[search]'))
    out = tmp_path / "run"
    run_search(tiny_data, out, str(space), folds=2, test_patients=1, max_epochs=4, factor=2,
               min_epochs=2, image_size=32, batch_size=4, steps_per_epoch=2, seed=1,
               verbose=False)
    run = load_run(out)
    assert run.options.lr_per_rung
    promoted = 0
    for tid, trial in run.trials.items():
        hp = trial.hyperparameters.values
        for result in run.fold_results(tid):
            rates = result["history"]["learning_rate"]
            # Every rung starts at the trial's rate and ends decayed, whichever rung.
            assert rates[0] == pytest.approx(hp["learning_rate"], rel=1e-5)
            assert rates[-1] < hp["learning_rate"] * 0.6
            assert rates[-1] > hp["learning_rate"] * COSINE_FLOOR
        promoted += "tuner/trial_id" in hp
    assert promoted >= 1


def _as_unversioned(record: dict) -> dict:
    """A current search.json as the package wrote it before its schema had a version:
    the augmentation's settings as flat augment_* keys."""
    record = dict(record)
    del record["schema_version"]
    record.update({f"augment_{k}": v for k, v in record.pop("augmentation").items()})
    return record


def test_rerun_with_other_options_is_refused(tiny_data, tmp_path):
    from lvseg_search.errors import UserError

    out = tmp_path / "run"
    run_search(tiny_data, out, str(TINY), folds=2, max_epochs=1, factor=2, image_size=32,
               batch_size=4, verbose=False)
    with pytest.raises(UserError, match="other options"):
        run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, factor=2, image_size=32,
                   batch_size=4, verbose=False)
    # A run written before steps_per_epoch existed trained one pass per epoch, one
    # before training views around the LV around the image centre, one before
    # --min-epochs keras-tuner's 1-epoch rung, one before rungs restarted the schedule
    # one decay over max_epochs: the same command resumes it (nothing left to run),
    # another step count or shortest rung does not.
    record = out / "search.json"
    options = _as_unversioned(json.loads(record.read_text()))
    assert options["augment_offset_mm"] > 0 and options["lr_per_rung"] is True
    del options["steps_per_epoch"], options["augment_offset_mm"], options["min_epochs"]
    del options["lr_per_rung"]
    record.write_text(json.dumps(options))
    summary = run_search(tiny_data, out, str(TINY), folds=2, max_epochs=1, factor=2,
                         image_size=32, batch_size=4, verbose=False)
    assert summary["completed"] and not summary["failed"]
    from lvseg_search.engine.run import read_options
    assert read_options(out, "").pipeline().training().augmentation.offset_mm == 0.0
    # Resumed, the folder's record stays as written: readers upgrade it.
    assert "schema_version" not in json.loads(record.read_text())
    assert read_options(out, "").lr_per_rung is False
    with pytest.raises(UserError, match=r"other options \(steps_per_epoch\)"):
        run_search(tiny_data, out, str(TINY), folds=2, max_epochs=1, factor=2, image_size=32,
                   batch_size=4, steps_per_epoch=2, verbose=False)
    with pytest.raises(UserError, match=r"other options \(max_epochs, min_epochs\)"):
        run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, min_epochs=2, factor=2,
                   image_size=32, batch_size=4, verbose=False)
    # One written with another default shortest rung (max_epochs / factor before three
    # brackets were the default) resumes with it; a --min-epochs given is compared.
    options = json.loads(record.read_text())
    record.write_text(json.dumps({**options, "min_epochs": 2, "max_epochs": 2}))
    run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, factor=2, image_size=32,
               batch_size=4, max_trials=1, verbose=False)
    assert json.loads(record.read_text())["min_epochs"] == 2
    with pytest.raises(UserError, match=r"other options \(min_epochs\)"):
        run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, min_epochs=1, factor=2,
                   image_size=32, batch_size=4, verbose=False)


def test_a_new_budget_extends_a_finished_search(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    options = dict(folds=2, max_epochs=2, factor=2, image_size=32, batch_size=4,
                   steps_per_epoch=1, recycle_every=None)
    first = run_search(tiny_data, out, str(TINY), max_trials=2, verbose=False, **options)
    assert first["n_trials"] == 2
    kept = {tid: (d / "trial.json").read_text() for tid, d in _trial_dirs(out).items()}
    capsys.readouterr()
    more = run_search(tiny_data, out, str(TINY), max_trials=4, **options)
    assert "resuming: 2 trial(s) already in" in capsys.readouterr().out
    assert more["n_trials"] == 4 and len(more["completed"]) == 4
    # The first two trials are kept as they were, not trained again.
    assert {tid: (_trial_dirs(out)[tid] / "trial.json").read_text() for tid in kept} == kept
    assert json.loads((out / "search.json").read_text())["max_trials"] == 4
    # The same budget again: nothing left to run.
    again = run_search(tiny_data, out, str(TINY), max_trials=4, verbose=False, **options)
    assert again["n_trials"] == 4
    # No cap: Hyperband's whole schedule; then a second iteration of it.
    whole = run_search(tiny_data, out, str(TINY), verbose=False, **options)["n_trials"]
    assert whole > 4
    assert run_search(tiny_data, out, str(TINY), verbose=False, **options)["n_trials"] == whole
    twice = run_search(tiny_data, out, str(TINY), hyperband_iterations=2, verbose=False,
                       **options)
    assert twice["n_trials"] > whole and not twice["failed"]
    assert json.loads((out / "search.json").read_text())["hyperband_iterations"] == 2


@pytest.mark.parametrize(("precision", "jit"), [("mixed_bfloat16", False),
                                                ("mixed_float16", False), ("float32", True)])
def test_precision_and_jit_options_train_every_fold(tiny_data, tmp_path, precision, jit):
    import math
    import warnings

    import keras

    from lvseg_search.engine.run import load_run

    out = tmp_path / "run"
    # Two trials: the session is cleared between them, which resets Keras's dtype policy.
    summary = run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, factor=2,
                         max_trials=2, image_size=32, batch_size=4, steps_per_epoch=2, seed=0,
                         precision=precision, jit=jit, verbose=False)
    assert len(summary["completed"]) == 2 and not summary["failed"]
    assert all(0.0 <= t["score"] <= 1.0 for t in summary["completed"])
    results = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/fold_*/" + RESULT)]
    assert len(results) == 4
    for r in results:
        assert r["dtype_policy"] == precision and r["jit_compile"] is jit
        assert all(math.isfinite(v) for v in r["history"]["loss"] + r["history"]["val_dice"])
    # A process-wide Keras setting: the search puts it back for the caller.
    assert keras.mixed_precision.dtype_policy().name == "float32"
    # Reports and exports load the fold models (and their optimizer's state, which
    # mixed_float16 wraps in loss scaling) without Keras skipping anything, in float32.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network = load_run(out).fold_network(summary["completed"][0]["trial_id"], 1)
    assert not [w for w in caught if "Skipping" in str(w.message)]
    assert network.dtype_policy.name == "float32"


def test_search_with_a_splits_file_records_its_folds_and_refuses_conflicts(tiny_data,
                                                                          tmp_path):
    from lvseg_search.data import manifest
    from lvseg_search.errors import UserError

    counts = {p["patient_id"]: p["slices"] for p in manifest.load(tiny_data)["patients"]}
    mine = splits.make_splits(counts, 2, test_patients=1, seed=5)
    path = tmp_path / "mine.json"
    splits.save(path, mine)
    out = tmp_path / "run"
    common = dict(max_epochs=1, factor=2, max_trials=1, image_size=32, batch_size=4,
                  steps_per_epoch=2, verbose=False)
    with pytest.raises(UserError, match="--splits: .*drop --folds"):
        run_search(tiny_data, out, str(TINY), splits_file=path, folds=3, **common)
    assert not out.exists()
    run_search(tiny_data, out, str(TINY), splits_file=path, **common)
    record = json.loads((out / "search.json").read_text())
    assert record["folds"] == 2 and record["test_ids"] == mine["test"]
    used = splits.load(out / "splits.json")
    assert (used["folds"], used["test"]) == (mine["folds"], mine["test"])
    results = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/fold_*/" + RESULT)]
    assert sorted(r["val_patients"] for r in results) == sorted(f["val"] for f in mine["folds"])
    # The same command resumes; other splits for this run folder are refused.
    assert run_search(tiny_data, out, str(TINY), splits_file=path, **common)["completed"]
    other = splits.make_splits(counts, 2, test_patients=1, seed=6)
    assert (other["folds"], other["test"]) != (mine["folds"], mine["test"])
    splits.save(path, other)
    with pytest.raises(UserError, match="differs from the splits of the search"):
        run_search(tiny_data, out, str(TINY), splits_file=path, **common)


def test_search_draws_test_patients_with_their_own_seed_and_stratifies(tiny_data, tmp_path,
                                                                       capsys):
    from lvseg_search.data import manifest
    from lvseg_search.errors import UserError

    data = manifest.open_data(tiny_data)
    common = dict(folds=2, test_patients=1, max_epochs=1, factor=2, max_trials=1,
                  image_size=32, batch_size=4, steps_per_epoch=1)
    groups = tmp_path / "groups.csv"
    groups.write_text("patient_id,group\n" + "".join(
        f"{p},{'a' if i % 2 else 'b'}\n" for i, p in enumerate(data.patient_ids)))
    out = tmp_path / "run"
    run_search(tiny_data, out, str(TINY), seed=3, test_seed=4, groups_file=groups, **common)
    assert "fold patients slices  groups" in capsys.readouterr().out  # the balance, printed
    record = json.loads((out / "search.json").read_text())
    assert (record["test_seed"], record["stratify"]) == (4, "group")
    used = splits.load(out / "splits.json")
    expected = splits.make_splits(data.slice_counts, 2, test_patients=1, seed=3, test_seed=4,
                                  groups={p: g for p, g in (line.split(",") for line in
                                          groups.read_text().split()[1:])})
    assert used == expected and used["balance"][0]["groups"]
    # Another fold seed keeps the test patient.
    other = run_search(tiny_data, tmp_path / "other", str(TINY), seed=8, test_seed=4,
                       verbose=False, **common)
    assert other["completed"]
    assert splits.load(tmp_path / "other" / "splits.json")["test"] == used["test"]
    # The phantom's ids name no cohort: stratifying by group needs a groups file.
    with pytest.raises(UserError, match="no group from the case ids"):
        run_search(tiny_data, tmp_path / "nogroups", str(TINY), stratify="group", **common)
    assert not (tmp_path / "nogroups").exists()


def test_run_folder_keeps_its_space_for_report_export_and_workers(tiny_data, tmp_path,
                                                                   monkeypatch):
    import shutil

    from lvseg_search.engine.run import load_run
    from lvseg_search.errors import UserError

    mine = tmp_path / "spaces" / "mine.toml"
    mine.parent.mkdir()
    shutil.copyfile(TINY, mine)
    monkeypatch.chdir(mine.parent)  # the space given as a path relative to here
    out = tmp_path / "run"
    common = dict(folds=2, max_epochs=1, factor=2, max_trials=1, image_size=32, batch_size=4,
                  steps_per_epoch=2, verbose=False)
    run_search(tiny_data, out, "mine.toml", **common)
    assert json.loads((out / "search.json").read_text())["space"] == str(mine)
    assert (out / "space.toml").read_bytes() == mine.read_bytes()
    # The same command resumes.
    assert run_search(tiny_data, out, "mine.toml", **common)["completed"]
    # Elsewhere, with the original gone (another folder or machine), the run reads its copy.
    monkeypatch.chdir(tmp_path)
    mine.unlink()
    space = load_run(out).space
    assert space.name == "mine" and space.digest == json.loads(
        (out / "search.json").read_text())["space_digest"]
    # A run folder from before the copy falls back on the file, if it is unchanged.
    (out / "space.toml").unlink()
    mine.write_text(TINY.read_text().replace("1e-2", "2e-2"))
    with pytest.raises(UserError, match="changed since the search"):
        _ = load_run(out).space
    mine.unlink()
    with pytest.raises(UserError, match="search space .*mine.toml is not there"):
        _ = load_run(out).space


def test_a_moved_data_folder_is_found_again_with_data(tiny_data, tmp_path, capsys):
    import shutil

    from lvseg_search.cli import main
    from lvseg_search.data.phantom import synth
    from lvseg_search.engine.run import load_run
    from lvseg_search.errors import UserError
    from lvseg_search.prepare import prepare

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = tmp_path / "run"
    common = dict(folds=2, max_epochs=1, factor=2, max_trials=1, image_size=32, batch_size=4,
                  steps_per_epoch=1, verbose=False)
    run_search(data, out, str(TINY), **common)
    moved = data.rename(tmp_path / "moved")
    # Without --data: one line naming the folder and the option; nothing written.
    model = tmp_path / "model"
    for argv in (["report", out], ["export", out, "--out", model, "--no-onnx", "--ensemble"]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(data) in err and "--data" in err
    assert not (out / "report.html").exists() and not model.exists()
    # Other data under the same patient ids is refused.
    synth(tmp_path / "other_phantom", 5, seed=12, size=32, progress=False)
    other = tmp_path / "other"
    prepare(tmp_path / "other_phantom", other, progress=False)
    assert main(["report", str(out), "--no-overlays", "--data", str(other)]) == 2
    assert "holds other data" in capsys.readouterr().err
    # With --data both run.
    assert main(["report", str(out), "--data", str(moved)]) == 0
    assert main(["export", str(out), "--out", str(model), "--no-onnx", "--ensemble",
                 "--data", str(moved), "--no-tflite"]) == 0
    assert (out / "report.html").is_file() and (model / "model_card.json").is_file()
    # --no-tflite: no TFLite file, and none in the card's formats, parity or latency.
    card = json.loads((model / "model_card.json").read_text())
    assert not list(model.glob("*.tflite")) and (model / "model.keras").is_file()
    assert not any(name.endswith(".tflite") for name in card["formats"])
    assert set(card["parity_max_abs_diff"]) == {"saved_model", "keras_file"}
    assert set(card["latency"]["single_image_ms"]) == {"saved_model"}
    # The search resumes from the new place and records it; other data is refused.
    run_search(moved, out, str(TINY), **common)
    assert json.loads((out / "search.json").read_text())["data"] == str(moved.resolve())
    # Other data: refused (the grid chosen from it differs too).
    with pytest.raises(UserError, match=r"other options \(data[,)]"):
        run_search(other, out, str(TINY), **common)
    # A run folder from before the data's digest was kept: its patients must be there.
    record = json.loads((out / "search.json").read_text())
    del record["data_digest"]
    (out / "search.json").write_text(json.dumps(record))
    assert load_run(out, moved).data_dir == moved.resolve()
    lacking = tmp_path / "lacking"
    shutil.copytree(moved, lacking)
    manifest = json.loads((lacking / "manifest.json").read_text())
    manifest["patients"] = manifest["patients"][1:]
    (lacking / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="holds other data"):
        load_run(out, lacking)


def test_out_of_memory_marks_the_trial_failed_and_the_search_goes_on(tiny_data, tmp_path,
                                                                     monkeypatch):
    import keras
    import tensorflow as tf

    fit = keras.Model.fit

    def fit_or_oom(self, *args, **kwargs):
        # Stand-in for a GPU running out of memory on the larger networks.
        if self.count_params() > 3000:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_or_oom)
    summary = run_search(tiny_data, tmp_path / "run", str(TINY), folds=2, max_epochs=2,
                         factor=2, image_size=32, batch_size=4, seed=3, verbose=False)
    assert summary["failed"] and summary["completed"]
    assert all("out of memory" in f["message"] for f in summary["failed"])


def test_nan_loss_marks_the_trial_failed_and_the_search_goes_on(tiny_data, tmp_path):
    summary = run_search(tiny_data, tmp_path / "run", str(Path(__file__).parent / "spaces"
                                                          / "diverging.toml"),
                         folds=2, max_epochs=2, factor=2, image_size=32, batch_size=4, seed=0,
                         verbose=False)
    failed_lrs = set()
    for f in summary["failed"]:
        assert "NaN" in f["message"]
    trials = {t["trial_id"]: t for t in summary["completed"]}
    assert trials and summary["failed"]
    assert all(t["hyperparameters"]["learning_rate"] == 0.01 for t in trials.values())
    for f in summary["failed"]:
        trial = json.loads((tmp_path / "run" / "tuner" / f"trial_{f['trial_id']}"
                            / "trial.json").read_text())
        failed_lrs.add(trial["hyperparameters"]["values"]["learning_rate"])
    assert failed_lrs == {1000.0}


def _kill_then_resume(cmd: list[str], out: Path, *markers: Path) -> dict[Path, int]:
    """Runs a search command and SIGKILLs it once the first of ``markers`` exists, runs
    it again and kills it at the next one, and so on; then runs it to the end, and checks
    that no fold finished before a kill was trained again.

    Returns:
        The fold results finished before the last kill (path -> mtime).
    """
    import os
    import signal
    import subprocess
    import time

    finished: dict[Path, int] = {}
    for marker in markers:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert marker.exists(), f"the search never finished {marker}"
        now = {p: p.stat().st_mtime_ns for p in out.glob("tuner/trial_*/fold_*/" + RESULT)}
        for path, stamp in finished.items():
            assert now[path] == stamp, f"{path} was trained again"
        finished = now
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for path, stamp in finished.items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was trained again"
    return finished


def test_killed_search_resumes_losing_at_most_the_fold_in_progress(tiny_data, tmp_path):
    """Killed in screening, then in the final stage: each resume loses at most the fold
    in progress; the finalist continues its configuration's longest trial to the final
    budget and ranks first."""
    import sys

    from lvseg_search.engine.final_stage import configuration, rank_configurations
    from lvseg_search.engine.run import load_run
    from lvseg_search.reporting.table import trial_table

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lvseg_search", "search", "--data", str(tiny_data),
           "--space", str(TINY), "--out", str(out), "--folds", "2", "--max-epochs", "2",
           "--factor", "2", "--image-size", "32", "--batch-size", "4", "--finalists", "2",
           "--final-epochs", "3", "--quiet"]
    tuner = out / "tuner"
    finished = _kill_then_resume(cmd, out, tuner / "trial_0001" / "fold_0" / RESULT,
                                 tuner / "trial_0005" / "fold_0" / RESULT)
    assert len(finished) < 14  # killed before the end
    run = load_run(out)
    assert len(run.trials) == 7 and all(t.status == "COMPLETED" for t in run.trials.values())
    assert len(list(out.glob("tuner/trial_*/fold_*/" + RESULT))) == 14
    final = run.trials["0005"]
    values = final.hyperparameters.values
    screening = [t for tid, t in run.trials.items() if tid not in ("0005", "0006")]
    ranking = [key for key, _ in rank_configurations(screening)]
    assert configuration(values) == ranking[0]
    assert configuration(run.trials["0006"].hyperparameters.values) == ranking[1]
    parent = values["tuner/trial_id"]
    parent_values = run.trials[parent].hyperparameters.values
    # It continues the longest screening trial of its configuration.
    assert configuration(parent_values) == configuration(values)
    assert parent_values["tuner/epochs"] == max(
        t.hyperparameters.values["tuner/epochs"] for t in screening
        if configuration(t.hyperparameters.values) == configuration(values))
    assert (values["tuner/final"], values["tuner/epochs"], values["tuner/initial_epoch"]) == (
        1, 3, parent_values["tuner/epochs"])
    for k, result in enumerate(run.fold_results("0005")):
        assert result["fold"] == k and result["initial_epoch"] == values["tuner/initial_epoch"]
        assert result["resumed_from"] == f"trial_{parent}/fold_{k}/{CHECKPOINT}"
        assert len(result["history"]["val_dice"]) == 3 - values["tuner/initial_epoch"]
    # The search's result is read from the final stage: its trials rank first.
    table = trial_table(run)
    assert list(table["stage"]) == ["final"] * 2 + ["screening"] * 5
    assert set(table["trial"][:2]) == {"0005", "0006"} and set(table["epochs"][:2]) == {3}
    assert json.loads((out / "search.json").read_text())["finalists"] == 2
    # HParams tells the stages apart.
    from lvseg_search.engine.hparams import read_logs

    _, sessions, _ = read_logs(out / "tensorboard")
    assert sessions["trial_0005"].hparams["stage"].string_value == "final"
    assert sessions["trial_0005"].hparams["epochs"].number_value == 3
    assert sessions["trial_0000"].hparams["stage"].string_value == "screening"
    # The finalists' out-of-fold ensemble, against the best of them, as the report shows.
    from lvseg_search.engine.finalist_ensemble import finalist_ensemble
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import choose
    from lvseg_search.evaluate.ensemble import beats
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.reporting.best_trial import ensemble_section

    validation = [load_patient_images(run.data, f["val"]) for f in run.splits["folds"]]
    result = finalist_ensemble(run, validation)
    best = table["trial"].iloc[0]
    decided = choose(out_of_fold_decisions(run, best))
    single, ensemble = result["single"], result["ensemble"]
    assert single["trial"] == best
    # The single figure is the export's: the decided row of the out-of-fold table.
    assert single["cv_dice"] == pytest.approx(decided["cv_dice"], abs=1e-6)
    assert set(ensemble["weights"]) <= {"0005", "0006"} and ensemble["cv_dice"] >= (
        single["cv_dice"] - 1e-9)
    assert len(ensemble["nested_weights"]) == 2
    assert 0.0 <= ensemble["nested_cv_dice"] <= 1.0 and 0.0 <= single["nested_cv_dice"] <= 1.0
    assert result["delivers"] == ("ensemble" if beats(ensemble["cv_dice"], single["cv_dice"])
                                  else "single")
    # Kept in the run folder and used again while its inputs are unchanged.
    kept = json.loads((out / "finalist_ensemble.json").read_text())
    assert kept["finalists"] == list(table["trial"][:2]) and kept["result"] == result
    assert finalist_ensemble(run, validation) == result
    title, _, frame = ensemble_section(result)
    assert "finalists" in title and len(frame) == 2
    assert list(frame["delivered"]).count("yes") == 1
    import numpy as np

    # Export delivers it (forced here: on five phantom patients either may win) as one
    # graph: the members' fold models, weighted, in every format.
    from lvseg_search.export import export
    from lvseg_search.model.formats import saved_model_runner
    from lvseg_search.model.serving import make_predictor

    # (ONNX, the slowest format to write, is checked on the real subset's ensemble by
    # benchmarks/export_predict.py.)
    card = export(out, tmp_path / "model", deliver="ensemble", members="folds", verbose=False,
                  onnx=False)
    delivered = card["finalist_ensemble"]
    assert delivered["delivered"] and delivered["delivered_by"] == "--deliver ensemble"
    assert delivered["ensemble"] == result["ensemble"]  # the report's figures
    members = card["training"]["members"]
    counts = result["ensemble"]["weights"]
    assert [m["trial"] for m in members] == list(counts)
    assert [m["weight"] for m in members] == pytest.approx(
        [c / sum(counts.values()) for c in counts.values()])
    assert card["training"]["mode"] == "finalist_ensemble"
    assert card["training"]["models"] == 2 * len(members)
    assert set(card["parity_max_abs_diff"]) >= {"saved_model", "keras_file", "tflite"}
    assert all(r["mask_mismatch_pixels"] == 0 for r in card["parity_max_abs_diff"].values())
    assert set(card["latency"]["single_image_ms"]) >= {"saved_model", "tflite"}
    # Its probabilities are the members' fold models' weighted mean (a given centre:
    # the located one would follow the ensemble's own probabilities).
    o = run.options
    patient = validation[0][0]
    raw, spacing = patient.images[:3], patient.spacing_mm[:3].astype(np.float32)
    centre = np.zeros((3, 2), np.float32)
    tta = delivered["setting"]["tta"]
    expected = sum(
        m["weight"] / run.n_folds * make_predictor(
            [run.fold_network(m["trial"], k)], o.image_size, o.normalization,
            o.spacing_mm, tta=tta)(raw, spacing, centre)["probabilities"]
        for m in members for k in range(run.n_folds))
    served = saved_model_runner(tmp_path / "model" / "saved_model")(raw, spacing, centre)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    assert card["training"]["members_from"] == "folds"
    # By default (--members retrained) the same members and weights, each one network
    # retrained on every non-test patient for the epochs it was scored at.
    retrained = export(out, tmp_path / "retrained", deliver="ensemble", verbose=False,
                       onnx=False, tflite=False)
    training = retrained["training"]
    assert training["members_from"] == "retrained" and training["models"] == len(members)
    assert [(m["trial"], m["weight"], m["epochs"]) for m in training["members"]] == [
        (m["trial"], m["weight"], m["epochs"]) for m in members]
    assert all(m["steps_per_epoch"] >= 1 for m in training["members"])
    assert retrained["finalist_ensemble"]["ensemble"] == result["ensemble"]
    assert all(r["mask_mismatch_pixels"] == 0
               for r in retrained["parity_max_abs_diff"].values())
    # A finalist that failed is left out of the ensemble, and the report says why.
    from lvseg_search.engine.finalist_ensemble import finalists, left_out

    record = out / "tuner" / "trial_0006" / "trial.json"
    trial = json.loads(record.read_text())
    record.write_text(json.dumps({**trial, "status": "FAILED",
                                  "message": "fold 1: loss became NaN in epoch 3"}))
    failed_run = load_run(out)
    assert finalists(failed_run) == ["0005"]
    assert left_out(failed_run) == [{"trial": "0006", "status": "FAILED",
                                     "reason": "fold 1: loss became NaN in epoch 3"}]
    _, note, _ = ensemble_section({**result, "left_out": left_out(failed_run)})
    assert "Left out: finalist 0006, failed (fold 1: loss became NaN in epoch 3)." in note


def test_search_command_on_the_real_subset(real_run):
    out, proc = real_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout  # trials run in a recycled child process: the real stdout
    assert "fold 3/3" in printed and "epoch 1/1" in printed and "best CV Dice" in printed
    assert "1 trials completed, 0 failed" in printed
    results = [json.loads(p.read_text()) for p in sorted(out.glob("tuner/trial_*/fold_*/"
                                                                  + RESULT))]
    assert len(results) == 3 and all(r["steps_per_epoch"] == 2 for r in results)
    assert sorted(v for r in results for v in r["val_patients"]) == [
        "SCD0000101", "SCD0000201", "SCD0000301"]


def test_demo_runs_every_stage(tmp_path, monkeypatch, capsys):
    from lvseg_search import demo

    monkeypatch.setitem(demo.DEMO, "patients", 4)
    monkeypatch.setitem(demo.DEMO, "phases", 2)
    monkeypatch.setitem(demo.DEMO, "size", 32)
    monkeypatch.setitem(demo.DEMO, "image_size", 32)
    monkeypatch.setitem(demo.DEMO, "folds", 2)
    monkeypatch.setitem(demo.DEMO, "test_patients", 1)
    monkeypatch.setitem(demo.DEMO, "max_epochs", 1)
    monkeypatch.setitem(demo.DEMO, "final_epochs", 2)
    assert demo.run_demo(tmp_path / "demo") == 0
    printed = capsys.readouterr().out
    for stage in ("[1/6] synth", "[2/6] prepare", "[3/6] search", "[4/6] report",
                  "[5/6] export", "[6/6] predict", "best trial", "held-out test patients"):
        assert stage in printed
    assert (tmp_path / "demo" / "data" / "manifest.json").is_file()
    assert len(splits.load(tmp_path / "demo" / "search" / "splits.json")["test"]) == 1
    assert (tmp_path / "demo" / "search" / "report.html").is_file()
    assert (tmp_path / "demo" / "model" / "model_card.json").is_file()
    assert (tmp_path / "demo" / "predictions" / "studies.json").is_file()
    # The default network screened first, then the final stage, whose best is exported.
    from lvseg_search.engine.final_stage import configuration
    from lvseg_search.engine.run import best_trial, load_run
    from lvseg_search.model.space import load_space

    run = load_run(tmp_path / "demo" / "search")
    first = run.trials[min(run.trials)].hyperparameters.values
    assert configuration(first) == tuple(sorted(load_space("quick").default.items()))
    final = [t for t in run.trials.values() if t.hyperparameters.values.get("tuner/final")]
    assert 1 <= len(final) <= 2 and best_trial(run) in final
    card = json.loads((tmp_path / "demo" / "model" / "model_card.json").read_text())
    assert card["search"]["trial"] == best_trial(run).trial_id
    report = (tmp_path / "demo" / "search" / "report.md").read_text()
    assert "Baseline: the space's default network, trial" in report
    assert "| rank | trial | stage |" in report
    assert f"| 1 | {best_trial(run).trial_id} | final" in report


def test_recycled_search_runs_its_trials_in_fresh_processes(tiny_data, tmp_path):
    import multiprocessing
    import os

    out = tmp_path / "run"
    # 4 trials, 2 per process: exactly 2 processes (none started only to find the
    # search over).
    summary = run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, factor=2,
                         max_trials=4, image_size=32, batch_size=4, seed=1, verbose=False,
                         recycle_every=2)
    log = summary["trial_log"]
    assert [t["trial_id"] for t in log] == ["0", "1", "2", "3"]
    pids = [t["pid"] for t in log]
    assert pids[0] == pids[1] != pids[2] == pids[3] and os.getpid() not in pids
    assert summary["processes"] == 2
    # The second child was started (to load TensorFlow) while the first ran its last
    # trial, not after it; no child is left (none was started for trials past the cap).
    first, second = summary["process_times"]
    assert second["started"] < first["finished"]
    assert not multiprocessing.active_children()
    assert len(summary["completed"]) == 4 and not summary["failed"]
    # The promoted trial resumed from a checkpoint written by another process.
    pid_of = {t["trial_id"]: t["pid"] for t in log}
    promoted = [t for t in summary["completed"] if "tuner/trial_id" in t["hyperparameters"]]
    assert promoted and all(pid_of[t["trial_id"]] != pid_of[t["hyperparameters"]["tuner/trial_id"]]
                            for t in promoted)


def test_recycled_search_with_bad_options_stops_its_early_child(tiny_data, tmp_path):
    import multiprocessing

    from lvseg_search.errors import UserError

    # The first child starts before the options are checked; a bad option must end it
    # at once and leave no run folder.
    with pytest.raises(UserError, match="--factor"):
        run_search(tiny_data, tmp_path / "run", str(TINY), factor=1, verbose=False,
                   recycle_every=2)
    assert not (tmp_path / "run").exists()
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("value", ["0", "3"])
def test_min_epochs_out_of_range_is_one_line(tiny_data, tmp_path, capsys, value):
    from lvseg_search.cli import main

    out = tmp_path / "run"
    assert main(["search", "--data", str(tiny_data), "--space", str(TINY), "--out", str(out),
                 "--max-epochs", "2", "--min-epochs", value, "--recycle-every", "0",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--min-epochs" in err and "--max-epochs" in err
    assert not out.exists()


def test_min_epochs_reaches_the_oracle_and_the_record(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_search(tiny_data, out, str(TINY), folds=2, max_epochs=2, min_epochs=2, factor=2,
               image_size=32, batch_size=4, steps_per_epoch=1, verbose=False,
               recycle_every=None)
    epochs = [json.loads((d / "trial.json").read_text())["hyperparameters"]["values"]
              ["tuner/epochs"] for d in _trial_dirs(out).values()]
    # Only the bracket of 2-epoch trials: keras-tuner's own would start with 1-epoch ones.
    assert epochs and set(epochs) == {2}
    assert json.loads((out / "search.json").read_text())["min_epochs"] == 2


def test_the_same_seed_samples_the_same_hyperparameters(tiny_data, tmp_path):
    # keras-tuner takes a seed of 0 for "none": the default --seed 0 must still fix the
    # search (it sampled other hyperparameters at every run).
    options = dict(folds=2, max_epochs=1, factor=2, image_size=32, batch_size=4,
                   steps_per_epoch=1, max_trials=2, verbose=False, recycle_every=None)

    def sampled(name: str, seed: int) -> list[dict]:
        run_search(tiny_data, tmp_path / name, str(TINY), seed=seed, **options)
        return [json.loads((d / "trial.json").read_text())["hyperparameters"]["values"]
                for _, d in sorted(_trial_dirs(tmp_path / name).items())]

    first = sampled("a", 0)
    assert sampled("b", 0) == first
    assert sampled("c", 1) != first


def test_weight_seeds_stay_in_numpys_range():
    from lvseg_search.engine.tuner import weights_seed

    assert weights_seed(3, "0005") == 3 * 100003 + 5  # small seeds: as before
    assert 0 <= weights_seed(2**32 - 2, "19") < 2**32


@pytest.mark.parametrize("oracle", ["random", "bayesian"])
def test_every_oracle_cross_validates_and_resumes_after_a_kill(oracle, tiny_data, tmp_path):
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lvseg_search", "search", "--data", str(tiny_data),
           "--space", str(TINY), "--out", str(out), "--oracle", oracle, "--max-trials", "3",
           "--folds", "2", "--max-epochs", "2", "--image-size", "32", "--batch-size", "4",
           "--steps-per-epoch", "2", "--recycle-every", "0", "--quiet"]
    _kill_then_resume(cmd, out, out / "tuner" / "trial_1" / "fold_0" / RESULT)
    record = json.loads((out / "search.json").read_text())
    assert (record["oracle"], record["max_trials"]) == (oracle, 3)
    trials = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/trial.json")]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    for t in trials:
        # No Hyperband bookkeeping: every trial trains the whole budget from scratch.
        assert not any(k.startswith("tuner/") for k in t["hyperparameters"]["values"])
        folds = sorted((out / "tuner" / f"trial_{t['trial_id']}").glob("fold_*"))
        assert len(folds) == 2
        for k, fold in enumerate(folds):
            assert (fold / CHECKPOINT).is_file()
            result = json.loads((fold / RESULT).read_text())
            assert result["initial_epoch"] == 0 and len(result["history"]["val_dice"]) == 2
            assert f"val_dice_fold_{k}" in t["metrics"]["metrics"]


def test_the_fixed_oracle_trains_the_spaces_default_network(tiny_data, tmp_path):
    from lvseg_search.errors import UserError

    common = dict(folds=2, max_epochs=2, image_size=32, batch_size=4, steps_per_epoch=1,
                  verbose=False)
    with pytest.raises(UserError, match="--oracle fixed: the space 'tiny' .* no \\[default\\]"):
        run_search(tiny_data, tmp_path / "none", str(TINY), oracle="fixed", **common)
    assert not (tmp_path / "none").exists()
    space = tmp_path / "tiny_default.toml"
    space.write_text(TINY.read_text() + "\n[default]\ndepth = 2\nbase_filters = 4\n"
                     'downsampling = "strided_conv"\ndecoder = "unet"\nlearning_rate = 5e-3\n')
    summary = run_search(tiny_data, tmp_path / "run", str(space), oracle="fixed", **common)
    assert summary["n_trials"] == 1 and len(summary["completed"]) == 1
    values = summary["completed"][0]["hyperparameters"]
    assert (values["depth"], values["base_filters"], values["downsampling"],
            values["decoder"], values["learning_rate"]) == (2, 4, "strided_conv", "unet", 5e-3)
    assert json.loads((tmp_path / "run" / "search.json").read_text())["oracle"] == "fixed"
    assert len(list((tmp_path / "run").glob("tuner/trial_*/fold_*/" + RESULT))) == 2


@pytest.mark.parametrize("oracle", ["hyperband", "random"])
def test_include_default_makes_the_default_network_the_first_trial(oracle, tiny_data,
                                                                   tmp_path):
    from lvseg_search.errors import UserError

    common = dict(folds=2, max_epochs=2, factor=2, max_trials=2, image_size=32, batch_size=4,
                  steps_per_epoch=1, verbose=False, oracle=oracle, include_default=True)
    with pytest.raises(UserError, match="--include-default: the space 'tiny' .* no \\[default"):
        run_search(tiny_data, tmp_path / "none", str(TINY), **common)
    space = tmp_path / "tiny_default.toml"
    space.write_text(TINY.read_text() + "\n[default]\ndepth = 2\nbase_filters = 8\n"
                     'downsampling = "max_pool"\ndecoder = "transposed"\nlearning_rate = 4e-3\n')
    summary = run_search(tiny_data, tmp_path / "run", str(space), **common)
    by_id = {t["trial_id"]: t["hyperparameters"] for t in summary["completed"]}
    first = by_id[min(by_id)]
    assert (first["depth"], first["base_filters"], first["downsampling"], first["decoder"],
            first["learning_rate"]) == (2, 8, "max_pool", "transposed", 4e-3)
    assert len(by_id) == 2 and by_id[max(by_id)] != first  # then the oracle's own draws


def test_the_default_network_competes_unless_told_not_to(tiny_data, tmp_path):
    from lvseg_search.engine.options import resolve_options
    from lvseg_search.model.space import load_space

    space = tmp_path / "tiny_default.toml"
    space.write_text(TINY.read_text() + "\n[default]\ndepth = 2\nbase_filters = 8\n"
                     'downsampling = "max_pool"\ndecoder = "transposed"\nlearning_rate = 4e-3\n')
    with_default, without = load_space(str(space)), load_space(str(TINY))
    for oracle in ("hyperband", "random", "bayesian"):
        assert resolve_options(with_default, tiny_data, oracle=oracle).include_default
        assert not resolve_options(with_default, tiny_data, oracle=oracle,
                                   no_default=True).include_default
        # A space without a [default] simply has none in the race.
        assert not resolve_options(without, tiny_data, oracle=oracle).include_default
    fixed = resolve_options(with_default, tiny_data, oracle="fixed")
    assert not fixed.include_default and fixed.finalists == 0


@pytest.mark.parametrize(("argv", "words"), [
    (["--oracle", "random", "--max-trials", "2", "--finalists", "3"],
     ["--finalists", "3", "2 trials", "--max-trials"]),
    (["--max-epochs", "4", "--final-epochs", "4", "--finalists", "1"],
     ["--final-epochs", "4", "not above", "--max-epochs (4)"]),
    (["--finalists", "-1"], ["--finalists", "-1", "0 (no final stage)"]),
    (["--include-default", "--no-default"], ["--include-default", "--no-default"]),
])
def test_final_stage_options_out_of_range_are_one_line(tiny_data, tmp_path, capsys, argv,
                                                       words):
    from lvseg_search.cli import main

    out = tmp_path / "run"
    assert main(["search", "--data", str(tiny_data), "--space", str(TINY), "--out", str(out),
                 "--recycle-every", "0", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_finalists_default_to_three_capped_by_the_trials_screened(tiny_data):
    from lvseg_search.engine.options import resolve_options
    from lvseg_search.errors import UserError
    from lvseg_search.model.space import load_space

    space = load_space(str(TINY))
    # The test space asks for none, quick for one continued to 90 epochs after eight
    # screening trials; the package's own default (a space without them) is three, at
    # twice the screening's longest trial, continuing their screening trials.
    assert resolve_options(space, tiny_data).finalists == 0
    quick = load_space("quick")
    options = resolve_options(quick, tiny_data, max_epochs=4)
    assert (options.finalists, options.final_epochs, options.include_default,
            options.final_from, options.max_trials) == (1, 90, True, "screening", 8)
    assert resolve_options(quick, tiny_data, max_trials=3).max_trials == 3
    assert resolve_options(quick, tiny_data, oracle="fixed").max_trials == 1
    assert resolve_options(quick, tiny_data, final_from="scratch").final_from == "scratch"
    with pytest.raises(UserError, match="--final-from: unknown 'rung'; choose screening or "
                       "scratch"):
        resolve_options(quick, tiny_data, final_from="rung")
    lab = load_space("lab")  # no [search] finalists or final_epochs
    assert "finalists" not in lab.search and "final_epochs" not in lab.search
    unset = resolve_options(lab, tiny_data, max_epochs=4, oracle="random", max_trials=5)
    assert (unset.finalists, unset.final_epochs, unset.final_from) == (3, 8, "screening")
    assert resolve_options(quick, tiny_data, oracle="random", max_trials=1).finalists == 1
    assert resolve_options(quick, tiny_data, max_epochs=4, final_epochs=5).final_epochs == 5


def test_a_capped_search_screens_its_budget_then_its_finalists_and_more_extend_it(
        tiny_data, tmp_path):
    from lvseg_search.engine.final_stage import configuration

    out = tmp_path / "run"
    common = dict(folds=2, max_epochs=1, image_size=32, batch_size=4, steps_per_epoch=1,
                  oracle="random", max_trials=2, final_epochs=2, seed=2, verbose=False,
                  recycle_every=None)
    summary = run_search(tiny_data, out, str(TINY), finalists=1, **common)
    trials = {tid: json.loads((d / "trial.json").read_text())
              for tid, d in _trial_dirs(out).items()}
    assert len(trials) == 3 and summary["n_trials"] == 3
    values = {tid: t["hyperparameters"]["values"] for tid, t in trials.items()}
    screened = sorted((t["score"], tid) for tid, t in trials.items()
                      if not values[tid].get("tuner/final"))
    final = [tid for tid in trials if values[tid].get("tuner/final")]
    assert len(screened) == 2 and len(final) == 1
    # The finalist continues the better screened trial (random search: max_epochs each).
    best = screened[-1][1]
    assert values[final[0]]["tuner/trial_id"] == best
    assert values[final[0]]["tuner/initial_epoch"] == 1
    assert configuration(values[final[0]]) == configuration(values[best])
    assert summary["completed"][0]["trial_id"] == final[0]  # finalists rank first
    kept = {tid: (d / "trial.json").read_text() for tid, d in _trial_dirs(out).items()}
    # More finalists on the finished search: the one added trains, nothing else.
    more = run_search(tiny_data, out, str(TINY), finalists=2, **common)
    assert more["n_trials"] == 4
    added = {tid: d for tid, d in _trial_dirs(out).items() if tid not in kept}
    assert len(added) == 1
    new = json.loads((next(iter(added.values())) / "trial.json").read_text())
    assert new["hyperparameters"]["values"]["tuner/trial_id"] == screened[0][1]
    assert {tid: (_trial_dirs(out)[tid] / "trial.json").read_text() for tid in kept} == kept
    assert json.loads((out / "search.json").read_text())["finalists"] == 2


def test_finalists_from_scratch_train_a_new_network_with_one_decay(tiny_data, tmp_path):
    from lvseg_search.engine.final_stage import configuration
    from lvseg_search.model.schedule import rung_ends

    out = tmp_path / "run"
    run_search(tiny_data, out, str(TINY), folds=2, max_epochs=1, image_size=32,
               batch_size=4, steps_per_epoch=1, oracle="random", max_trials=1,
               finalists=1, final_epochs=3, final_from="scratch", seed=2, verbose=False,
               recycle_every=None)
    dirs = _trial_dirs(out)
    values = {tid: json.loads((d / "trial.json").read_text())["hyperparameters"]["values"]
              for tid, d in dirs.items()}
    final = [tid for tid, v in values.items() if v.get("tuner/final")]
    screened = [tid for tid in values if tid not in final]
    assert len(final) == 1 and len(screened) == 1
    finalist = values[final[0]]
    # No parent: a new initialization, every epoch trained, the schedule one decay to 3.
    assert "tuner/trial_id" not in finalist and finalist["tuner/initial_epoch"] == 0
    assert configuration(finalist) == configuration(values[screened[0]])
    for k in range(2):
        fold = json.loads((dirs[final[0]] / f"fold_{k}" / "result.json").read_text())
        assert (fold["initial_epoch"], fold["epochs"], fold["resumed_from"]) == (0, 3, None)
        assert len(fold["history"]["loss"]) == 3
    assert rung_ends(finalist, values.__getitem__, 1, per_rung=True) == [3]
    assert json.loads((out / "search.json").read_text())["final_from"] == "scratch"
