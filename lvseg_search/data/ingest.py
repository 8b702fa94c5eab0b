"""Turning DICOM frames and expert contours into labelled slices (image + mask)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lvseg_search.classes import BLOOD_POOL, IGNORE, MYOCARDIUM
from lvseg_search.data.contours import rasterize, read_contour
from lvseg_search.data.dicom_io import DicomImage, normal_position_mm, read_image
from lvseg_search.data.layouts import PatientSource
from lvseg_search.errors import UserError

# Share of the blood pool that may lie outside the epicardial contour before a contour
# pair counts as crossed (or the o-contour as drawn inside the i-contour). Experts' own
# pairs touch at a thin septum: on the real subset one of 28 pairs puts 1 pixel of the
# blood pool outside.
OUTSIDE_TOLERANCE = 0.02
OUTSIDE_TOLERANCE_PX = 2


@dataclass
class Slice:
    """One labelled frame, ready to be written to a shard (schema 1)."""

    patient_id: str
    image: np.ndarray  # int16 [H, W], raw stored values
    mask: np.ndarray  # uint8 [H, W]: 0 background, 1 LV blood pool, 2 myocardium,
    # classes.IGNORE: not blood pool, not known to be background or myocardium
    slice_index: int
    phase_index: int
    instance_number: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    image_position: tuple[float, float, float]
    image_orientation: tuple[float, float, float, float, float, float]
    trigger_time_ms: float
    source: str  # path relative to the input root


def pseudonym(patient_id: str, salt: str) -> str:
    """Returns a salted, non-reversible stand-in for a patient id."""
    return "P" + hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FrameIndexing:
    """Slice and phase index of each frame of a stack, and how they were found.

    Attributes:
        indices: ``(slice_index, phase_index)`` per frame, in input order.
        source: ``instance numbers`` or ``positions and trigger times``.
        notes: What the cross-check found (empty when both sources agree).
    """

    indices: list[tuple[int, int]]
    source: str
    notes: tuple[str, ...] = ()


def _numbered(images: Sequence[DicomImage]) -> list[tuple[int, int]] | None:
    """Sunnybrook's numbering: frame = slice * phases + phase + 1, with
    CardiacNumberOfImages phases; None where the tags cannot give it."""
    if (all(im.cardiac_number_of_images > 0 and im.instance_number > 0 for im in images)
            and len({im.instance_number for im in images}) == len(images)):
        return [divmod(im.instance_number - 1, im.cardiac_number_of_images) for im in images]
    return None


def _positioned(images: Sequence[DicomImage]) -> list[tuple[int, int]]:
    """Slices ranked along the slice normal; phases by trigger time within a slice (by
    instance number, then input order, where trigger times are missing or tie)."""
    positions = sorted({round(im.normal_position_mm, 2) for im in images})
    slice_of = [positions.index(round(im.normal_position_mm, 2)) for im in images]
    result = []
    for i in range(len(images)):
        same = [j for j in range(len(images)) if slice_of[j] == slice_of[i]]
        order = sorted(same, key=lambda j: (
            images[j].trigger_time_ms if np.isfinite(images[j].trigger_time_ms) else np.inf,
            images[j].instance_number, j))
        result.append((slice_of[i], order.index(i)))
    return result


def _agree(numbered: list[tuple[int, int]], images: Sequence[DicomImage]) -> list[str]:
    """Where the instance numbering contradicts the positions and trigger times."""
    problems = []
    by_slice: dict[int, set[float]] = {}
    for (s, _), im in zip(numbered, images, strict=True):
        by_slice.setdefault(s, set()).add(round(im.normal_position_mm, 2))
    if any(len(p) > 1 for p in by_slice.values()):
        problems.append("frames numbered as one slice lie at different positions")
    firsts = [min(p) for p in by_slice.values()]
    if len(set(firsts)) < len(firsts):
        problems.append("frames numbered as different slices lie at one position")
    for s in by_slice:
        times = [(ph, im.trigger_time_ms) for (sl, ph), im in zip(numbered, images, strict=True)
                 if sl == s and np.isfinite(im.trigger_time_ms)]
        ordered = [tt for _, tt in sorted(times)]
        if any(b < a for a, b in zip(ordered, ordered[1:], strict=False)):
            problems.append("phase numbers run against trigger times")
            break
    return problems


def index_frames(images: Sequence[DicomImage], positions_usable: bool = True) -> FrameIndexing:
    """Slice and phase index of each frame, cross-checked between the instance numbering
    and the geometry (positions along the slice normal, trigger times).

    Sunnybrook numbers frames slice * phases + phase + 1 with CardiacNumberOfImages
    phases. Where that numbering holds and agrees with the positions and trigger times
    it is used; where it contradicts them, or is missing, or instance numbers repeat (a
    stack written one series per slice numbers each series from 1), slices are ranked
    along the slice normal and phases by trigger time.

    Args:
        images: The frames of one stack.
        positions_usable: False where ImagePositionPatient/ImageOrientationPatient are
            missing or inconsistent (see ``studies.geometry_problems``): the numbering
            is then all there is.
    """
    numbered = _numbered(images)
    if numbered is not None:
        if not positions_usable:
            return FrameIndexing(numbered, "instance numbers",
                                 ("slices and phases from InstanceNumber alone: the "
                                  "positions cannot check them",))
        problems = _agree(numbered, images)
        if not problems:
            return FrameIndexing(numbered, "instance numbers")
        return FrameIndexing(_positioned(images), "positions and trigger times",
                             (f"InstanceNumber disagrees with the geometry ({'; '.join(problems)})"
                              ": slices and phases taken from positions and trigger times",))
    return FrameIndexing(_positioned(images), "positions and trigger times")


def frame_indices(images: Sequence[DicomImage]) -> list[tuple[int, int]]:
    """Slice and phase index of each frame (see :func:`index_frames`)."""
    return index_frames(images).indices


def relative_source(path: Path, roots: Sequence[Path]) -> str:
    """A source path as the shards record it: relative to the first root that holds it
    (its name where none does)."""
    path = Path(path).resolve()
    for root in roots:
        if path.is_relative_to(root.resolve()):
            return path.relative_to(root.resolve()).as_posix()
    return path.name


def contour_pair_problem(inner: np.ndarray, outer: np.ndarray) -> str | None:
    """What is wrong with an i-/o-contour pair, rasterized, or None: the blood pool must
    lie inside the epicardial contour (within :data:`OUTSIDE_TOLERANCE`)."""
    outside = int((inner & ~outer).sum())
    if outside <= max(OUTSIDE_TOLERANCE_PX, OUTSIDE_TOLERANCE * int(inner.sum())):
        return None
    if outside == int(inner.sum()) or int((outer & ~inner).sum()) == 0:
        return "the o-contour lies inside the i-contour"
    return (f"the o-contour crosses the i-contour ({outside} of {int(inner.sum())} "
            "blood-pool pixels outside it)")


def read_contoured_slices(patients: Iterable[PatientSource], roots: Sequence[Path],
                  myocardium: bool = False,
                  allow_mixed_sizes: bool = False, progress: bool = True,
                  skip_bad_contours: bool = False,
                  skipped: dict[str, int] | None = None) -> dict[str, list[Slice]]:
    """Reads every contoured frame and rasterizes its mask.

    Args:
        patients: Patients found by :mod:`lvseg_search.data.layouts`.
        roots: Input roots (contours, images); sources are recorded relative to the
            first that holds them.
        myocardium: Add class 2 from o-contours. A frame with an i-contour and no
            o-contour keeps its blood pool; its other pixels get ``classes.IGNORE``
            (not blood pool, not known to be background or myocardium).
        allow_mixed_sizes: Accept images of different sizes (resize at training time).
        progress: Show a progress bar over files.
        skip_bad_contours: Leave out frames whose o-contour lies inside or crosses its
            i-contour (counted in ``skipped``) instead of refusing them.
        skipped: Filled with the frames left out per patient.

    Returns:
        Slices per patient id, in slice then phase order.

    Raises:
        UserError: A DICOM or contour file is bad, a contour pair is inconsistent (unless
            ``skip_bad_contours``), image sizes differ, or a patient is left with no
            labelled frame.
    """
    patients = list(patients)
    frames = [(p, f) for p in patients for f in p.frames]
    images: dict[str, list[tuple[DicomImage, np.ndarray, Path]]] = {p.patient_id: []
                                                                      for p in patients}
    first_shape: tuple[tuple[int, int], Path] | None = None
    for patient, frame in tqdm(frames, desc="prepare", unit="file", disable=not progress or None,
                               leave=False):
        image = read_image(frame.image)
        shape = image.pixels.shape
        if first_shape is None:
            first_shape = (shape, frame.image)
        elif shape != first_shape[0] and not allow_mixed_sizes:
            raise UserError(f"{frame.image}: image is {shape[1]}x{shape[0]} but "
                            f"{first_shape[1]} is {first_shape[0][1]}x{first_shape[0][0]}; "
                            "pass --allow-mixed-sizes and set an image size when searching")
        mask = np.zeros(shape, dtype=np.uint8)
        inner = rasterize(read_contour(frame.icontour, shape), shape)
        if myocardium and frame.ocontour is not None:
            outer = rasterize(read_contour(frame.ocontour, shape), shape)
            problem = contour_pair_problem(inner, outer)
            if problem is not None:
                if not skip_bad_contours:
                    raise UserError(f"{frame.ocontour}: {problem}; fix the contour, or pass "
                                    "--skip-bad-contours to leave such frames out")
                if skipped is not None:
                    skipped[patient.patient_id] = skipped.get(patient.patient_id, 0) + 1
                continue
            mask[outer & ~inner] = MYOCARDIUM
        elif myocardium:
            mask[:] = IGNORE
        mask[inner] = BLOOD_POOL
        images[patient.patient_id].append((image, mask, frame.image))
    result: dict[str, list[Slice]] = {}
    for patient in patients:
        items = images[patient.patient_id]
        if not items:
            raise UserError(f"patient {patient.patient_id}: every contoured frame was left "
                            "out for bad contours; fix them or drop the patient")
        slices = []
        for (image, mask, path), (s, ph) in zip(items, frame_indices([i[0] for i in items]),
                                                strict=True):
            slices.append(Slice(
                patient_id=patient.patient_id, image=image.pixels, mask=mask,
                slice_index=int(s), phase_index=int(ph),
                instance_number=image.instance_number,
                pixel_spacing_mm=image.pixel_spacing_mm,
                slice_thickness_mm=image.slice_thickness_mm,
                image_position=image.image_position,
                image_orientation=image.image_orientation,
                trigger_time_ms=image.trigger_time_ms,
                source=relative_source(path, roots),
            ))
        slices.sort(key=lambda s: (s.slice_index, s.phase_index))
        result[patient.patient_id] = slices
    return result


def distinct_positions(positions_mm: Sequence[float]) -> np.ndarray:
    """The distinct slice positions along the normal (to 0.01 mm), sorted."""
    return np.unique(np.round(np.asarray(positions_mm, dtype=np.float64), 2))


def spacing_along_normal(positions_mm: Sequence[float]) -> float:
    """Spacing between slices: the median step between distinct positions along the
    slice normal (NaN for a single slice)."""
    positions = distinct_positions(positions_mm)
    return float(np.median(np.diff(positions))) if len(positions) > 1 else float("nan")


def slice_spacing_mm(slices: list[Slice]) -> float:
    """Spacing between slices along the slice normal (see :func:`spacing_along_normal`)."""
    return spacing_along_normal([normal_position_mm(s.image_position, s.image_orientation)
                                 for s in slices])
