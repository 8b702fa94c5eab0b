"""Finding patients, DICOM frames and their contour files in the supported layouts.

* ``linkcsv``: the Sunnybrook "link.csv" subset layout,
  ``dicoms/<patient_id>/<n>.dcm`` and
  ``contourfiles/<original_id>/{i,o}-contours/IM-0001-<nnnn>-{i,o}contour-manual.txt``.
* ``challenge``: the 2009 challenge release,
  ``<case>/contours-manual/IRCCI-expert/IM-0001-<nnnn>-icontour-manual.txt`` with images in
  ``<images root>/<case>/IM-<series>-<nnnn>.dcm`` (SAX series differs per case).
* ``lab``: the seed lab's TFRecords (``*.tfrecords`` with ``img_raw``/``label_raw``).
* ``acdc`` and ``nnunet``: NIfTI data sets with label maps (``nifti_layouts``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from lvseg_search.errors import UserError

LAYOUTS = ("linkcsv", "challenge", "lab", "acdc", "nnunet")

_CONTOUR_RE = re.compile(r"^IM-\d{4}-(\d{4})-([io])contour-manual\.txt$")

# SAX cine series of each 2009 challenge case (its images are IM-<series>-<nnnn>.dcm).
CHALLENGE_SERIES = {
    "SC-HF-I-1": "0004", "SC-HF-I-2": "0106", "SC-HF-I-4": "0116", "SC-HF-I-40": "0134",
    "SC-HF-NI-3": "0379", "SC-HF-NI-4": "0501", "SC-HF-NI-34": "0446", "SC-HF-NI-36": "0474",
    "SC-HYP-1": "0550", "SC-HYP-3": "0650", "SC-HYP-38": "0734", "SC-HYP-40": "0755",
    "SC-N-2": "0898", "SC-N-3": "0915", "SC-N-40": "0944",
}


@dataclass(frozen=True)
class FrameSource:
    """One contoured frame: its image and its contour files."""

    image: Path
    image_number: int
    icontour: Path
    ocontour: Path | None = None


@dataclass
class PatientSource:
    """One patient's contoured frames, in image-number order."""

    patient_id: str
    original_id: str
    frames: list[FrameSource] = field(default_factory=list)
    unlabelled_images: int = 0


def normalize_case(name: str) -> str:
    """Strips zero padding from a challenge case name (``SC-HF-I-01`` -> ``SC-HF-I-1``)."""
    m = re.match(r"^(.*-)0*(\d+)$", name)
    return f"{m.group(1)}{m.group(2)}" if m else name


def detect_layout(root: Path) -> str:
    """Guesses the layout of ``root``.

    Raises:
        UserError: ``root`` does not exist or matches no known layout.
    """
    if not root.exists():
        raise UserError(f"{root}: input does not exist; pass the folder holding your DICOM "
                        "and contour files")
    if root.is_file():
        if root.suffix in (".tfrecords", ".tfrecord"):
            return "lab"
        raise UserError(f"{root}: input is a file, expected a data folder or a lab "
                        "'.tfrecords' file")
    if (root / "link.csv").is_file():
        return "linkcsv"
    if next(root.glob("**/contours-manual/IRCCI-expert"), None) is not None:
        return "challenge"
    if next(root.glob("*.tfrecords"), None) is not None:
        return "lab"
    if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir():
        return "nnunet"
    if next(root.glob("*/*_frame*_gt.nii*"), None) is not None:
        return "acdc"
    raise UserError(f"{root}: no known layout found (no link.csv, no "
                    "<case>/contours-manual/IRCCI-expert, no *.tfrecords, no nnU-Net "
                    "dataset.json with labelsTr/, no ACDC patient folders); pass --layout "
                    "or check the folder")


