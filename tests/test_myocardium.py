"""The myocardium end to end: a phantom whose experts drew o-contours at end-diastole
only, prepared with --myocardium, searched, reported, exported in every format and
predicted, with each contour scored and the LV mass delivered."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lvseg_search.cli import main

TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


def test_a_myocardium_search_scores_each_contour_and_its_model_delivers_lv_mass(
        tmp_path, capsys):
    from lvseg_search.data.phantom import synth
    from lvseg_search.engine.run import load_run
    from lvseg_search.engine.trial_score import last_metrics
    from lvseg_search.report import write_report
    from lvseg_search.search import run_search

    synth(tmp_path / "phantom", 4, seed=3, size=48, progress=False, o_contours="ed")
    data = tmp_path / "data"
    assert main(["prepare", str(tmp_path / "phantom"), "--out", str(data), "--myocardium"]) == 0
    assert "with the blood pool only (no o-contour)" in capsys.readouterr().out
    out = tmp_path / "run"
    run_search(data, out, str(TINY_SPACE), folds=2, max_epochs=2, factor=2, max_trials=2,
               image_size=32, batch_size=4, steps_per_epoch=2, finalists=0, seed=1,
               oracle="random", verbose=False)
    run = load_run(out)
    assert run.options.objective == "mean"
    for trial_id in run.trials:
        m = last_metrics(run.trials[trial_id])
        # The objective is the mean of the endocardial and the epicardial Dice.
        for k in range(2):
            fold = run.fold_results(trial_id)[k]["evaluation"]
            assert fold["dice"] == pytest.approx((fold["endo_dice"] + fold["epi_dice"]) / 2)
            # Only end-diastole has an o-contour: half of the images.
            assert fold["epi_images"] == pytest.approx(fold["images"] / 2)
        assert {"endo_dice", "epi_dice", "myo_dice", "epi_apd_mm"} <= set(m)
    paths = write_report(out, verbose=False)["files"]
    html = Path(paths["html"]).read_text()
    assert "epi APD" in html and "solid: endocardium" not in html  # the figure is a PNG
    csv = Path(paths["csv"]).read_text().splitlines()[0]
    assert "epi_dice" in csv and "myo_dice" in csv

    model = tmp_path / "model"
    assert main(["export", str(out), "--out", str(model)]) == 0
    printed = capsys.readouterr().out
    assert "endo Dice" in printed and "0 mask pixel(s) differ" in printed
    card = json.loads((model / "model_card.json").read_text())
    assert card["classes"]["roles"] == {"blood_pool": 1, "myocardium": 2}
    assert "class_probabilities" in card["outputs"]
    assert card["onnx"] == "written"
    assert all(p["mask_mismatch_pixels"] == 0 for p in card["parity_max_abs_diff"].values())
    assert set(card["cross_validation"]["contours"]) >= {"endo_dice", "epi_dice", "myo_dice"}

    pred = tmp_path / "pred"
    assert main(["predict", str(model), str(tmp_path / "phantom" / "dicoms" / "SYN0001"),
                 "--out", str(pred)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((pred / "studies.json").read_text())["SYN0001"]
    assert "lv_mass_ed_g" in summary and "myocardial_volume_ed_ml" in summary
    if summary["lv_mass_ed_g"] is not None:
        assert "LV mass" in printed
        assert summary["lv_mass_ed_g"] == pytest.approx(
            summary["myocardial_volume_ed_ml"] * 1.05)
    header = (pred / "areas.csv").read_text().splitlines()[0]
    assert "myo_area_mm2" in header
    assert "myocardial_volume_ml" in (pred / "volumes.csv").read_text()
    masks = [np.load(f) for f in (pred / "masks" / "SYN0001").glob("*.npy")]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) <= {0, 1, 2}

    # A model card naming other classes than the model gives: one line, exit 2.
    for names in ({"0": "background", "1": "lv_blood_pool"},
                  {"0": "background", "1": "lv_blood_pool", "2": "myocardium", "3": "rv"}):
        card["classes"] = {"classes": names, "roles": {"blood_pool": 1}}
        (model / "model_card.json").write_text(json.dumps(card))
        assert main(["predict", str(model), str(tmp_path / "phantom" / "dicoms" / "SYN0001"),
                     "--out", str(tmp_path / "again")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model_card.json" in err and "classes" in err
        assert not (tmp_path / "again").exists()
    assert not math.isnan(run.data.classes.count)
