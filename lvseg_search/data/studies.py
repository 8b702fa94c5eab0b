"""DICOM studies to segment: the DICOM files under a path grouped into studies (one per
folder), and a folder's images split into series (or joined into one stack where a
scanner wrote one series per slice)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search.data.dicom_io import DicomImage
from lvseg_search.errors import UserError


def _is_dicom_name(path: Path) -> bool:
    """``.dcm`` files, and extension-less files with the DICOM preamble (as many
    scanners and PACS exports write them)."""
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix:
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def find_dicoms(source: Path) -> dict[str, list[Path]]:
    """DICOM files under ``source`` grouped into studies (one per folder).

    Raises:
        UserError: ``source`` does not exist or holds no ``.dcm`` file.
    """
    source = Path(source)
    if source.is_file():
        return {source.parent.name or "study": [source]}
    if not source.is_dir():
        raise UserError(f"{source}: no such DICOM file or folder")
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and _is_dicom_name(path):
            rel = path.parent.relative_to(source).as_posix()
            studies[source.name if rel == "." else rel].append(path)
    if not studies:
        raise UserError(f"{source}: no DICOM files found (.dcm, or extension-less files with "
                        "the DICOM preamble); point at a DICOM file or a folder of them")
    return dict(studies)


def split_series(study: str, files: list[Path], images: list[DicomImage]
                 ) -> list[tuple[str, list[Path], list[DicomImage]]]:
    """A folder's images grouped by DICOM series (SeriesInstanceUID, else SeriesNumber).

    A study exported from a scanner or PACS, or a case folder of the 2009 challenge
    release, holds the short-axis cine series beside localizers and long-axis views;
    slices, phases and volumes are only meaningful within one series. Some scanners write
    the short-axis stack one series per slice: parallel single-slice series of the same
    image size and number of phases, at distinct positions, are joined into one stack.

    Returns:
        ``(name, files, images)`` per series or stack in the order first seen: the
        folder's name alone when it holds one, else ``<folder>/series_<SeriesNumber>``
        (``series_<first>-<last>`` for a joined stack).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[im.series_uid or str(im.series_number)].append(i)
    parts = _join_slice_series(list(groups.values()), images)
    if len(parts) == 1:
        return [(study, files, images)]
    labels = []
    for part in parts:
        numbers = sorted({images[i].series_number for i in part})
        labels.append(f"{numbers[0]:04d}" if len(numbers) == 1
                      else f"{numbers[0]:04d}-{numbers[-1]:04d}")
    if len(set(labels)) < len(labels):  # no usable series numbers: count instead
        labels = [f"{k + 1:04d}" for k in range(len(parts))]
    return [(f"{study}/series_{label}", [files[i] for i in part], [images[i] for i in part])
            for label, part in zip(labels, parts, strict=True)]


def _join_slice_series(parts: list[list[int]], images: list[DicomImage]) -> list[list[int]]:
    """Joins series that each hold one slice of the same stack (see :func:`split_series`);
    at least three are needed to call them a stack."""
    def position(i: int) -> float:
        return round(images[i].normal_position_mm, 2)

    candidates: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for k, part in enumerate(parts):
        first = images[part[0]]
        if len({position(i) for i in part}) == 1 and all(
                images[i].image_orientation == first.image_orientation for i in part):
            key = (tuple(np.round(first.image_orientation, 3)), first.pixels.shape, len(part))
            candidates[key].append(k)
    joined: dict[int, list[int]] = {}  # first part of a stack -> all its images
    absorbed: set[int] = set()
    for ks in candidates.values():
        if len(ks) >= 3 and len({position(parts[k][0]) for k in ks}) == len(ks):
            joined[ks[0]] = sorted(i for k in ks for i in parts[k])
            absorbed.update(ks[1:])
    return [joined.get(k, part) for k, part in enumerate(parts) if k not in absorbed]


# Normals of one stack's images may differ by rounding; beyond this angle they are
# different planes (a localizer or a long-axis view mixed into a short-axis stack).
MAX_NORMAL_ANGLE_DEG = 2.0


def geometry_problems(images: list[DicomImage]) -> list[str]:
    """What makes a stack's geometry unusable for volumes, in words (empty when sound):
    missing ImagePositionPatient or ImageOrientationPatient, an image at the origin
    (positions that were never set), mixed orientations, or a stack whose instance
    numbers name several slices that all lie at one position."""
    problems = []
    n = len(images)
    no_position = sum(not im.has_position for im in images)
    if no_position:
        problems.append(f"{no_position} of {n} image(s) have no ImagePositionPatient")
    no_orientation = sum(not im.has_orientation for im in images)
    if no_orientation:
        problems.append(f"{no_orientation} of {n} image(s) have no ImageOrientationPatient")
    at_origin = sum(im.has_position and not np.any(im.image_position) for im in images)
    if at_origin:
        problems.append(f"{at_origin} of {n} image(s) lie at the origin (ImagePositionPatient "
                        "0\\0\\0: positions that were never set)")
    normals = []
    for im in images:
        o = np.asarray(im.image_orientation, dtype=np.float64)
        normal = np.cross(o[:3], o[3:])
        length = np.linalg.norm(normal)
        normals.append(normal / length if length > 0 else normal)
    if normals and any(np.linalg.norm(v) == 0 for v in normals):
        problems.append("ImageOrientationPatient gives no plane (parallel or zero vectors)")
    elif normals:
        cos = min(abs(float(np.dot(normals[0], v))) for v in normals)
        if np.degrees(np.arccos(min(cos, 1.0))) > MAX_NORMAL_ANGLE_DEG:
            problems.append("images of several orientations in one stack (their slice "
                            "normals differ by more than "
                            f"{MAX_NORMAL_ANGLE_DEG:g} degrees)")
    numbered = {(im.instance_number - 1) // im.cardiac_number_of_images for im in images
                if im.cardiac_number_of_images > 0 and im.instance_number > 0}
    positions = {round(im.normal_position_mm, 2) for im in images}
    if not problems and len(numbered) > 1 and len(positions) == 1:
        problems.append("every image lies at one position, although their instance numbers "
                        "name several slices")
    return problems
