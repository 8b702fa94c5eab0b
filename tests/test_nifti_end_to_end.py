"""A NIfTI data set end to end: the phantom in ACDC's layout (four classes: the right
ventricle declared beside the LV's) prepared, searched, exported and predicted on a 4-D
cine whose Info.cfg says which frames are ED and ES; pseudonymized outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lvseg_search.cli import main

TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


def test_an_acdc_phantom_is_prepared_searched_exported_and_predicted_on_its_cine(
        tmp_path, capsys):
    import nibabel as nib

    from lvseg_search.data import nifti
    from lvseg_search.data.phantom import synth
    from lvseg_search.search import run_search

    synth(tmp_path / "acdc", 4, seed=8, size=48, phases=3, progress=False, format="nifti")
    assert main(["prepare", str(tmp_path / "acdc"), "--out", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    run_search(tmp_path / "data", tmp_path / "run", str(TINY_SPACE), folds=2, max_epochs=1,
               max_trials=1, oracle="random", finalists=0, image_size=32, batch_size=4,
               steps_per_epoch=2, seed=0, verbose=False, stratify="group")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model"),
                 "--no-onnx"]) == 0
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["classes"]["classes"]["3"] == "rv"
    assert card["outputs"]["mask"].endswith("3 = rv")

    # A 4-D cine of patient002's frames, its Info.cfg beside it naming ED and ES.
    folder = tmp_path / "acdc" / "patient002"
    frames = [nib.load(folder / f"patient002_frame{t:02d}.nii.gz") for t in (1, 2, 3)]
    cine = np.stack([np.asarray(f.dataobj) for f in frames], -1)
    (tmp_path / "cine").mkdir()
    nifti.write(tmp_path / "cine" / "patient002_4d.nii.gz", cine, frames[0].affine)
    (tmp_path / "cine" / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\n")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "cine"), "--out",
                 str(out), "--pseudonymize", "--salt", "s"]) == 0
    printed = capsys.readouterr().out
    assert "patient002" not in printed
    studies = json.loads((out / "studies.json").read_text())
    (study, summary), = studies.items()
    assert study.startswith("P") and "patient002" not in (out / "areas.csv").read_text()
    # ED and ES as the data says, not as the volumes would guess them.
    assert summary["phases_from"] == "the data"
    assert (summary["ed_phase"], summary["es_phase"]) == (0, 1)
    assert "ED and ES frames from Info.cfg" in summary["geometry"]["notes"]
    label_map = nib.load(out / summary["files"]["nifti"])
    assert label_map.shape == cine.shape
    np.testing.assert_allclose(label_map.affine, frames[0].affine)
    assert set(np.unique(np.asarray(label_map.dataobj))) <= {0, 1, 2, 3}
    assert len(list((out / "overlays" / study).glob("*.png"))) == cine.shape[2] * 3
