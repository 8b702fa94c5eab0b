"""The seed lab's TFRecords: refused without consent, converted (leakage-prone) with it."""

import numpy as np

from lvseg_search.cli import main
from lvseg_search.data import manifest, shards
from lvseg_search.data.lab_records import read_lab_tfrecords, write_lab_tfrecords


def _lab_file(path, n=4):
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(n):
        image = rng.integers(0, 900, (32, 32)).astype(np.int64)
        mask = np.zeros((32, 32), np.uint8)
        mask[10:20, 12:22] = 1
        examples.append((image, mask))
    write_lab_tfrecords(path, examples)
    return examples


def test_reader_decodes_int64_pixels_and_uint8_labels(tmp_path):
    examples = _lab_file(tmp_path / "train_images.tfrecords")
    read = read_lab_tfrecords(tmp_path / "train_images.tfrecords")
    assert len(read) == 4
    for (image, mask), (ri, rm) in zip(examples, read, strict=True):
        np.testing.assert_array_equal(image, ri)
        np.testing.assert_array_equal(mask, rm)


def test_refused_without_explicit_consent(tmp_path, capsys):
    _lab_file(tmp_path / "train_images.tfrecords")
    out = tmp_path / "data"
    assert main(["prepare", str(tmp_path / "train_images.tfrecords"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no patient id" in err and "--accept-image-level-split" in err
    assert not out.exists()


def test_accepted_image_level_split_is_marked_leakage_prone(tmp_path, capsys):
    _lab_file(tmp_path / "train_images.tfrecords")
    out = tmp_path / "data"
    assert main(["prepare", str(tmp_path), "--out", str(out),
                 "--accept-image-level-split"]) == 0
    assert "leakage-prone" in capsys.readouterr().out
    m = manifest.load(out)
    assert m["leakage_prone"] is True and m["source_layout"] == "lab" and m["n_slices"] == 4
    records = [r for p in m["patients"] for r in shards.read_shard(out / p["shard"])]
    assert {r["mask"].sum() for r in records} == {100}
    assert main(["split", str(out), "--folds", "2"]) == 0
