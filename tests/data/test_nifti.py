"""NIfTI data sets in (ACDC's layout, nnU-Net's): the same shards as from DICOM, and
every bad input refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lvseg_search.cli import main
from lvseg_search.data import shards


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """One 2-patient phantom written in each format (do not modify; copy)."""
    from lvseg_search.data.phantom import FORMATS, synth

    root = tmp_path_factory.mktemp("formats")
    for fmt in FORMATS:
        synth(root / fmt, 2, seed=4, size=48, progress=False, format=fmt)
    return root


def _records(data: Path) -> list[dict]:
    manifest = json.loads((data / "manifest.json").read_text())
    return [r for p in manifest["patients"] for r in shards.read_shard(data / p["shard"])]


@pytest.mark.parametrize("fmt", ["nifti", "nnunet"])
def test_a_phantom_as_nifti_prepares_to_the_shards_of_its_dicom(phantoms, tmp_path, fmt,
                                                                 capsys):
    assert main(["prepare", str(phantoms / "linkcsv"), "--out", str(tmp_path / "dicom"),
                 "--myocardium"]) == 0
    assert main(["prepare", str(phantoms / fmt), "--out", str(tmp_path / fmt)]) == 0
    assert ("acdc" if fmt == "nifti" else "nnunet") in capsys.readouterr().out
    manifest = json.loads((tmp_path / fmt / "manifest.json").read_text())
    # Classes by name: the blood pool and the myocardium first, the data set's others
    # after them; the data set's own values recorded.
    assert manifest["classes"] == {"0": "background", "1": "lv_blood_pool",
                                   "2": "myocardium", "3": "rv"}
    assert manifest["source_labels"] == {"background": 0, "lv_blood_pool": 3,
                                         "myocardium": 2, "rv": 1}
    if fmt == "nifti":  # ACDC's Info.cfg: ED and ES frames, the group to stratify by
        first = manifest["patients"][0]
        assert (first["ed_phase"], first["es_phase"], first["group"]) == (0, 1, "NOR")
    for a, b in zip(_records(tmp_path / "dicom"), _records(tmp_path / fmt), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_allclose(a["pixel_spacing_mm"], b["pixel_spacing_mm"], atol=1e-6)
        np.testing.assert_allclose(a["slice_position_mm"], b["slice_position_mm"], atol=1e-3)
        np.testing.assert_allclose(a["image_orientation"], b["image_orientation"], atol=1e-5)
        assert (a["slice_index"], a["phase_index"]) == (b["slice_index"], b["phase_index"])


def _fail(capsys, argv, out, *needles):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


def _acdc_case(root: Path) -> tuple[Path, Path]:
    folder = root / "patient001"
    return folder / "patient001_frame01.nii.gz", folder / "patient001_frame01_gt.nii.gz"


def test_bad_nifti_inputs_are_refused_in_one_line(phantoms, tmp_path, capsys):
    import nibabel as nib

    from lvseg_search.data import nifti

    out = tmp_path / "out"

    def fresh(fmt: str) -> Path:
        dst = tmp_path / f"in_{fmt}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(phantoms / fmt, dst)
        return dst

    # Image and label of different shapes, then of different affines.
    root = fresh("nifti")
    image, label = _acdc_case(root)
    lab = nib.load(label)
    values, affine = np.asarray(lab.dataobj), lab.affine  # read before rewriting the file
    nifti.write(label, values[:-1], affine)
    _fail(capsys, ["prepare", root, "--out", out], out, str(label), "differs from its image")
    moved = affine.copy()
    moved[:3, 3] += 5.0
    nifti.write(label, values, moved)
    _fail(capsys, ["prepare", root, "--out", out], out, str(label), "affine differs")
    # Non-integer labels; values the convention does not declare; a 4-D label map.
    root = fresh("nifti")
    image, label = _acdc_case(root)
    values = values.astype(np.float32)
    nifti.write(label, values + 0.5 * (values > 0), affine)
    _fail(capsys, ["prepare", root, "--out", out], out, str(label), "not integers")
    nifti.write(label, np.where(values > 0, 7, 0).astype(np.uint8), affine)
    _fail(capsys, ["prepare", root, "--out", out], out, str(label), "label value(s) 7")
    nifti.write(label, np.stack([values, values], -1).astype(np.uint8), affine)
    _fail(capsys, ["prepare", root, "--out", out], out, str(label), "4-D label map")
    # A damaged file.
    image.write_bytes(image.read_bytes()[:200])
    _fail(capsys, ["prepare", root, "--out", out], out, str(image))
    # A volume whose third axis is not its slice axis.
    root = fresh("nifti")
    image, label = _acdc_case(root)
    img = nib.load(image)
    pixels, labels, thin = (np.asarray(img.dataobj), np.asarray(nib.load(label).dataobj),
                            img.affine.copy())
    thin[:3, 2] = thin[:3, 2] / np.linalg.norm(thin[:3, 2]) * 0.1
    nifti.write(image, pixels, thin)
    nifti.write(label, labels, thin)
    _fail(capsys, ["prepare", root, "--out", out], out, str(image), "not a short-axis")
    # A missing Info.cfg.
    root = fresh("nifti")
    (root / "patient001" / "Info.cfg").unlink()
    _fail(capsys, ["prepare", root, "--out", out], out, "Info.cfg", "missing")
    # nnU-Net: a case dataset.json counts without its files; labels no name says are
    # the blood pool, then named with --classes.
    root = fresh("nnunet")
    next((root / "imagesTr").glob("*_0000.nii.gz")).unlink()
    _fail(capsys, ["prepare", root, "--out", out], out, "no image")
    root = fresh("nnunet")
    (root / "labelsTr" / "patient002_frame02.nii.gz").unlink()
    (root / "imagesTr" / "patient002_frame02_0000.nii.gz").unlink()
    _fail(capsys, ["prepare", root, "--out", out], out, "numTraining is 4")
    root = fresh("nnunet")
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {"background": 0, "a": 1, "b": 2, "c": 3}
    (root / "dataset.json").write_text(json.dumps(spec))
    _fail(capsys, ["prepare", root, "--out", out], out, "dataset.json",
          "no label is named as the LV blood pool", "--classes lv=ID")
    _fail(capsys, ["prepare", root, "--out", out, "--classes", "lv=9"], out, "lv=9")
    assert main(["prepare", str(root), "--out", str(out), "--classes", "lv=3,myo=2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"]["3"] == "a" and manifest["roles"]["myocardium"] == 2


def _as_nnunet(data: Path, out: Path) -> None:
    """A prepared (DICOM) data folder written as an nnU-Net raw data set: per patient and
    phase one volume of its labelled slices, the geometry from the DICOM."""
    from lvseg_search.data import nifti

    manifest = json.loads((data / "manifest.json").read_text())
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    cases = 0
    for p in manifest["patients"]:
        records = shards.read_shard(data / p["shard"])
        for phase in sorted({int(r["phase_index"]) for r in records}):
            stack = sorted((r for r in records if int(r["phase_index"]) == phase),
                           key=lambda r: int(r["slice_index"]))
            positions = np.array([r["slice_position_mm"] for r in stack], np.float64)
            steps = np.diff(positions, axis=0)
            assert np.allclose(steps, steps[0], atol=1e-2)  # contiguous, evenly spaced
            affine = nifti.affine_of(tuple(stack[0]["pixel_spacing_mm"]),
                                     stack[0]["image_orientation"], positions[0], steps[0])
            case = f"{p['patient_id']}_frame{phase + 1:02d}"
            image = np.stack([r["image"] for r in stack], -1).transpose(1, 0, 2)
            label = np.stack([r["mask"] for r in stack], -1).transpose(1, 0, 2)
            nifti.write(out / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
            nifti.write(out / "labelsTr" / f"{case}.nii.gz", label, affine)
            cases += 1
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "LV": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))


def test_the_real_subset_round_trips_dicom_nifti_prepare_and_searches_alike(
        real_prepared, tmp_path):
    """DICOM -> NIfTI (geometry from the DICOM) -> prepare: the same images, masks and
    spacings, and the same search result on a tiny budget."""
    from lvseg_search.prepare import prepare
    from lvseg_search.search import run_search

    _as_nnunet(real_prepared, tmp_path / "nnunet")
    prepare(tmp_path / "nnunet", tmp_path / "data", progress=False)
    before = sorted(_records(real_prepared),
                    key=lambda r: (r["patient_id"], r["slice_index"], r["phase_index"]))
    after = sorted(_records(tmp_path / "data"),
                   key=lambda r: (r["patient_id"], r["slice_index"], r["phase_index"]))
    assert len(before) == len(after) == 56
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_allclose(a["pixel_spacing_mm"], b["pixel_spacing_mm"], atol=1e-6)
        # An affine steps evenly from slice to slice; the scanner's positions vary by a
        # few thousandths of a millimetre.
        np.testing.assert_allclose(a["slice_position_mm"], b["slice_position_mm"], atol=1e-2)
    options = dict(folds=2, max_epochs=1, max_trials=1, oracle="random", finalists=0,
                   image_size=32, batch_size=8, steps_per_epoch=2, seed=0, verbose=False,
                   recycle_every=None)
    space = str(Path(__file__).parents[1] / "spaces" / "tiny.toml")
    dicom = run_search(real_prepared, tmp_path / "run_dicom", space, **options)
    nnunet = run_search(tmp_path / "data", tmp_path / "run_nifti", space, **options)
    assert [t["score"] for t in dicom["completed"]] == pytest.approx(
        [t["score"] for t in nnunet["completed"]], abs=1e-6)
