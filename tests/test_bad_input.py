"""Every bad input of the design: one clear line naming the file, exit code 2, no
traceback, nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from lvseg_search.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_clean_failure(code, err, out_dir, *needles):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvseg-search: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}*")), "temporary output left behind"


ICONTOUR = "contourfiles/SYN-1/i-contours/IM-0001-0001-icontour-manual.txt"


def test_not_a_dicom_file(phantom_copy, tmp_path, capsys):
    bad = phantom_copy / "dicoms/SYN0001/1.dcm"
    bad.write_bytes(b"this is not DICOM at all")
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          str(bad), "not a DICOM file")


def test_dicom_without_an_image(phantom_copy, tmp_path, capsys):
    bad = phantom_copy / "dicoms/SYN0001/1.dcm"
    ds = pydicom.dcmread(bad)
    del ds.PixelData
    ds.save_as(bad)
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          str(bad), "unreadable DICOM image")


@pytest.mark.parametrize("text,needle", [
    ("10 10\n20 20\n", "a polygon needs at least 3"),
    ("10 10\n20 nan\n15 30\n", "not a finite number"),
    ("10 10\n20 10\n15 90\n", "outside the 48x48 image"),
])
def test_bad_contour(phantom_copy, tmp_path, capsys, text, needle):
    (phantom_copy / ICONTOUR).write_text(text)
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          ICONTOUR.split("/")[-1], needle)


def test_contour_without_matching_image(phantom_copy, tmp_path, capsys):
    (phantom_copy / "dicoms/SYN0001/1.dcm").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          "IM-0001-0001-icontour-manual.txt", "has no matching image")


def test_mixed_image_sizes(phantom_copy, tmp_path, capsys):
    path = phantom_copy / "dicoms/SYN0002/1.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelData = np.zeros((48, 40), "<i2").tobytes()
    ds.Columns = 40
    ds.save_as(path)
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          str(path), "--allow-mixed-sizes")


def test_patient_folder_with_no_contours(phantom_copy, tmp_path, capsys):
    extra = phantom_copy / "dicoms/SYN0099"
    extra.mkdir()
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          str(extra), "patient folder has no contours")


def test_listed_patient_without_contour_files(phantom_copy, tmp_path, capsys):
    for f in (phantom_copy / "contourfiles/SYN-2/i-contours").iterdir():
        f.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out), out,
                          "SYN-2", "no i-contour files")


def test_unknown_layout_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", tmp_path / "empty", "--out", out), out,
                          "no known layout")


def test_existing_output_is_not_clobbered(small_phantom, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(capsys, "prepare", small_phantom, "--out", out)
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").read_text() == "mine"


def test_more_folds_than_patients(small_phantom, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["prepare", str(small_phantom), "--out", str(data), "--quiet"]) == 0
    code, err = _run(capsys, "split", data, "--folds", "5")
    assert code == 2 and "--folds: 5 folds need at least 5 patients" in err
    assert not (data / "splits.json").exists()


def test_tfrecord_with_the_wrong_schema(small_phantom, tmp_path, capsys):
    from lvseg_search.data import shards
    from lvseg_search.data.lab_records import write_lab_tfrecords
    from lvseg_search.errors import UserError

    data = tmp_path / "data"
    assert main(["prepare", str(small_phantom), "--out", str(data), "--quiet"]) == 0
    shard = data / "SYN0001.tfrecord"
    write_lab_tfrecords(shard, [(np.zeros((4, 4), np.int16), np.zeros((4, 4), np.uint8))])
    with pytest.raises(UserError, match="not a schema-1 lvseg-search shard"):
        shards.check_shard(shard)
    shard.write_bytes(b"garbage that is no TFRecord")
    with pytest.raises(UserError, match="not a TFRecord file"):
        shards.check_shard(shard)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (data / "manifest.json").write_text(json.dumps(manifest))
    code, err = _run(capsys, "split", data, "--folds", "2")
    assert code == 2 and "schema version 99" in err and "manifest.json" in err


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_real_process_exit_code_and_no_traceback(phantom_copy, tmp_path):
    (phantom_copy / ICONTOUR).write_text("1 1\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lvseg_search", "prepare", str(phantom_copy),
                           "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lvseg-search")]
    assert len(errors) == 1 and "at least 3" in errors[0]
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("command", ["synth", "split", "search", "demo"])
def test_a_seed_out_of_range_is_one_line(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--seed", "-1"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "--seed" in err
    assert "-1 is not between 0 and" in err and "Traceback" not in err


def test_undecodable_pixel_data_is_one_line_without_pydicoms_traceback(phantom_copy, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    bad = phantom_copy / "dicoms/SYN0001/1.dcm"
    ds = pydicom.dcmread(bad)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream " * 4])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(bad, enforce_file_format=False)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lvseg_search", "prepare", str(phantom_copy),
                           "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2
    # Only our line: pydicom's decoder logs its own traceback unless muted.
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lvseg-search: error: ") and str(bad) in lines[0]
    assert "unreadable DICOM image" in lines[0] and not out.exists()


OCONTOUR = "contourfiles/SYN-1/o-contours/IM-0001-0001-ocontour-manual.txt"


@pytest.mark.parametrize("case,needle", [
    ("inside", "the o-contour lies inside the i-contour"),
    ("crossing", "the o-contour crosses the i-contour"),
])
def test_an_o_contour_inside_or_across_its_i_contour(phantom_copy, tmp_path, capsys, case,
                                                     needle):
    from lvseg_search.data.contours import read_contour

    inner = read_contour(phantom_copy / ICONTOUR, (48, 48))
    centre = inner.mean(axis=0)
    # Inside: the i-contour shrunk to half; crossing: moved by its own radius.
    outer = (centre + 0.5 * (inner - centre) if case == "inside"
             else inner + np.array([np.ptp(inner[:, 0]) / 2, 0.0]))
    outer = np.clip(outer, 0, 47)
    (phantom_copy / OCONTOUR).write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in outer))
    out = tmp_path / "out"
    _assert_clean_failure(*_run(capsys, "prepare", phantom_copy, "--out", out,
                                "--myocardium"), out,
                          str(phantom_copy / OCONTOUR), needle, "--skip-bad-contours")
    # Without --myocardium the o-contours are not read; with --skip-bad-contours the
    # frame is left out and counted.
    assert main(["prepare", str(phantom_copy), "--out", str(out), "--myocardium",
                 "--skip-bad-contours"]) == 0
    assert "1 left out for bad contours" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    first = next(p for p in manifest["patients"] if p["patient_id"] == "SYN0001")
    assert first["bad_contour_frames_skipped"] == 1
    assert main(["prepare", str(phantom_copy), "--out", str(tmp_path / "lv")]) == 0


def test_an_epicardial_objective_without_a_myocardium(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    _assert_clean_failure(*_run(capsys, "search", "--data", tiny_data, "--out", out,
                                "--objective", "epi", "--max-trials", "1"), out,
                          "--objective epi", "has no myocardium", "--myocardium")
