"""The seed lab's TFRecords (``train_images.tfrecords``, ``val_images.tfrecords``).

Each example holds ``img_raw`` (int64 pixels as bytes), ``label_raw`` (uint8 mask
bytes), ``height``, ``width`` and ``depth``, and no patient id: slices of one patient
cannot be kept together, so patient-grouped cross-validation is impossible.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lvseg_search._tf import tf
from lvseg_search.data.ingest import Slice
from lvseg_search.errors import UserError

REFUSAL = ("{path}: the lab's TFRecords carry no patient id, so slices of one patient would "
           "leak between training and validation; pass --accept-image-level-split to use them "
           "anyway (results are marked leakage-prone)")


def lab_files(path: Path) -> list[Path]:
    """The lab TFRecord files at ``path`` (a file or a folder of ``*.tfrecords``)."""
    files = [path] if path.is_file() else sorted(path.glob("*.tfrecords"))
    if not files:
        raise UserError(f"{path}: no *.tfrecords files found")
    return files


def read_lab_tfrecords(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reads one lab TFRecord file.

    Returns:
        ``(image int16 [H, W], mask uint8 [H, W])`` per example.

    Raises:
        UserError: The file is not a lab TFRecord file or its values do not fit.
    """
    t = tf()
    spec = {
        "img_raw": t.io.FixedLenFeature([], t.string),
        "label_raw": t.io.FixedLenFeature([], t.string),
        "height": t.io.FixedLenFeature([], t.int64),
        "width": t.io.FixedLenFeature([], t.int64),
        "depth": t.io.FixedLenFeature([], t.int64, default_value=1),
    }
    out = []
    try:
        for raw in t.data.TFRecordDataset(str(path)).as_numpy_iterator():
            ex = {k: v.numpy() for k, v in t.io.parse_single_example(raw, spec).items()}
            h, w = int(ex["height"]), int(ex["width"])
            image = np.frombuffer(ex["img_raw"], dtype="<i8")
            mask = np.frombuffer(ex["label_raw"], dtype=np.uint8)
            if image.size != h * w or mask.size != h * w:
                raise UserError(f"{path}: example {len(out)} holds {image.size} pixels and "
                                f"{mask.size} labels for a {w}x{h} image; not a lab file")
            if image.min() < -32768 or image.max() > 32767:
                raise UserError(f"{path}: example {len(out)} has pixel values outside int16")
            out.append((image.reshape(h, w).astype(np.int16), mask.reshape(h, w).copy()))
    except (t.errors.DataLossError, t.errors.InvalidArgumentError):
        raise UserError(f"{path}: not a lab TFRecord file (needs img_raw, label_raw, height, "
                        "width); check the file") from None
    if not out:
        raise UserError(f"{path}: holds no examples")
    return out


def lab_slices(path: Path, accept_image_level_split: bool) -> dict[str, list[Slice]]:
    """Converts lab TFRecords to slices, one pseudo-patient per image.

    Args:
        path: A lab ``.tfrecords`` file or a folder of them.
        accept_image_level_split: The user's explicit consent to an image-level split.

    Returns:
        Slices keyed by pseudo-patient id ``<file stem>-<index>``.

    Raises:
        UserError: Consent was not given, or a file is bad.
    """
    if not accept_image_level_split:
        raise UserError(REFUSAL.format(path=path))
    nan = math.nan
    result: dict[str, list[Slice]] = {}
    for file in lab_files(path):
        for i, (image, mask) in enumerate(read_lab_tfrecords(file)):
            pid = f"{file.stem}-{i:05d}"
            result[pid] = [Slice(
                patient_id=pid, image=image, mask=(mask > 0).astype(np.uint8), slice_index=0,
                phase_index=0, instance_number=i + 1, pixel_spacing_mm=(nan, nan),
                slice_thickness_mm=nan, image_position=(nan, nan, nan),
                image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), trigger_time_ms=nan,
                source=f"{file.name}#{i}")]
    return result


def write_lab_tfrecords(path: Path, examples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes examples in the lab's format (to build test fixtures and conversions)."""
    t = tf()
    with t.io.TFRecordWriter(str(path)) as writer:
        for image, mask in examples:
            h, w = image.shape
            feats = {
                "height": t.train.Feature(int64_list=t.train.Int64List(value=[h])),
                "width": t.train.Feature(int64_list=t.train.Int64List(value=[w])),
                "depth": t.train.Feature(int64_list=t.train.Int64List(value=[1])),
                "img_raw": t.train.Feature(bytes_list=t.train.BytesList(
                    value=[image.astype("<i8").tobytes()])),
                "label_raw": t.train.Feature(bytes_list=t.train.BytesList(
                    value=[mask.astype(np.uint8).tobytes()])),
            }
            writer.write(t.train.Example(features=t.train.Features(feature=feats))
                         .SerializeToString())
