"""No identifying DICOM field reaches a shard, manifest or log."""

import pydicom

from lvseg_search.cli import main

IDENTIFYING = [b"Phantom^Patient", b"Phantom", b"19700101"]


def _all_output_bytes(folder):
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_identifying_fields_never_leave_the_dicoms(small_phantom, tmp_path, capsys, caplog):
    ds = pydicom.dcmread(small_phantom / "dicoms" / "SYN0001" / "1.dcm")
    assert str(ds.PatientName).startswith("Phantom^Patient")  # the input does carry them
    assert ds.PatientBirthDate == "19700101"
    out = tmp_path / "data"
    assert main(["prepare", str(small_phantom), "--out", str(out), "--myocardium"]) == 0
    assert main(["split", str(out), "--folds", "2"]) == 0
    captured = capsys.readouterr()
    blob = _all_output_bytes(out) + (captured.out + captured.err + caplog.text).encode()
    for needle in IDENTIFYING:
        assert needle not in blob


def test_pseudonymize_hides_patient_ids_everywhere(small_phantom, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", str(small_phantom), "--out", str(out), "--pseudonymize",
                 "--salt", "s3cret", "--quiet"]) == 0
    captured = capsys.readouterr()
    blob = _all_output_bytes(out) + (captured.out + captured.err).encode()
    for needle in [b"SYN0001", b"SYN0002", b"SYN-1", b"SYN-2", b"s3cret"] + IDENTIFYING:
        assert needle not in blob
    names = sorted(p.name for p in out.glob("*.tfrecord"))
    assert len(names) == 3 and all(n.startswith("P") for n in names)
    # The same salt gives the same pseudonyms, so prepared folders can be compared.
    out2 = tmp_path / "data2"
    assert main(["prepare", str(small_phantom), "--out", str(out2), "--pseudonymize",
                 "--salt", "s3cret", "--quiet"]) == 0
    assert names == sorted(p.name for p in out2.glob("*.tfrecord"))
