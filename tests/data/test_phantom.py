"""synth -> prepare round trip: shard masks equal the phantom's contours."""

import numpy as np
import pydicom

from lvseg_search.cli import main
from lvseg_search.data import manifest, shards
from lvseg_search.data.contours import rasterize, read_contour


def test_synth_then_prepare_round_trips(tmp_path, capsys):
    phantom, data = tmp_path / "phantom", tmp_path / "data"
    assert main(["synth", "--patients", "6", "--out", str(phantom), "--size", "64",
                 "--seed", "3", "--quiet"]) == 0
    assert main(["prepare", str(phantom), "--out", str(data), "--quiet"]) == 0
    m = manifest.load(data)
    assert m["n_patients"] == 6
    n_checked = 0
    for p in m["patients"]:
        records = shards.read_shard(data / p["shard"])
        assert len(records) == p["slices"] >= 12  # >= 6 slices x (ED, ES)
        assert {r["phase_index"] for r in records} == {0, 1}
        assert len({r["slice_index"] for r in records}) >= 6
        original = "SYN-" + str(int(p["patient_id"][3:]))
        for r in records:
            cfile = (phantom / "contourfiles" / original / "i-contours"
                     / f"IM-0001-{r['instance_number']:04d}-icontour-manual.txt")
            expected = rasterize(read_contour(cfile, (64, 64)), (64, 64))
            np.testing.assert_array_equal(r["mask"] == 1, expected)
            # The blood pool is painted from the same polygon: bright inside, dark ring.
            inside = r["image"][r["mask"] == 1].mean()
            epi = read_contour(cfile.parent.parent / "o-contours" / cfile.name.replace(
                "icontour", "ocontour"), (64, 64))
            ring = rasterize(epi, (64, 64)) & (r["mask"] == 0)
            assert inside > 1.5 * r["image"][ring].mean()
            n_checked += 1
    assert n_checked == m["n_slices"]


def test_phantom_geometry_is_physically_plausible(small_phantom):
    ds = pydicom.dcmread(small_phantom / "dicoms" / "SYN0001" / "1.dcm")
    ds2 = pydicom.dcmread(small_phantom / "dicoms" / "SYN0001" / "3.dcm")  # next slice, ED
    spacing = float(ds.PixelSpacing[0])
    assert 250 < spacing * 48 < 400  # field of view like a cardiac scan
    o = np.array(ds.ImageOrientationPatient, float)
    normal = np.cross(o[:3], o[3:])
    step = np.dot(np.array(ds2.ImagePositionPatient, float) - np.array(
        ds.ImagePositionPatient, float), normal)
    assert abs(abs(step) - 10.0) < 1e-3  # slices 10 mm apart along the normal
    assert float(ds.SliceThickness) in (8.0, 10.0)
    assert ds.pixel_array.dtype == np.int16


def test_synth_is_deterministic_per_seed(tmp_path):
    from lvseg_search.data.phantom import synth

    synth(tmp_path / "a", 2, seed=5, size=48, progress=False)
    synth(tmp_path / "b", 2, seed=5, size=48, progress=False)
    synth(tmp_path / "c", 2, seed=6, size=48, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    a = pydicom.dcmread(tmp_path / "a" / "dicoms" / "SYN0001" / "1.dcm").pixel_array
    c = pydicom.dcmread(tmp_path / "c" / "dicoms" / "SYN0001" / "1.dcm").pixel_array
    assert a.shape != c.shape or not np.array_equal(a, c)