def _contours_by_number(folder: Path, kind: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        m = _CONTOUR_RE.match(path.name)
        if m and m.group(2) == kind:
            found[int(m.group(1))] = path
    return found


def _frames(icontours: dict[int, Path], ocontours: dict[int, Path], image_for) -> list[FrameSource]:
    frames = []
    for number, ipath in sorted(icontours.items()):
        image = image_for(number)
        if image is None or not image.is_file():
            raise UserError(f"{ipath}: contour has no matching image "
                            f"({image if image else 'image number ' + str(number)} not found); "
                            "add the DICOM file or remove the contour")
        frames.append(FrameSource(image=image, image_number=number, icontour=ipath,
                                  ocontour=ocontours.get(number)))
    return frames


def discover_linkcsv(root: Path) -> list[PatientSource]:
    """Lists patients of the link.csv layout.

    Raises:
        UserError: link.csv is malformed, a patient lacks its DICOM folder or contours,
            a contour lacks its image, or a DICOM folder is not listed.
    """
    link = root / "link.csv"
    try:
        with link.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{link}: cannot read ({exc.__class__.__name__})") from None
    if not rows or not {"patient_id", "original_id"} <= set(rows[0]):
        raise UserError(f"{link}: expected a header 'patient_id,original_id' and one row per "
                        "patient")
    patients = []
    listed = set()
    for row in rows:
        pid, oid = (row["patient_id"] or "").strip(), (row["original_id"] or "").strip()
        listed.add(pid)
        dicom_dir = root / "dicoms" / pid
        if not dicom_dir.is_dir():
            raise UserError(f"{dicom_dir}: folder listed in {link} for patient {pid} is "
                            "missing; add it or remove the row")
        contour_dir = root / "contourfiles" / oid
        icontours = _contours_by_number(contour_dir / "i-contours", "i")
        if not icontours:
            raise UserError(f"{contour_dir / 'i-contours'}: patient {pid} has no i-contour "
                            "files; add its contours or remove it from link.csv")
        ocontours = _contours_by_number(contour_dir / "o-contours", "o")
        frames = _frames(icontours, ocontours, lambda n, d=dicom_dir: d / f"{n}.dcm")
        n_images = sum(1 for _ in dicom_dir.glob("*.dcm"))
        patients.append(PatientSource(pid, oid, frames, n_images - len(frames)))
    dicoms = root / "dicoms"
    if dicoms.is_dir():
        for folder in sorted(p for p in dicoms.iterdir() if p.is_dir()):
            if folder.name not in listed:
                raise UserError(f"{folder}: patient folder has no contours (not in "
                                f"{link}); add a link.csv row and its contours or move it out")
    return patients


def _case_image_dir(images_root: Path, case: str) -> Path | None:
    wanted = normalize_case(case)
    for folder in sorted(images_root.glob("**/")):
        if normalize_case(folder.name) == wanted and next(folder.glob("IM-*.dcm"), None):
            return folder
    return None


def _challenge_image(folder: Path, case: str, number: int) -> Path | None:
    series = CHALLENGE_SERIES.get(normalize_case(case))
    if series is not None:
        return folder / f"IM-{series}-{number:04d}.dcm"
    candidates = sorted(folder.glob(f"IM-*-{number:04d}.dcm"))
    if len(candidates) > 1:
        raise UserError(f"{folder}: several series hold image {number:04d} "
                        f"({', '.join(c.name for c in candidates)}) and case {case} has no "
                        "known SAX series; keep only the SAX cine series in the folder")
    return candidates[0] if candidates else None


def discover_challenge(root: Path, images_root: Path | None = None) -> list[PatientSource]:
    """Lists cases of the 2009 challenge layout.

    Args:
        root: Folder holding ``<case>/contours-manual/IRCCI-expert``.
        images_root: Folder holding ``<case>/IM-<series>-<nnnn>.dcm``; ``root`` if None.

    Raises:
        UserError: A case has no images or no contours, or a contour lacks its image.
    """
    images_root = images_root or root
    if not images_root.is_dir():
        raise UserError(f"{images_root}: images folder (--images) does not exist")
    patients = []
    for expert in sorted(root.glob("**/contours-manual/IRCCI-expert")):
        case_dir = expert.parent.parent
        case = normalize_case(case_dir.name)
        icontours = _contours_by_number(expert, "i")
        if not icontours:
            raise UserError(f"{expert}: case {case} has no i-contour files; add its contours "
                            "or move the case out")
        image_dir = _case_image_dir(images_root, case_dir.name)
        if image_dir is None:
            raise UserError(f"{images_root}: no image folder for case {case} "
                            f"(expected {case}/IM-<series>-<nnnn>.dcm); pass --images")
        frames = _frames(icontours, _contours_by_number(expert, "o"),
                         lambda n, d=image_dir, c=case: _challenge_image(d, c, n))
        series = {f.image.name.split("-")[1] for f in frames}
        n_images = sum(1 for s in series for _ in image_dir.glob(f"IM-{s}-*.dcm"))
        patients.append(PatientSource(case, case_dir.name, frames, n_images - len(frames)))
    if not patients:
        raise UserError(f"{root}: no <case>/contours-manual/IRCCI-expert folders found")
    return patients
