"""search -> report -> export -> predict on tiny synthetic data, and the HParams logs
read back with TensorBoard's own event reader."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lvseg_search.cli import main
from lvseg_search.search import run_search

TINY = Path(__file__).parent / "spaces" / "tiny.toml"


def test_tensorboard_holds_the_space_the_metrics_and_one_session_per_trial(tiny_run):
    from lvseg_search.engine.hparams import read_logs
    from lvseg_search.engine.run import completed_trials, load_run

    experiment, sessions, scalars = read_logs(tiny_run / "tensorboard")
    assert experiment is not None
    declared = {h.name: h for h in experiment.hparam_infos}
    for name in ("depth", "base_filters", "decoder", "downsampling", "learning_rate",
                 "epochs", "stage"):
        assert name in declared
    # What the space fixes is not a column of its own (the sessions still record it).
    assert not {"loss", "optimizer", "kernel_size", "normalization"} & set(declared)
    assert list(declared["depth"].domain_discrete.values) and declared["depth"]
    assert declared["learning_rate"].domain_interval.min_value == pytest.approx(1e-3)
    assert declared["learning_rate"].domain_interval.max_value == pytest.approx(1e-2)
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"cv_dice", "cv_dice_std", "dice_fold_0", "dice_fold_1", "apd_mm",
            "hausdorff_mm"} <= metrics

    run = load_run(tiny_run)
    trials = completed_trials(run)
    assert sorted(sessions) == sorted(f"trial_{t.trial_id}" for t in trials)
    for t in trials:
        name = f"trial_{t.trial_id}"
        hp = sessions[name].hparams
        assert hp["depth"].number_value == t.hyperparameters.values["depth"]
        assert hp["decoder"].string_value == t.hyperparameters.values["decoder"]
        assert hp["epochs"].number_value == t.hyperparameters.values["tuner/epochs"]
        assert hp["stage"].string_value == "screening"  # this search has no final stage
        assert scalars[name]["cv_dice"][-1][1] == pytest.approx(t.score, abs=1e-6)
        for k in range(2):
            curve = scalars[f"{name}/fold_{k}"]["epoch_val_dice"]
            result = run.fold_results(t.trial_id)[k]
            assert [v for _, v in curve] == pytest.approx(result["history"]["val_dice"])
            assert curve[-1][0] == t.hyperparameters.values["tuner/epochs"]


def test_report_ranks_trials_and_embeds_its_plots(tiny_run, capsys):
    assert main(["report", str(tiny_run)]) == 0
    table = pd.read_csv(tiny_run / "report.csv")
    assert list(table["cv_dice"]) == sorted(table["cv_dice"], reverse=True)
    for column in ("cv_dice_std", "dice_fold_0", "dice_fold_1", "apd_mm", "hausdorff_mm",
                   "good_contours_pct", "parameters", "scored_epoch", "train_seconds",
                   "learning_rate"):
        assert column in table
    assert (table["parameters"] > 0).all() and (table["apd_mm"] > 0).all()
    assert table["good_contours_pct"].between(0, 100).all()
    page = (tiny_run / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 4  # hyperparameters, learning curves, brackets, overlays
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    # Self-contained: no file or script from elsewhere, the script inline.
    assert "src='http" not in page and "<script src" not in page and "<link" not in page
    # The summary comes first, with the command that exports the best trial.
    assert page.index("class='summary'") < page.index("<img") < page.index("id='trials'")
    assert f"lvseg-search export {tiny_run} --out models/{tiny_run.name}" in page
    md = (tiny_run / "report.md").read_text()
    assert f"| 1 | {table['trial'][0]:04d} |" in md
    assert "best: trial" in capsys.readouterr().out
    # The best trial's out-of-fold breakdowns: by patient and slice position, and the
    # test-time augmentation x largest-region table whose searched cell is its CV Dice.
    images = pd.read_csv(tiny_run / "report_best_trial_images.csv")
    assert set(images["position"]) <= {"base", "mid", "apex"}
    positions = md[md.index("Dice by patient and slice position"):]
    for pid in images["patient_id"].unique():
        mean = images.loc[images["patient_id"] == pid, "dice"].mean()
        assert f"| {pid} |" in positions and f"{mean:.3f} ({(images['patient_id'] == pid).sum()})" \
            in positions
    decision = md[md.index("test-time augmentation and post-processing"):].split("\n\n")[2]
    rows = [r for r in decision.splitlines()[2:]]
    assert len(rows) == 18 and sum("chosen" in r for r in rows) == 1
    searched = next(r for r in rows if r.startswith("| centre | none | yes | no |"))
    assert f"{table['cv_dice'][0]:.4f}"[:5] in searched
    assert "Dice by patient and slice position" in page and "convex hull" in page


def test_report_on_an_interrupted_search_ranks_what_is_complete(tiny_run, tmp_path):
    import shutil

    from lvseg_search.report import write_report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # As if killed during trial 0001's second fold: its trial.json says RUNNING.
    trial_json = run / "tuner" / "trial_0001" / "trial.json"
    state = json.loads(trial_json.read_text())
    state["status"], state["score"], state["metrics"] = "RUNNING", None, {"metrics": {}}
    trial_json.write_text(json.dumps(state))
    (run / "tuner" / "trial_0001" / "fold_1" / "result.json").unlink()
    result = write_report(run, overlays=False, verbose=False)
    assert "0001" not in set(result["table"]["trial"])
    assert result["pending"] == [{"trial": "0001", "status": "running", "folds_done": "1/2",
                                  "reason": ""}]
    assert "running or interrupted" in (run / "report.md").read_text()


def test_export_and_predict(tiny_run, tiny_data, tmp_path, capsys):
    from lvseg_search.model.parity import PARITY_TOLERANCE

    model_dir = tmp_path / "model"
    assert main(["export", str(tiny_run), "--out", str(model_dir)]) == 0
    card = json.loads((model_dir / "model_card.json").read_text())
    for name in ("saved_model", "keras_file", "tflite", "onnx"):  # tf2onnx: a test extra
        assert card["parity_max_abs_diff"][name]["max_abs_diff"] <= PARITY_TOLERANCE
        # SavedModel and TFLite also hold the signature that takes a centre, compared too.
        assert card["parity_max_abs_diff"][name]["at_centre"] == (
            name in ("saved_model", "tflite"))
    assert card["formats"]["saved_model/"] == {"signature": "serving_default",
                                               "also": "serve_at_centre"}
    assert card["formats"]["model_at_centre.tflite"]["signature"] == "serve_at_centre"
    assert card["inputs"]["roi_centre_mm"]["shape"] == ["batch", 2]
    assert (model_dir / "model.onnx").is_file() and card["onnx"] == "written"
    assert card["training"]["mode"] == "retrain"
    assert card["training"]["epochs"] == card["cross_validation"]["scored_epoch"]
    # The retraining replays the exported trial's rungs (its schedule restarts at each).
    from lvseg_search.engine.run import load_run
    from lvseg_search.model.schedule import rung_ends

    run = load_run(tiny_run)
    values = run.trials[card["search"]["trial"]].hyperparameters.values
    assert card["search"]["lr_per_rung"] is True
    assert card["training"]["schedule_ends"] == rung_ends(
        values, lambda t: run.trials[t].hyperparameters.values, 2, True)
    assert card["training"]["schedule_ends"][-1] == card["training"]["epochs"]
    # The search's epochs were 3 batches each; the retraining's are too.
    assert card["search"]["steps_per_epoch"] == card["training"]["steps_per_epoch"] == 3
    split = json.loads((tiny_run / "splits.json").read_text())
    assert sorted(card["training"]["patients"]) == sorted(
        {p for f in split["folds"] for p in f["val"]})
    assert card["test"]["patients"] == split["test"]
    assert 0 <= card["test"]["dice"] <= 1 and card["data"]["fingerprint_sha256"]
    assert card["serving_contract"] == 2 and card["card_version"] == 6
    # One foreground class: the mask is the LV's, no class probabilities.
    assert card["classes"] == {"classes": {"0": "background", "1": "lv_blood_pool"},
                               "roles": {"blood_pool": 1}}
    assert "class_probabilities" not in card["outputs"]
    from lvseg_search.model.describe import network_words

    assert card["network"] == network_words(card["hyperparameters"])
    assert card["inputs"]["raw"]["dtype"] == "int16"
    assert card["inputs"]["pixel_spacing_mm"]["shape"] == ["batch", 2]
    search = json.loads((tiny_run / "search.json").read_text())
    assert card["grid"] == {"mode": "physical", "image_size": 32,
                            "spacing_mm": search["spacing_mm"],
                            "field_of_view_mm": pytest.approx(32 * search["spacing_mm"], abs=1e-3),
                            "field_of_view_asked_mm": search["field_of_view_mm"],
                            "centred_on": card["grid"]["centred_on"],
                            "centred_on_by_predict": card["grid"]["centred_on_by_predict"],
                            "at_centre_signature": "serve_at_centre"}
    centred = card["postprocessing"]["roi"] == "centre"
    assert (card["grid"]["centred_on"] == "image centre") == centred
    assert (card["grid"]["centred_on_by_predict"] == "image centre") == centred
    assert card["search"]["augmentation"]["gamma"] == {"probability": 0.3,
                                                       "range": [0.7, 1.5]}
    # The tiny run trained on views cut around the LV (the default offsets).
    offset = card["search"]["augmentation"]["view_around_lv_mm"]
    assert offset == search["augmentation"]["offset_mm"] > 0

    # Test-time augmentation and largest region were decided on out-of-fold predictions;
    # the searched setting's figure there is the search's own CV Dice.
    from lvseg_search.evaluate.decision import TIE

    post = card["postprocessing"]
    table = post["out_of_fold"]
    # 2 fields of view x 3 test-time augmentations x (arg-max, largest region, its hull).
    assert len(table) == 18 and post["decided_by"].startswith("out-of-fold CV Dice")
    assert {r["roi"] for r in table} == {"centre", "localized"}
    searched = next(r for r in table if r["roi"] == "centre" and r["tta"] == "none"
                    and r["largest_region"] and not r["convex_hull"])
    assert searched["cv_dice"] == pytest.approx(card["cross_validation"]["dice_mean"],
                                                abs=1e-4)
    assert post["cv_dice"] >= max(r["cv_dice"] for r in table) - TIE
    assert "out-of-fold CV Dice of trial" in capsys.readouterr().out

    # The .keras file loads in safe mode in a fresh process, and takes any image size
    # and spacing; a spacing that is not one (row, column) pair per image is refused.
    import subprocess
    import sys

    code = ("import numpy as np, keras, lvseg_search.model.serving\n"
            f"m = keras.models.load_model({str(model_dir / 'model.keras')!r}, safe_mode=True)\n"
            "out = m({'raw': np.zeros((2, 40, 56), np.int16) + 100,\n"
            "         'pixel_spacing_mm': np.ones((2, 2), np.float32)})\n"
            "print(tuple(out['probabilities'].shape), tuple(out['mask'].shape))\n"
            "try:\n"
            "    m({'raw': np.zeros((2, 40, 56), np.int16),\n"
            "       'pixel_spacing_mm': np.ones((2, 3), np.float32)})\n"
            "except ValueError as e:\n"
            "    print('refused', 'expected shape=(None, 2)' in str(e))\n")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-1500:]
    assert fresh.stdout.split("\n")[:2] == ["(2, 40, 56) (2, 40, 56)", "refused True"]

    # The SavedModel's signature fails on a spacing for another number of images or
    # with one value per image (inside the graph; TensorFlow does not check a
    # signature's static shapes, so a 3-column spacing passes there), and the package's
    # runner refuses every wrong shape first with a clear message.
    import tensorflow as tf

    from lvseg_search.model.formats import saved_model_runner

    serve = tf.saved_model.load(str(model_dir / "saved_model")).signatures["serving_default"]
    raw = tf.zeros((2, 40, 56), tf.int16)
    for bad in ((1, 2), (2, 1), (3, 2)):
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(raw=raw, pixel_spacing_mm=tf.ones(bad))
    runner = saved_model_runner(model_dir / "saved_model")
    with pytest.raises(ValueError, match=r"pixel_spacing_mm: expected shape \(2, 2\)"):
        runner(np.zeros((2, 40, 56), np.int16), np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive number of mm"):
        runner(np.zeros((2, 40, 56), np.int16), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"roi_centre_mm: expected shape \(2, 2\)"):
        runner(np.zeros((2, 40, 56), np.int16), np.ones((2, 2)), np.zeros(2))

    # predict on the held-out patient's study, read straight from DICOM.
    phantom = tiny_data.parent / "phantom" / "dicoms" / split["test"][0]
    pred = tmp_path / "pred"
    assert main(["predict", str(model_dir), str(phantom), "--out", str(pred)]) == 0
    areas = pd.read_csv(pred / "areas.csv")
    n = len(list(phantom.glob("*.dcm")))
    assert len(areas) == n == len(list((pred / "masks").rglob("*.npy")))
    assert len(list((pred / "overlays").rglob("*.png"))) == n
    first = areas.iloc[0]
    mask = np.load(pred / "masks" / split["test"][0] / first["file"].replace(".dcm", ".npy"))
    assert mask.sum() == first["lv_pixels"]
    study = json.loads((pred / "studies.json").read_text())[split["test"][0]]
    assert study["slice_spacing_mm"] == pytest.approx(10.0)
    volumes = pd.read_csv(pred / "volumes.csv")
    by_phase = areas.groupby("phase_index")["area_mm2"].sum() * 10.0 / 1000
    assert list(volumes["volume_ml"]) == pytest.approx(list(by_phase))
    if study["ejection_fraction"] is not None:
        assert study["edv_ml"] == pytest.approx(volumes["volume_ml"].max())

    # A stack whose positions are missing or inconsistent: said per study, no volumes.
    import pydicom

    broken = tmp_path / "broken"
    for name, edit in (("noposition", lambda ds: delattr(ds, "ImagePositionPatient")),
                       ("origin", lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 0])),
                       ("tilted", None)):
        (broken / name).mkdir(parents=True)
        for i, f in enumerate(sorted(phantom.glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            if edit is not None:
                edit(ds)
            elif i % 2:  # every other image in another plane
                ds.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
            ds.save_as(broken / name / f.name)
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(broken), "--out", str(tmp_path / "p2")]) == 0
    printed = capsys.readouterr().out
    studies = json.loads((tmp_path / "p2" / "studies.json").read_text())
    for name, needle in (("noposition", "have no ImagePositionPatient"),
                         ("origin", "lie at the origin"),
                         ("tilted", "several orientations")):
        s = studies[f"broken/{name}" if f"broken/{name}" in studies else name]
        assert any(needle in p for p in s["geometry"]["problems"]), s["geometry"]
        assert s["ejection_fraction"] is None and needle in s["why_no_ef"]
        assert needle in printed
    assert pd.read_csv(tmp_path / "p2" / "volumes.csv")["volume_ml"].isna().all()
    assert study["geometry"] == {"problems": [], "indices_from": "instance numbers",
                                 "notes": []}

    # The phantom's DICOMs carry a patient name and birth date; no output does but the
    # DICOM SEG, which belongs to its patient (the standard's patient module)...
    blob = b"".join(p.read_bytes() for folder in (tiny_run, model_dir, pred)
                    for p in sorted(folder.rglob("*"))
                    if p.is_file() and p.parent.name != "seg")
    for needle in (b"Phantom", b"19700101"):
        assert needle not in blob
    segs = sorted((pred / "seg").glob("*.dcm"))
    assert segs and all(b"Phantom" in p.read_bytes() for p in segs)
    # ...and with --pseudonymize not even it, and no study name either.
    hidden = tmp_path / "pseudonymized"
    assert main(["predict", str(model_dir), str(phantom), "--out", str(hidden),
                 "--pseudonymize", "--outputs", "seg,nifti"]) == 0
    blob = b"".join(p.read_bytes() for p in sorted(hidden.rglob("*")) if p.is_file())
    for needle in (b"Phantom", b"19700101", phantom.name.encode()):
        assert needle not in blob
    assert sorted(p.name for p in hidden.iterdir()) == [
        "areas.csv", "nifti", "seg", "studies.json", "volumes.csv"]

    # An image without a usable PixelSpacing: one line naming it and --pixel-spacing,
    # exit 2, nothing written; given --pixel-spacing, its areas are in mm^2.
    for name, edit in (("nospacing", lambda ds: delattr(ds, "PixelSpacing")),
                       ("zerospacing", lambda ds: setattr(ds, "PixelSpacing", [0, 0]))):
        folder = tmp_path / name
        folder.mkdir()
        files = sorted(phantom.glob("*.dcm"))
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            if i == 1:
                edit(ds)
            ds.save_as(folder / f.name)
        capsys.readouterr()
        assert main(["predict", str(model_dir), str(folder), "--out",
                     str(tmp_path / f"out-{name}")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and files[1].name in err and "--pixel-spacing R,C" in err
        assert "no usable PixelSpacing" in err
        assert not (tmp_path / f"out-{name}").exists()
    assert main(["predict", str(model_dir), str(tmp_path / "nospacing"), "--out",
                 str(tmp_path / "out-given"), "--pixel-spacing", "2.5,2.5",
                 "--no-overlays"]) == 0
    given = pd.read_csv(tmp_path / "out-given" / "areas.csv")
    assert given["area_mm2"].notna().all()
    assert given.iloc[1]["area_mm2"] == pytest.approx(given.iloc[1]["lv_pixels"] * 6.25)
    assert main(["predict", str(model_dir), str(tmp_path / "nospacing"), "--out",
                 str(tmp_path / "out-bad"), "--pixel-spacing", "2.5"]) == 2
    assert "--pixel-spacing: '2.5' is not two positive sizes" in capsys.readouterr().err

    # Bad inputs: one line, exit 2, nothing written.
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "1.dcm").write_text("not an image")
    for source, message in (("empty", "no DICOM files found"), ("junk", "not a DICOM file")):
        capsys.readouterr()
        assert main(["predict", str(model_dir), str(tmp_path / source), "--out",
                     str(tmp_path / f"out-{source}")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / f"out-{source}").exists()
    # A card naming more classes than the model gives (a blood-pool model's card edited
    # to a myocardium's): one line, exit 2, nothing written.
    card = json.loads((model_dir / "model_card.json").read_text())
    card["classes"] = {"classes": {"0": "background", "1": "lv_blood_pool",
                                   "2": "myocardium"},
                       "roles": {"blood_pool": 1, "myocardium": 2}}
    (model_dir / "model_card.json").write_text(json.dumps(card))
    assert main(["predict", str(model_dir), str(phantom), "--out", str(tmp_path / "p3")]) == 2
    err = capsys.readouterr().err
    assert "names 3 classes but the model gives 2" in err and err.count("\n") == 1
    assert not (tmp_path / "p3").exists()


@pytest.fixture
def manifest_reads(monkeypatch) -> list[str]:
    """Every read of a data folder's manifest from now on (its folder)."""
    from lvseg_search.data import manifest

    reads: list[str] = []
    real = manifest.load

    def counting(data_dir):
        reads.append(str(data_dir))
        return real(data_dir)

    monkeypatch.setattr(manifest, "load", counting)
    return reads


