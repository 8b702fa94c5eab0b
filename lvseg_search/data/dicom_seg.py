"""Predicted masks as a DICOM Segmentation object (highdicom), which PACS viewers, 3D
Slicer and OHIF open over the source series.

One SEG per series: one frame per segment and source image, each referencing its source
instance; one segment per foreground class, named and coded in SNOMED CT. The SEG
belongs to its patient, so highdicom copies the patient and study modules from the
source images, as the standard requires; nothing of them goes anywhere else. With a
pseudonym the SEG's patient name and id are replaced by it and the birth date left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lvseg_search import __version__
from lvseg_search.classes import Classes


class SegUnavailable(ValueError):
    """Source images that cannot carry a DICOM SEG; the message says why."""

# (category, type) per role; other classes take the generic anatomical structure.
_CODES = {"blood_pool": ("LeftVentricle", "Left ventricle blood pool"),
          "myocardium": ("LeftVentricleMyocardium", "Left ventricle myocardium"),
          "rv": ("RightVentricle", "Right ventricle")}


_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _valid(keyword: str, value) -> bool:
    """Whether a date or time attribute's value parses (any other attribute: yes)."""
    import datetime

    text = str(value or "").strip()
    if not text or not keyword.endswith(("Date", "Time")):
        return True
    try:
        if keyword.endswith("Date"):
            datetime.datetime.strptime(text[:8], "%Y%m%d")
        else:
            datetime.datetime.strptime(text.split(".")[0][:6].ljust(6, "0"), "%H%M%S")
    except ValueError:
        return False
    return True


def _segment(number: int, name: str, role: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    code_name, label = _CODES.get(role or name, ("Heart", name.replace("_", " ")))
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=getattr(codes.SCT, code_name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="lvseg-search", version=__version__,
            family=codes.DCM.ArtificialIntelligence))


def write_seg(path: Path, sources: Sequence[Path], masks: Sequence[np.ndarray],
              classes: Classes, pseudonym: str | None = None) -> list[str]:
    """Writes the masks of one series as a DICOM SEG referencing its source images.

    Args:
        path: The SEG file.
        sources: The series' DICOM files.
        masks: Each source image's class ids ``[rows, cols]``, in the order of ``sources``.
        classes: What the ids stand for.
        pseudonym: Replaces the patient's name and id (and drops the birth date).

    Returns:
        What was done to the sources' attributes to make them one SEG's (empty: none).

    Raises:
        SegUnavailable: The source images cannot carry a SEG (highdicom says why).
    """
    import highdicom as hd
    import pydicom

    datasets = [pydicom.dcmread(str(p)) for p in sources]
    notes = []
    frames = [ds.get("FrameOfReferenceUID") for ds in datasets]
    if len(set(frames)) > 1:
        # One stack (one orientation, positions along one normal: the series was checked
        # before) that an anonymizer gave a frame of reference per image, as the
        # Sunnybrook data's was: a SEG has one, so it takes the most common.
        common = max(set(frames), key=frames.count)
        for ds in datasets:
            ds.FrameOfReferenceUID = common
        notes.append(f"the source images carry {len(set(frames))} FrameOfReferenceUIDs for "
                     "one stack; the DICOM SEG uses the most common")
    for ds in datasets:
        # Type 2 attributes of the modules a SEG copies: present, empty where unknown
        # (exports and anonymizers often drop them; the phantom writes none) or not a
        # valid date or time (anonymizers write 00000000).
        for keyword in _TYPE_2:
            if keyword not in ds or not _valid(keyword, ds.get(keyword)):
                setattr(ds, keyword, "")
    roles = {classes.blood_pool: "blood_pool"}
    if classes.myocardium is not None:
        roles[classes.myocardium] = "myocardium"
    present = [c for c in range(1, classes.count)]
    segments = [_segment(k, classes.names[c], roles.get(c))
                for k, c in enumerate(present, start=1)]
    # One binary frame per segment and image: [images, rows, cols, segments].
    stack = np.stack([np.stack([np.asarray(m) == c for c in present], -1) for m in masks])
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=stack.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lvseg-search",
            manufacturer_model_name="lvseg-search", software_versions=__version__,
            device_serial_number="none", omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SegUnavailable(str(exc)) from None
    if pseudonym is not None:
        seg.PatientName = pseudonym
        seg.PatientID = pseudonym
        seg.PatientBirthDate = ""
    seg.save_as(str(path))
    return notes
