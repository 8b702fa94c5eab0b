"""Reading DICOM images: pixels plus the geometric and timing fields we keep.

Only the tags listed in :func:`read_image` are ever read into our records, so no
identifying field (PatientName, PatientBirthDate, ...) can reach shards or logs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lvseg_search.errors import UserError

# Real scanner files carry UIDs that break the DICOM rules in harmless ways; pydicom
# would warn on each. They say nothing the user can act on.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
_PYDICOM_LOG = logging.getLogger("pydicom")
_PYDICOM_LOG.setLevel(logging.ERROR)


@dataclass(frozen=True)
class DicomImage:
    """One 2-D MR frame and the non-identifying metadata we keep."""

    pixels: np.ndarray  # int16 [rows, cols], raw stored values
    instance_number: int
    pixel_spacing_mm: tuple[float, float]  # (row, col)
    slice_thickness_mm: float
    image_position: tuple[float, float, float]
    image_orientation: tuple[float, float, float, float, float, float]
    trigger_time_ms: float
    cardiac_number_of_images: int  # 0 when the tag is absent
    series_uid: str = ""  # SeriesInstanceUID ("" when absent); groups a folder's series
    series_number: int = 0  # SeriesNumber (0 when absent); names them
    # Whether ImagePositionPatient / ImageOrientationPatient were in the file (the
    # fields above hold stand-ins, the origin and an axial plane, where they were not).
    has_position: bool = True
    has_orientation: bool = True

    @property
    def normal_position_mm(self) -> float:
        """Position of the slice along its normal (ImagePositionPatient . normal)."""
        return normal_position_mm(self.image_position, self.image_orientation)


def normal_position_mm(position: Sequence[float], orientation: Sequence[float]) -> float:
    """ImagePositionPatient projected on the slice normal (the cross product of the two
    ImageOrientationPatient direction cosines), in mm."""
    o = np.asarray(orientation, dtype=np.float64)
    return float(np.dot(np.asarray(position, dtype=np.float64), np.cross(o[:3], o[3:])))


def _floats(ds: pydicom.Dataset, keyword: str, count: int, default: float) -> tuple[float, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return (default,) * count
    values = list(value) if count > 1 else [value]
    return tuple(float(v) for v in values[:count])


@contextlib.contextmanager
def _muted(logger: logging.Logger) -> Iterator[None]:
    # A level, not ``disabled``: pydicom's modules log through child loggers, which
    # inherit the level but not the flag.
    was = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(was)


def read_image(path: Path) -> DicomImage:
    """Reads one single-frame grey-level DICOM image.

    Args:
        path: The ``.dcm`` file.

    Returns:
        The frame's pixels (raw stored values, int16) and metadata.

    Raises:
        UserError: The file is unreadable, not DICOM, or holds no 2-D grey image.
    """
    try:
        # pydicom logs a failed decode with its traceback before raising; the one line
        # below says it all, so its logger is muted while it reads.
        with warnings.catch_warnings(), _muted(_PYDICOM_LOG):
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
    except InvalidDicomError:
        raise UserError(f"{path}: not a DICOM file; remove it or point at the DICOM "
                        "folder") from None
    except (OSError, AttributeError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path}: unreadable DICOM image ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no pixel data'}); "
                        "remove or replace the file") from None
    if pixels.ndim != 2 or ds.get("SamplesPerPixel", 1) != 1:
        raise UserError(f"{path}: expected a single-frame grey-level image, got pixel array "
                        f"of shape {pixels.shape}; remove the file or export single frames")
    if pixels.dtype.kind not in "iu":
        raise UserError(f"{path}: pixel data of type {pixels.dtype} is not integer; "
                        "expected MR magnitude images")
    if pixels.min() < np.iinfo(np.int16).min or pixels.max() > np.iinfo(np.int16).max:
        raise UserError(f"{path}: pixel values {pixels.min()}..{pixels.max()} do not fit int16")
    spacing = _floats(ds, "PixelSpacing", 2, float("nan"))
    return DicomImage(
        pixels=pixels.astype(np.int16),
        instance_number=int(ds.get("InstanceNumber", 0) or 0),
        pixel_spacing_mm=(spacing[0], spacing[1]),
        slice_thickness_mm=_floats(ds, "SliceThickness", 1, float("nan"))[0],
        image_position=_floats(ds, "ImagePositionPatient", 3, 0.0),  # type: ignore[arg-type]
        image_orientation=_floats(ds, "ImageOrientationPatient", 6, 0.0)  # type: ignore[arg-type]
        if ds.get("ImageOrientationPatient") else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        trigger_time_ms=_floats(ds, "TriggerTime", 1, float("nan"))[0],
        cardiac_number_of_images=int(ds.get("CardiacNumberOfImages", 0) or 0),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=int(ds.get("SeriesNumber", 0) or 0),
        has_position=_given(ds, "ImagePositionPatient", 3),
        has_orientation=_given(ds, "ImageOrientationPatient", 6),
    )


def _given(ds: pydicom.Dataset, keyword: str, count: int) -> bool:
    value = ds.get(keyword)
    try:
        return value is not None and value != "" and len(list(value)) == count
    except TypeError:
        return False