def test_export_ensemble_averages_the_fold_models(tiny_run, tmp_path, manifest_reads):
    from lvseg_search.export import export

    card = export(tiny_run, tmp_path / "model", ensemble=True, onnx=False, verbose=False,
                  tta="dihedral", largest_region=False)
    assert len(manifest_reads) == 1  # read once, passed on
    assert card["training"]["mode"] == "ensemble" and card["training"]["models"] == 2
    # Forced settings are exported as asked, and the card says who decided.
    post = card["postprocessing"]
    assert (post["tta"], post["largest_region"]) == ("dihedral", False)
    assert post["decided_by"].startswith("--tta and --no-largest-region")
    assert post["cv_dice"] == next(r["cv_dice"] for r in post["out_of_fold"]
                                   if r["tta"] == "dihedral" and not r["largest_region"]
                                   and r["roi"] == post["roi"])
    assert (card["grid"]["centred_on"] == "image centre") == (post["roi"] == "centre")
    from lvseg_search.predict import keeps_largest_region

    assert keeps_largest_region(tmp_path / "model") is False  # predict follows the card
    assert keeps_largest_region(tmp_path) is True  # no card: models that always did
    assert (tmp_path / "model" / "saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "model" / "model.tflite").stat().st_size > 0


def test_out_of_fold_table_is_kept_and_computed_again_when_its_inputs_change(tiny_run,
                                                                            tmp_path):
    import shutil

    from lvseg_search.engine.out_of_fold import FILE, out_of_fold_decisions
    from lvseg_search.engine.run import CHECKPOINT, best_trial, fold_dir, load_run

    shutil.copytree(tiny_run, tmp_path / "run")
    run = load_run(tmp_path / "run")
    tid = best_trial(run).trial_id
    built = []

    def networks():
        from lvseg_search.evaluate.scoring import load_patient_images

        built.append(1)
        return [(run.fold_network(tid, k), load_patient_images(run.data, f["val"]))
                for k, f in enumerate(run.splits["folds"])]

    kept = run.trial_dir(tid) / FILE
    kept.unlink(missing_ok=True)  # the report tests may have kept one
    table = out_of_fold_decisions(run, tid, networks)
    assert len(built) == 1 and kept.is_file()
    assert out_of_fold_decisions(run, tid, networks) == table  # kept: no network built
    assert len(built) == 1
    # Another fold's weights in fold 0: the kept table no longer holds.
    shutil.copyfile(fold_dir(run.trial_dir(tid), 1) / CHECKPOINT,
                    fold_dir(run.trial_dir(tid), 0) / CHECKPOINT)
    again = out_of_fold_decisions(run, tid, networks)
    assert len(built) == 2
    assert json.loads(kept.read_text())["table"] == again
    kept.write_text("{not json")  # unreadable: computed again and rewritten, not an error
    assert out_of_fold_decisions(run, tid, networks) == again and len(built) == 3
    assert json.loads(kept.read_text())["table"] == again


def test_report_and_search_read_the_manifest_once(tiny_run, tiny_data, tmp_path,
                                                  manifest_reads):
    from lvseg_search.report import write_report

    write_report(tiny_run, tmp_path / "report", verbose=False)
    assert len(manifest_reads) == 1
    manifest_reads.clear()
    run_search(tiny_data, tmp_path / "run", str(TINY), folds=2, max_epochs=1, factor=2,
               image_size=32, batch_size=4, steps_per_epoch=1, max_trials=1, verbose=False)
    assert len(manifest_reads) == 1


def test_report_and_export_refuse_a_folder_without_a_search(tmp_path, capsys):
    for argv in (["report", str(tmp_path)], ["export", str(tmp_path), "--out",
                                              str(tmp_path / "m")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a search run folder" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / ".lock").exists()


def test_export_refuses_an_unknown_trial_and_writes_nothing(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m"), "--trial", "9999"]) == 2
    assert "--trial: 9999" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".m.*"))


@pytest.mark.parametrize("argv, words", [
    (["--max-members", "0"], ["--max-members: 0", "at least 1"]),
    (["--deliver", "ensemble"], ["--deliver ensemble", "0 completed finalist", "--finalists"]),
    (["--max-members", "2"], ["--max-members", "0 completed finalist"]),
    (["--deliver", "ensemble", "--trial", "0001"], ["--deliver ensemble", "--trial"]),
    (["--max-members", "2", "--ensemble"], ["--max-members", "--ensemble"]),
    (["--members", "folds"], ["--members folds", "0 completed finalist"]),
    (["--members", "retrained", "--deliver", "single"], ["--members retrained",
                                                          "--deliver single"]),
    (["--members", "folds", "--epochs", "2"], ["--members folds", "--epochs"]),
])
def test_export_refuses_a_finalists_ensemble_it_cannot_deliver(tiny_run, tmp_path, capsys,
                                                               argv, words):
    """The tiny search has no final stage: no finalists' ensemble to deliver or cap."""
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_export_convex_hull_forced_on_or_refused_without_the_largest_region(
        tiny_run, tmp_path, capsys):
    from lvseg_search.export import export
    from lvseg_search.model.postprocess import fill_convex_hulls

    card = export(tiny_run, tmp_path / "model", ensemble=True, onnx=False, verbose=False,
                  convex_hull=True)
    post = card["postprocessing"]
    assert post["largest_region"] is True and post["convex_hull"] is True
    assert "convex hull" in post["inside"] and post["decided_by"].startswith("--convex-hull")
    assert post["cv_dice"] == next(r["cv_dice"] for r in post["out_of_fold"]
                                   if r["convex_hull"] and r["tta"] == post["tta"]
                                   and r["roi"] == post["roi"])
    # Every format was checked against the Keras model, whose masks are filled hulls.
    assert all(r["mask_mismatch_pixels"] == 0 for r in card["parity_max_abs_diff"].values())
    import keras

    model = keras.models.load_model(tmp_path / "model" / "model.keras")
    raw = (np.random.default_rng(0).integers(0, 1000, (2, 48, 40))).astype(np.int16)
    masks = np.asarray(model({"raw": raw, "pixel_spacing_mm": np.ones((2, 2), np.float32)})["mask"])
    np.testing.assert_array_equal(masks, np.stack(fill_convex_hulls(masks)))

    capsys.readouterr()
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m"), "--convex-hull",
                 "--no-largest-region"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--convex-hull" in err and "--no-largest-region" in err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_trials_are_found_by_id_as_written_or_as_a_number(tiny_run):
    from lvseg_search.engine.run import find_trial, load_run

    run = load_run(tiny_run)
    padded = sorted(run.trials)[1]
    assert padded != str(int(padded))  # keras-tuner pads ids: 0001
    assert find_trial(run, padded) is run.trials[padded]
    assert find_trial(run, str(int(padded))) is run.trials[padded]
    assert find_trial(run, "9999") is None and find_trial(run, "one") is None


def test_predict_refuses_bad_inputs(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "scans").mkdir()
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "scans"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "no saved_model/ inside" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_real_subset_search_report_export_predict(real_run, real_subset, tmp_path):
    """The whole chain on the three real patients (tiny budget): the SCD0000101 folder
    is a whole short-axis stack, 10 mm apart along the normal (SliceLocation steps
    6.72 mm there)."""
    import pydicom

    from lvseg_search.export import export
    from lvseg_search.predict import predict
    from lvseg_search.report import write_report

    run, _ = real_run
    report = write_report(run, tmp_path / "report", verbose=False)
    assert len(report["table"]) == 1 and report["files"]["html"].is_file()
    # Localized: predict finds each series' LV first and cuts every view around it.
    card = export(run, tmp_path / "model", epochs=1, onnx=False, verbose=False,
                  roi="localized")
    assert card["test"] is None and len(card["training"]["patients"]) == 3
    assert card["postprocessing"]["roi"] == "localized"
    studies = predict(tmp_path / "model", real_subset / "dicoms" / "SCD0000101",
                      tmp_path / "pred", outputs="masks", verbose=False)
    study = studies["SCD0000101"]
    assert (study["images"], study["slices"], study["phases"]) == (240, 12, 20)
    assert study["slice_spacing_mm"] == pytest.approx(10.0, abs=0.01)

    # The series checks below take the stack's first two phases at every slice (24
    # images: a whole stack, with an ED and an ES), predicted as they are first.
    source = []
    for path in sorted((real_subset / "dicoms" / "SCD0000101").glob("*.dcm"),
                       key=lambda p: int(p.stem)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if (int(ds.InstanceNumber) - 1) % int(ds.CardiacNumberOfImages) < 2:
            source.append(path)
    subset = tmp_path / "SCD0000101"
    subset.mkdir()
    for path in source:
        (subset / path.name).write_bytes(path.read_bytes())
    study = predict(tmp_path / "model", subset, tmp_path / "pred-subset", overlays=False,
                    verbose=False)["SCD0000101"]
    assert (study["images"], study["slices"], study["phases"]) == (24, 12, 2)
    assert study["ejection_fraction"] is not None
    # The real DICOM carries viewer files: a SEG per phase, a NIfTI label map of the
    # stack (read back and checked against the masks in test_myocardium.py).
    assert "why_no_seg" not in study and len(study["files"]["seg"]) == 2
    # The Sunnybrook anonymization gave each image its own frame of reference: the SEG
    # takes the most common one, and says so.
    assert any("FrameOfReferenceUIDs" in n for n in study["geometry"]["notes"])
    seg = pydicom.dcmread(tmp_path / "pred-subset" / study["files"]["seg"][0])
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == 12
    assert study["files"]["nifti"] == "nifti/SCD0000101.nii.gz"
    # Masks alone from here.
    # A folder holding a second series (here a 3-image localizer beside the cine stack,
    # as scanner exports and the challenge release's case folders do): one study per
    # series, the stack's figures unchanged.
    mixed = tmp_path / "study"
    mixed.mkdir()
    for path in source:
        (mixed / path.name).write_bytes(path.read_bytes())
    for k in range(3):
        ds = pydicom.dcmread(source[k])
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["localizer"])
        ds.SeriesNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.InstanceNumber = k + 1
        ds.save_as(mixed / f"loc{k}.dcm")
    both = predict(tmp_path / "model", mixed, tmp_path / "pred-mixed", outputs="masks",
                   verbose=False)
    assert set(both) == {"study/series_0001", "study/series_0300"}
    def figures(summary):  # the files are named after their study
        return {k: v for k, v in summary.items() if k != "files"}

    def same(summary):  # as the masks-only prediction gives them
        out = figures(summary)
        out["geometry"] = dict(out["geometry"], notes=[
            n for n in out["geometry"]["notes"] if "FrameOfReferenceUIDs" not in n])
        return {k: v for k, v in out.items() if not k.startswith("why_no_")}

    assert same(both["study/series_0300"]) == same(study)  # the localizer does not
    # move its LV
    assert both["study/series_0001"]["images"] == 3
    assert both["study/series_0001"]["ejection_fraction"] is None
    # The same stack written one series per slice, each numbered from 1 (as some scanners
    # write it): joined again into one stack, with the same volumes.
    per_slice = tmp_path / "per-slice"
    per_slice.mkdir()
    for path in source:
        ds = pydicom.dcmread(path)
        s, phase = divmod(int(ds.InstanceNumber) - 1, int(ds.CardiacNumberOfImages))
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["slice", str(s)])
        ds.SeriesNumber = 10 + s
        ds.InstanceNumber = phase + 1
        ds.save_as(per_slice / path.name)
    joined = predict(tmp_path / "model", per_slice, tmp_path / "pred-per-slice",
                     outputs="masks", verbose=False)
    assert list(joined) == ["per-slice"]
    again = joined["per-slice"]
    assert {k: again[k] for k in ("images", "slices", "phases", "ed_phase", "es_phase")} == {
        k: study[k] for k in ("images", "slices", "phases", "ed_phase", "es_phase")}
    for key in ("slice_spacing_mm", "edv_ml", "esv_ml", "ejection_fraction"):
        assert again[key] == pytest.approx(study[key])


def test_a_folder_is_split_into_its_dicom_series():
    from lvseg_search.data.dicom_io import DicomImage
    from lvseg_search.data.studies import split_series

    def image(uid: str, number: int, z: float = 0.0,
              orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)) -> DicomImage:
        return DicomImage(pixels=np.zeros((2, 2), np.int16), instance_number=1,
                          pixel_spacing_mm=(1.0, 1.0), slice_thickness_mm=1.0,
                          image_position=(0.0, 0.0, z), image_orientation=orientation,
                          trigger_time_ms=0.0, cardiac_number_of_images=0,
                          series_uid=uid, series_number=number)

    files = [Path(f"{i}.dcm") for i in range(5)]
    one = [image("1.2", 7)] * 5
    assert split_series("p", files, one) == [("p", files, one)]
    two = [image("1.2", 7), image("1.3", 2), image("1.2", 7), image("1.3", 2), image("1.2", 7)]
    groups = split_series("p", files, two)
    assert [(name, [f.name for f in fs]) for name, fs, _ in groups] == [
        ("p/series_0007", ["0.dcm", "2.dcm", "4.dcm"]), ("p/series_0002", ["1.dcm", "3.dcm"])]
    # Without distinct series numbers, series are numbered in the order first seen; without
    # series UIDs, the numbers group them.
    same = [image("1.2", 0), image("1.3", 0), image("1.2", 0), image("1.3", 0), image("1.2", 0)]
    assert [name for name, _, _ in split_series("p", files, same)] == ["p/series_0001",
                                                                      "p/series_0002"]
    nouid = [image("", 3), image("", 4), image("", 3), image("", 4), image("", 3)]
    assert [name for name, _, _ in split_series("p", files, nouid)] == ["p/series_0003",
                                                                       "p/series_0004"]
    # Single-slice series, parallel and at distinct positions, are one stack (three or
    # more); a localizer beside them stays apart, and two such series are not a stack.
    loc = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    sax = [image(f"s{z}", 10 + z, z=10.0 * z) for z in range(4) for _ in range(2)]
    names = [(name, len(ims)) for name, _, ims in split_series(
        "p", [Path(f"{i}.dcm") for i in range(10)], sax + [image("l", 2, orientation=loc)] * 2)]
    assert names == [("p/series_0010-0013", 8), ("p/series_0002", 2)]
    assert split_series("p", files[:4], sax[:4])[0][0] == "p/series_0010"
    assert split_series("p", files[:4] * 2, sax)[0][0] == "p"


