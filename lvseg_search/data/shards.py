"""Per-patient TFRecord shards, schema version 1 (see the design's data contract)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search._tf import tf
from lvseg_search.data.ingest import Slice
from lvseg_search.errors import UserError

SCHEMA_VERSION = 1
SUFFIX = ".tfrecord"


def _feature_spec() -> dict[str, Any]:
    t = tf()
    fixed = t.io.FixedLenFeature
    return {
        "image": fixed([], t.string),
        "mask": fixed([], t.string),
        "height": fixed([], t.int64),
        "width": fixed([], t.int64),
        "patient_id": fixed([], t.string),
        "slice_index": fixed([], t.int64),
        "phase_index": fixed([], t.int64),
        "instance_number": fixed([], t.int64),
        "pixel_spacing_mm": fixed([2], t.float32),
        "slice_thickness_mm": fixed([], t.float32),
        "slice_position_mm": fixed([3], t.float32),
        "image_orientation": fixed([6], t.float32),
        "trigger_time_ms": fixed([], t.float32),
        "source": fixed([], t.string),
        "schema_version": fixed([], t.int64),
    }


def encode(s: Slice) -> bytes:
    """Serializes one slice as a ``tf.train.Example``."""
    t = tf()

    def b(v: bytes):
        return t.train.Feature(bytes_list=t.train.BytesList(value=[v]))

    def i(v: int):
        return t.train.Feature(int64_list=t.train.Int64List(value=[int(v)]))

    def f(*v: float):
        return t.train.Feature(float_list=t.train.FloatList(value=[float(x) for x in v]))

    h, w = s.image.shape
    features = {
        "image": b(np.ascontiguousarray(s.image, dtype="<i2").tobytes()),
        "mask": b(np.ascontiguousarray(s.mask, dtype=np.uint8).tobytes()),
        "height": i(h),
        "width": i(w),
        "patient_id": b(s.patient_id.encode()),
        "slice_index": i(s.slice_index),
        "phase_index": i(s.phase_index),
        "instance_number": i(s.instance_number),
        "pixel_spacing_mm": f(*s.pixel_spacing_mm),
        "slice_thickness_mm": f(s.slice_thickness_mm),
        "slice_position_mm": f(*s.image_position),
        "image_orientation": f(*s.image_orientation),
        "trigger_time_ms": f(s.trigger_time_ms),
        "source": b(s.source.encode()),
        "schema_version": i(SCHEMA_VERSION),
    }
    return t.train.Example(features=t.train.Features(feature=features)).SerializeToString()


def write_shard(path: Path, slices: Iterable[Slice]) -> int:
    """Writes slices to one TFRecord file and returns how many were written."""
    n = 0
    with tf().io.TFRecordWriter(str(path)) as writer:
        for s in slices:
            writer.write(encode(s))
            n += 1
    return n


def parse(serialized):
    """Parses one serialized example into tensors (``image`` int16 and ``mask`` uint8,
    both ``[H, W]``); usable inside ``tf.data`` maps."""
    t = tf()
    ex = t.io.parse_single_example(serialized, _feature_spec())
    shape = t.stack([ex["height"], ex["width"]])
    ex["image"] = t.reshape(t.io.decode_raw(ex["image"], t.int16, little_endian=True), shape)
    ex["mask"] = t.reshape(t.io.decode_raw(ex["mask"], t.uint8), shape)
    return ex


def dataset(files: list[Path], num_parallel_reads: int | None = None):
    """A ``tf.data`` dataset of parsed examples from shard files (in file order unless
    ``num_parallel_reads`` interleaves them)."""
    t = tf()
    ds = t.data.TFRecordDataset([str(f) for f in files], num_parallel_reads=num_parallel_reads)
    # parse() is plain graph code; autograph would only try (and warn) to convert helpers.
    return ds.map(t.autograph.experimental.do_not_convert(parse),
                  num_parallel_calls=t.data.AUTOTUNE, deterministic=True)


def check_shard(path: Path) -> int:
    """Validates a shard's schema and returns its number of examples.

    Raises:
        UserError: The file is missing, not a TFRecord, or not schema version 1.
    """
    t = tf()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: shard not found; run 'lvseg-search prepare' again")
    count = 0
    try:
        for raw in t.data.TFRecordDataset(str(path)).as_numpy_iterator():
            if count == 0:
                ex = t.train.Example.FromString(raw)
                version = ex.features.feature["schema_version"].int64_list.value
                missing = set(_feature_spec()) - set(ex.features.feature)
                if list(version) != [SCHEMA_VERSION] or missing:
                    raise UserError(
                        f"{path}: not a schema-{SCHEMA_VERSION} lvseg-search shard "
                        f"(schema_version={list(version) or 'missing'}"
                        f"{', missing ' + ', '.join(sorted(missing)) if missing else ''}); "
                        "re-create it with 'lvseg-search prepare'")
            count += 1
    except t.errors.DataLossError:
        raise UserError(f"{path}: not a TFRecord file or truncated; re-create it with "
                        "'lvseg-search prepare'") from None
    return count


def read_shard(path: Path) -> list[dict[str, Any]]:
    """Reads a whole shard into numpy records (for tests, reports and tools)."""
    check_shard(path)
    out = []
    for ex in dataset([path]).as_numpy_iterator():
        ex["patient_id"] = ex["patient_id"].decode()
        ex["source"] = ex["source"].decode()
        out.append(ex)
    return out
