"""A NIfTI data set searched: the phantom in ACDC's layout (four classes, the right
ventricle declared beside the LV's) prepared and searched, each contour scored.

Its export and prediction run the code of any model of more classes, tested in
test_myocardium.py (which also predicts NIfTI stacks and cines)."""

from __future__ import annotations

import json
from pathlib import Path

from lvseg_search.cli import main

TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


def test_an_acdc_phantom_is_prepared_and_searched_with_its_four_classes(tmp_path, capsys):
    from lvseg_search.data.phantom import synth
    from lvseg_search.engine.run import load_run
    from lvseg_search.search import run_search

    synth(tmp_path / "acdc", 4, seed=8, size=48, phases=2, progress=False, format="nifti")
    assert main(["prepare", str(tmp_path / "acdc"), "--out", str(tmp_path / "data")]) == 0
    assert "(acdc layout)" in capsys.readouterr().out
    summary = run_search(tmp_path / "data", tmp_path / "run", str(TINY_SPACE), folds=2,
                         max_epochs=1, max_trials=1, oracle="random", finalists=0,
                         image_size=32, batch_size=4, steps_per_epoch=2, seed=0,
                         verbose=False, stratify="group", recycle_every=None)
    assert len(summary["completed"]) == 1 and not summary["failed"]
    run = load_run(tmp_path / "run")
    assert run.data.classes.count == 4 and run.build_network("0").output_shape[-1] == 4
    fold = run.fold_results("0")[0]["evaluation"]
    # Every frame of a NIfTI data set is fully labelled: each image has both contours.
    assert fold["epi_images"] == fold["images"]
    assert 0.0 <= fold["myo_dice"] <= 1.0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert {p["group"] for p in manifest["patients"]} == {"NOR"}