# Runs in the page once it has loaded, as a person would look at it, and writes what it
# saw into the page for --dump-dom to return.
PROBE = """<script>window.addEventListener('load', function () {
  var r = {width: window.innerWidth, height: window.innerHeight,
           scroll_width: document.documentElement.scrollWidth};
  var card = document.querySelector('.summary .card').getBoundingClientRect();
  r.card_top = card.top; r.card_bottom = card.bottom;
  var imgs = Array.prototype.slice.call(document.images);
  r.images = imgs.length;
  r.loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  function column(key) {
    return Array.prototype.slice.call(document.querySelectorAll('#trials tbody tr'))
      .filter(function (tr) { return !tr.classList.contains('more'); })
      .map(function (tr) { return tr.getAttribute('data-' + key); });
  }
  var th = document.querySelector("th[data-key='apd-mm']");
  th.click(); r.apd_up = column('apd-mm');
  th.click(); r.apd_down = column('apd-mm');
  var toggle = document.querySelector('#trials button.toggle');
  toggle.click();
  r.details_open = getComputedStyle(toggle.closest('tr').nextElementSibling).display;
  var pick = document.getElementById('status');
  pick.value = 'failed'; pick.dispatchEvent(new Event('change'));
  r.shown_failed = Array.prototype.slice.call(document.querySelectorAll('#trials tbody tr'))
    .filter(function (tr) { return !tr.classList.contains('more') && tr.style.display !== 'none'; })
    .length;
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});</script>"""


