"""prepare on the real Sunnybrook subset (link.csv layout and the 2009 challenge layout)."""

import shutil

import numpy as np
import pytest
from skimage.draw import line
from skimage.draw import polygon as fill_polygon

from lvseg_search.data import manifest, shards
from lvseg_search.data.contours import perimeter, read_contour, shoelace_area
from lvseg_search.prepare import prepare

EXPECTED = {"SCD0000101": 18, "SCD0000201": 18, "SCD0000301": 20}
ORIGINAL = {"SCD0000101": "SC-HF-I-1", "SCD0000201": "SC-HF-I-2", "SCD0000301": "SC-HF-I-4"}


def _records(data_dir):
    m = manifest.load(data_dir)
    return {p["patient_id"]: shards.read_shard(data_dir / p["shard"]) for p in m["patients"]}


def _contour_for(real_subset, record):
    pid = record["patient_id"]
    n = record["instance_number"]
    return (real_subset / "contourfiles" / ORIGINAL[pid] / "i-contours"
            / f"IM-0001-{n:04d}-icontour-manual.txt")


def test_three_shards_with_expected_slice_counts(real_prepared):
    records = _records(real_prepared)
    assert {pid: len(r) for pid, r in records.items()} == EXPECTED
    assert sorted(p.name for p in real_prepared.glob("*.tfrecord")) == [
        f"{pid}.tfrecord" for pid in sorted(EXPECTED)]
    m = manifest.load(real_prepared)
    assert m["n_slices"] == 56 and m["source_layout"] == "linkcsv"
    by_id = {p["patient_id"]: p for p in m["patients"]}
    assert by_id["SCD0000101"]["unlabelled_images_skipped"] == 240 - 18
    # Slices are 10 mm apart along the normal, although SliceLocation steps 6.72 mm.
    assert by_id["SCD0000101"]["slice_spacing_mm"] == pytest.approx(10.0, abs=0.05)
    # The cohort of each case id (link.csv's SC-HF-I-1 ...), kept to stratify folds by;
    # a label, not data: the folder's identity does not depend on it.
    assert {p["group"] for p in m["patients"]} == {"HF-I"}
    unlabelled = {**m, "patients": [{k: v for k, v in p.items() if k != "group"}
                                    for p in m["patients"]]}
    assert manifest.identity(unlabelled) == manifest.identity(m)


def test_shard_fields_follow_schema_1(real_prepared, real_subset):
    rec = _records(real_prepared)["SCD0000101"][0]
    assert rec["schema_version"] == 1
    assert rec["image"].dtype == np.int16 and rec["image"].shape == (256, 256)
    assert rec["mask"].dtype == np.uint8 and set(np.unique(rec["mask"])) == {0, 1}
    np.testing.assert_allclose(rec["pixel_spacing_mm"], [1.367188, 1.367188], rtol=1e-6)
    assert rec["slice_thickness_mm"] == pytest.approx(10.0)
    assert rec["source"] == f"dicoms/SCD0000101/{rec['instance_number']}.dcm"
    # Raw stored pixel values, untouched.
    import pydicom
    ds = pydicom.dcmread(real_subset / rec["source"])
    np.testing.assert_array_equal(rec["image"], ds.pixel_array)
    assert rec["instance_number"] == int(ds.InstanceNumber)
    assert (rec["slice_index"], rec["phase_index"]) == divmod(int(ds.InstanceNumber) - 1, 20)


def _relative_area_errors(records, real_subset, fill):
    errors = []
    for recs in records.values():
        for rec in recs:
            pts = read_contour(_contour_for(real_subset, rec), rec["mask"].shape)
            count = int(fill(rec, pts).sum())
            area, half_perimeter = shoelace_area(pts), perimeter(pts) / 2
            errors.append((abs(count - area), half_perimeter, abs(count - area) / area))
    return errors


def test_masks_agree_with_polygon_area(real_prepared, real_subset):
    errors = _relative_area_errors(_records(real_prepared), real_subset,
                                   lambda rec, pts: rec["mask"] == 1)
    assert len(errors) == 56
    for diff, half_perimeter, _ in errors:
        assert diff <= half_perimeter
    assert np.mean([e[2] for e in errors]) <= 0.04


def test_boundary_inclusive_filling_fails_the_area_check(real_prepared, real_subset):
    """The lab's fillPoly on truncated points includes boundary pixels: the check catches it."""

    def inclusive(rec, pts):
        mask = np.zeros(rec["mask"].shape, bool)
        r, c = pts[:, 1].astype(int), pts[:, 0].astype(int)
        mask[fill_polygon(r, c, mask.shape)] = True
        for i in range(len(r)):  # and every pixel the outline passes through
            mask[line(r[i - 1], c[i - 1], r[i], c[i])] = True
        return mask

    errors = _relative_area_errors(_records(real_prepared), real_subset, inclusive)
    assert np.mean([e[2] for e in errors]) > 0.04


def test_challenge_layout_rebuilt_from_real_files(real_subset, real_prepared, tmp_path):
    series = {"SC-HF-I-1": "0004", "SC-HF-I-2": "0106", "SC-HF-I-4": "0116"}
    contours, images = tmp_path / "contours", tmp_path / "images"
    for pid, oid in ORIGINAL.items():
        padded = oid.rsplit("-", 1)[0] + "-" + oid.rsplit("-", 1)[1].zfill(2)  # SC-HF-I-01
        expert = contours / padded / "contours-manual" / "IRCCI-expert"
        expert.mkdir(parents=True)
        for kind in ("i", "o"):
            for f in (real_subset / "contourfiles" / oid / f"{kind}-contours").glob("*.txt"):
                shutil.copy(f, expert / f.name)
        case_images = images / oid
        case_images.mkdir(parents=True)
        for f in (real_subset / "dicoms" / pid).glob("*.dcm"):
            n = int(f.stem)
            if (expert / f"IM-0001-{n:04d}-icontour-manual.txt").exists():
                shutil.copy(f, case_images / f"IM-{series[oid]}-{n:04d}.dcm")
    out = tmp_path / "data"
    m = prepare(contours, out, images=images, progress=False)
    assert m["source_layout"] == "challenge"
    challenge = _records(out)
    linkcsv = _records(real_prepared)
    assert {k: len(v) for k, v in challenge.items()} == {
        ORIGINAL[p]: n for p, n in EXPECTED.items()}
    for pid, oid in ORIGINAL.items():
        for a, b in zip(linkcsv[pid], challenge[oid], strict=True):
            np.testing.assert_array_equal(a["mask"], b["mask"])
            np.testing.assert_array_equal(a["image"], b["image"])
            assert b["source"].startswith(f"{oid}/IM-{series[oid]}-")
