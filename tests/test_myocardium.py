"""The myocardium end to end: a phantom whose experts drew o-contours at end-diastole
only, prepared with --myocardium, searched, reported, exported in every format and
predicted, with each contour scored and the LV mass delivered."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lvseg_search.cli import main

TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


@pytest.fixture(scope="module")
def myocardium_run(tmp_path_factory) -> Path:
    """A phantom with o-contours at end-diastole only, prepared with --myocardium and
    searched (one trial, two folds) and reported, in a folder of its own: ``phantom``,
    ``data``, ``run``, ``report``."""
    from lvseg_search.data.phantom import synth
    from lvseg_search.prepare import prepare
    from lvseg_search.search import run_search

    root = tmp_path_factory.mktemp("myocardium")
    synth(root / "phantom", 4, seed=3, size=48, progress=False, o_contours="ed")
    prepare(root / "phantom", root / "data", myocardium=True, progress=False)
    from lvseg_search.report import write_report

    run_search(root / "data", root / "run", str(TINY_SPACE), folds=2, max_epochs=2, factor=2,
               max_trials=1, image_size=32, batch_size=4, steps_per_epoch=2, finalists=0,
               seed=1, oracle="random", verbose=False)
    write_report(root / "run", root / "report", verbose=False)
    return root


def test_a_myocardium_search_scores_each_contour_and_its_model_delivers_lv_mass(
        myocardium_run, tmp_path, capsys):
    from lvseg_search.engine.run import load_run
    from lvseg_search.engine.trial_score import last_metrics

    root = myocardium_run
    # Prepared as a user does: the frames without o-contour keep their blood pool.
    assert main(["prepare", str(root / "phantom"), "--out", str(tmp_path / "data"),
                 "--myocardium"]) == 0
    assert "8 with the blood pool only (no o-contour)" in capsys.readouterr().out
    out = root / "run"
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
    html = (root / "report" / "report.html").read_text()
    assert "epi APD" in html and "solid: endocardium" not in html  # the figure is a PNG
    csv = (root / "report" / "report.csv").read_text().splitlines()[0]
    assert "epi_dice" in csv and "myo_dice" in csv

    model = tmp_path / "model"
    # ONNX is converted and checked for such models in test_postprocess (the same graph
    # of per-contour post-processing, on speckled masks).
    assert main(["export", str(out), "--out", str(model), "--no-onnx"]) == 0
    printed = capsys.readouterr().out
    assert "endo Dice" in printed and "0 mask pixel(s) differ" in printed
    card = json.loads((model / "model_card.json").read_text())
    assert card["classes"]["roles"] == {"blood_pool": 1, "myocardium": 2}
    assert "class_probabilities" in card["outputs"]
    assert all(p["mask_mismatch_pixels"] == 0 for p in card["parity_max_abs_diff"].values())
    assert set(card["cross_validation"]["contours"]) >= {"endo_dice", "epi_dice", "myo_dice"}

    pred = tmp_path / "pred"
    assert main(["predict", str(model), str(root / "phantom" / "dicoms" / "SYN0001"),
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
    masks = {int(f.stem): np.load(f) for f in (pred / "masks" / "SYN0001").glob("*.npy")}
    assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) <= {0, 1, 2}
    _check_viewer_files(pred, root / "phantom" / "dicoms" / "SYN0001", masks, summary)

    # The same phantom written as NIfTI volumes: its label maps, on the input's grid, are
    # the masks predicted from its DICOM.
    from lvseg_search.data.phantom import synth

    synth(tmp_path / "nifti_phantom", 1, seed=3, size=48, progress=False, format="nifti")
    frame = tmp_path / "nifti_phantom" / "patient001" / "patient001_frame01.nii.gz"
    assert main(["predict", str(model), str(frame), "--out", str(tmp_path / "pred_nii"),
                 "--outputs", "nifti"]) == 0
    import nibabel as nib

    from lvseg_search.data import nifti

    label_map = nib.load(tmp_path / "pred_nii" / "nifti" / "patient001_frame01.nii.gz")
    np.testing.assert_allclose(label_map.affine, nib.load(frame).affine)
    assert label_map.shape == nib.load(frame).shape
    by_instance = [masks[n] for n in sorted(masks) if (n - 1) % 2 == 0]  # phase 0 (ED)
    np.testing.assert_array_equal(np.asarray(label_map.dataobj).transpose(2, 1, 0),
                                  np.stack(by_instance))
    assert not (tmp_path / "pred_nii" / "overlays").exists()
    # A 4-D cine of its frames, an ACDC Info.cfg beside it naming ED and ES (here the
    # opposite of what the volumes would say), pseudonymized.
    folder = tmp_path / "nifti_phantom" / "patient001"
    frames = [nib.load(folder / f"patient001_frame{t:02d}.nii.gz") for t in (1, 2)]
    cine = np.stack([np.asarray(f.dataobj) for f in frames], -1)
    (tmp_path / "cine").mkdir()
    nifti.write(tmp_path / "cine" / "patient001_4d.nii.gz", cine, frames[0].affine)
    (tmp_path / "cine" / "Info.cfg").write_text("ED: 2\nES: 1\nGroup: NOR\n")
    capsys.readouterr()
    out = tmp_path / "pred_cine"
    assert main(["predict", str(model), str(tmp_path / "cine"), "--out", str(out),
                 "--pseudonymize", "--salt", "s"]) == 0
    assert "patient001" not in capsys.readouterr().out
    (study, cine_summary), = json.loads((out / "studies.json").read_text()).items()
    assert study.startswith("P") and "patient001" not in (out / "areas.csv").read_text()
    assert cine_summary["phases_from"] == "the data"
    assert (cine_summary["ed_phase"], cine_summary["es_phase"]) == (1, 0)
    assert "ED and ES frames from Info.cfg" in cine_summary["geometry"]["notes"]
    label_map = nib.load(out / cine_summary["files"]["nifti"])
    assert label_map.shape == cine.shape
    np.testing.assert_allclose(label_map.affine, frames[0].affine)
    np.testing.assert_array_equal(np.asarray(label_map.dataobj)[..., 1].transpose(2, 1, 0),
                                  np.stack([masks[n] for n in sorted(masks) if n % 2 == 0]))
    assert len(list((out / "overlays" / study).glob("*.png"))) == cine.shape[2] * 2

    # A model card naming fewer classes than the model gives: one line, exit 2.
    card["classes"] = {"classes": {"0": "background", "1": "lv_blood_pool"},
                       "roles": {"blood_pool": 1}}
    (model / "model_card.json").write_text(json.dumps(card))
    assert main(["predict", str(model), str(root / "phantom" / "dicoms" / "SYN0001"),
                 "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names 2 classes but the model gives 3" in err
    assert not (tmp_path / "again").exists()



def test_the_report_of_a_myocardium_search_in_chromium(myocardium_run, tmp_path, chromium):
    html = (myocardium_run / "report" / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,800"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    seen = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1)
                      .replace("&quot;", '"'))
    # Every plot shows, the contours' overlays drawn at their size, and the trial table
    # has each contour's columns.
    assert seen["loaded"] == seen["images"] and "overlays" in seen["shown"]
    assert seen["overlay_width"] > 600
    assert {"endo-dice", "epi-dice", "myo-dice"} <= set(seen["columns"])


def _check_viewer_files(pred: Path, dicoms: Path, masks: dict[int, np.ndarray],
                       summary: dict) -> None:
    """The DICOM SEG of each phase and the NIfTI label map of the stack, read back."""
    import highdicom as hd
    import nibabel as nib
    import pydicom

    sources = {int(f.stem): pydicom.dcmread(f) for f in dicoms.glob("*.dcm")}
    assert len(summary["files"]["seg"]) == 2  # one per phase
    for name in summary["files"]["seg"]:
        seg = hd.seg.segread(pred / name)
        assert [d.SegmentLabel for d in seg.SegmentSequence] == [
            "Left ventricle blood pool", "Left ventricle myocardium"]
        assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == \
            "49848007"  # SNOMED CT: left ventricle myocardium
        referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                      for r in s.ReferencedInstanceSequence}
        numbers = [n for n, ds in sources.items() if ds.SOPInstanceUID in referenced]
        assert len(numbers) == len(sources) // 2  # the phase's slices, each referenced
        for n in numbers:
            uid = sources[n].SOPInstanceUID
            for segment, cls in ((1, 1), (2, 2)):
                got = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[uid], segment_numbers=[segment],
                    combine_segments=False)[0, ..., 0]
                np.testing.assert_array_equal(got.astype(bool), masks[n] == cls)
        # Read by plain pydicom too: a SEG of the source's patient and study.
        plain = pydicom.dcmread(pred / name)
        assert plain.Modality == "SEG" and plain.StudyInstanceUID == sources[1].StudyInstanceUID
    stack = nib.load(pred / summary["files"]["nifti"])
    assert stack.shape == (48, 48, len(sources) // 2, 2)  # columns, rows, slices, phases
    volume = np.asarray(stack.dataobj)
    for n, mask in masks.items():
        k, p = divmod(n - 1, 2)
        np.testing.assert_array_equal(volume[:, :, k, p].T, mask)
    assert set(np.unique(volume)) <= {0, 1, 2}


PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var overlay = document.querySelector("img[alt='overlays']");
  var r = {images: imgs.length,
           loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
           shown: imgs.map(function (i) { return i.alt; }),
           overlay_width: overlay ? overlay.getBoundingClientRect().width : 0,
           columns: Array.prototype.slice.call(document.querySelectorAll('#trials th'))
             .map(function (th) { return th.getAttribute('data-key'); })};
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});</script>"""


def test_overlays_draw_both_contours_of_each_mask():
    import base64
    import io

    from PIL import Image

    from lvseg_search.classes import Classes
    from lvseg_search.reporting.figures import draw_overlays

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    labels = np.where(r <= 10, 1, np.where(r <= 15, 2, 0)).astype(np.uint8)
    row = {"dice": 1.0, "apd_mm": 0.0, "epi_dice": 1.0, "myo_dice": 1.0}
    classes = Classes(("background", "lv_blood_pool", "myocardium"), myocardium=2)

    def green(figure):
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(figure))).convert("RGB"))
        return int(((pixels[..., 1] > 200) & (pixels[..., 0] < 80)).sum())

    # The prediction beside the truth, so that the expert's contours are not hidden.
    pred = np.roll(labels, 20, axis=1)
    both = green(draw_overlays([(np.zeros((64, 64)), labels, pred, "p", row)], classes))
    endo = green(draw_overlays([(np.zeros((64, 64)), labels == 1, pred == 1, "p", row)]))
    # The dashed epicardial contour (1.5 times the radius, dashed) adds green.
    assert both > 1.3 * endo