def test_report_as_a_person_sees_it_in_chromium(tiny_run, tmp_path, chromium):
    import subprocess

    from lvseg_search.report import write_report

    browser = chromium
    files = write_report(tiny_run, tmp_path / "report", verbose=False)["files"]
    page = files["html"].read_text()
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,800"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    seen = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1)
                      .replace("&quot;", '"'))
    # The window is 1280 x 800; the page gets all its width and (headless) 650-800 px of
    # its height, as a browser with its bars would.
    assert seen["width"] == 1280 and 600 <= seen["height"] <= 800
    assert seen["card_top"] >= 0 and seen["card_bottom"] <= seen["height"]  # above the fold
    assert seen["scroll_width"] <= 1280  # no sideways scrolling
    assert seen["images"] == 4 and seen["loaded"] == 4  # every plot shows
    values = [float(v) for v in seen["apd_up"]]
    assert values == sorted(values) and len(values) >= 2  # sorted by a click...
    assert [float(v) for v in seen["apd_down"]] == sorted(values, reverse=True)  # ...and back
    assert seen["details_open"] == "table-row" and seen["shown_failed"] == 0
    shot = tmp_path / "top.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", files["html"].as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_deep_supervision_searches_reports_and_exports_one_output(tiny_data, tmp_path):
    from lvseg_search.export import export
    from lvseg_search.report import write_report

    space = tmp_path / "deep.toml"
    text = TINY.read_text().replace('depth = { values = [1, 2] }', 'depth = { values = [2] }')
    space.write_text(text.replace("[search]", 'deep_supervision = { values = ["on"] }\n\n'
                                  "[search]"))
    out = tmp_path / "run"
    run_search(tiny_data, out, str(space), folds=2, test_patients=1, max_epochs=1, factor=2,
               max_trials=1, image_size=32, batch_size=4, seed=3, steps_per_epoch=2,
               verbose=False, recycle_every=None)
    trial = json.loads(next((out / "tuner").glob("trial_*/trial.json")).read_text())
    assert trial["status"] == "COMPLETED"
    assert trial["hyperparameters"]["values"]["deep_supervision"] == "on"
    write_report(out, verbose=False)
    assert "deep supervision" in (out / "report.md").read_text()  # said in its network
    card = export(out, tmp_path / "model", onnx=False, tflite=False, verbose=False)
    import zipfile

    # The auxiliary outputs served training only: the exported model has none.
    with zipfile.ZipFile(tmp_path / "model" / "model.keras") as z:
        config = z.read("config.json").decode()
    assert '"score"' in config and "score_level" not in config
    assert card["hyperparameters"]["deep_supervision"] == "on"
    assert all(r["max_abs_diff"] < 1e-4 for r in card["parity_max_abs_diff"].values())
