"""NIfTI data sets with label maps, as labelled short-axis slices.

* ``acdc``: ``patientNNN/patientNNN_frameFF.nii.gz`` with ``patientNNN_frameFF_gt.nii.gz``
  label maps (1 right ventricle, 2 myocardium, 3 LV blood pool) and ``Info.cfg`` giving
  the end-diastolic and end-systolic frames (``ED``, ``ES``) and the pathology ``Group``.
* ``nnunet``: the nnU-Net raw layout, ``dataset.json`` naming the channels and the
  labels, ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``. A case named
  ``<patient>_frameFF`` is frame FF of that patient (ACDC converted to nnU-Net's layout
  is named so): a patient's frames go into one shard, so that cross-validation never
  splits them.

Every slice of each labelled frame becomes one shard example of the same schema as a
DICOM frame's. Label values are mapped to the package's classes: 1 the LV blood pool,
2 the myocardium, the data set's other classes (the right ventricle) after them under
their own names; which of the data set's labels are the blood pool and the myocardium
comes from their names, or from ``--classes lv=ID,myo=ID``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search.classes import BLOOD_POOL_NAME, MYOCARDIUM_NAME, Classes
from lvseg_search.data import nifti
from lvseg_search.data.ingest import Slice, relative_source
from lvseg_search.data.pipeline import MAX_CLASSES
from lvseg_search.errors import UserError

# ACDC's label values (Bernard et al. 2018).
ACDC_LABELS = {0: "background", 1: "rv", 2: MYOCARDIUM_NAME, 3: BLOOD_POOL_NAME}
_FRAME_RE = re.compile(r"^(.*)_frame(\d+)$")
_BLOOD_NAMES = {"lv", "lvc", "lv_blood_pool", "lv blood pool", "left ventricle",
                "left_ventricle", "lv cavity", "lv_cavity", "lv_endo", "blood pool",
                "left ventricle cavity", "lv bloodpool"}
_MYO_NAMES = {"myo", "mlv", "myocardium", "lv myocardium", "lv_myocardium", "lv_myo",
              "left ventricle myocardium", "myocardium of left ventricle"}


@dataclass(frozen=True)
class NiftiFrame:
    """One labelled frame: its image, its label map and its frame (phase) index."""

    image: Path
    label: Path
    phase_index: int


@dataclass
class NiftiPatient:
    """A patient's labelled frames, and what the data set says of it."""

    patient_id: str
    frames: list[NiftiFrame] = field(default_factory=list)
    group: str | None = None
    ed_phase: int | None = None
    es_phase: int | None = None


@dataclass(frozen=True)
class LabelPlan:
    """The data set's label values mapped onto the package's classes.

    Attributes:
        classes: The package's classes (1 blood pool, 2 myocardium, then the others).
        mapping: Data set value -> class id.
    """

    classes: Classes
    mapping: dict[int, int]

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Class ids ``uint8`` of a label map's values."""
        table = np.zeros(max(self.mapping) + 1, dtype=np.uint8)
        for value, cls in self.mapping.items():
            table[value] = cls
        return table[labels]

    def source_labels(self) -> dict[str, int]:
        """Each class name's value in the data set."""
        return {self.classes.names[c]: v for v, c in self.mapping.items()}


def parse_classes_option(text: str | None) -> dict[str, int]:
    """``--classes lv=3,myo=2`` as ``{"lv": 3, "myo": 2}`` ({} when not given).

    Raises:
        UserError: Not ``name=integer`` pairs of ``lv`` and ``myo``.
    """
    if not text:
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in ("lv", "myo") or not value.strip().lstrip("-").isdigit():
            raise UserError(f"--classes: {part!r} is not lv=ID or myo=ID (label values of "
                            "the data set), e.g. --classes lv=3,myo=2")
        out[name] = int(value)
    return out


def plan_labels(labels: dict[int, str], chosen: dict[str, int], source: str) -> LabelPlan:
    """Which data set labels are the blood pool and the myocardium, and the classes.

    Args:
        labels: The data set's labels, value -> name (0 the background).
        chosen: ``--classes`` (``lv``, ``myo``): values that override the names.
        source: Where the labels were declared, for messages.

    Raises:
        UserError: No blood pool found, a chosen value not declared, or too many classes.
    """
    by_name = {v: n.strip().lower() for v, n in labels.items()}
    blood = chosen.get("lv", next((v for v, n in by_name.items() if n in _BLOOD_NAMES), None))
    myo = chosen.get("myo", next((v for v, n in by_name.items() if n in _MYO_NAMES), None))
    listed = ", ".join(f"{v} {n}" for v, n in sorted(labels.items()))
    for key, value in (("lv", blood), ("myo", myo)):
        if value is not None and (value not in labels or value == 0):
            raise UserError(f"--classes: {key}={value} is not a foreground label of "
                            f"{source} ({listed})")
    if blood is None:
        raise UserError(f"{source}: no label is named as the LV blood pool ({listed}); pass "
                        "--classes lv=ID (and myo=ID for the myocardium)")
    if blood == myo:
        raise UserError(f"--classes: the blood pool and the myocardium are both {blood}")
    if len(labels) > MAX_CLASSES:
        raise UserError(f"{source}: {len(labels)} classes; at most {MAX_CLASSES} are supported")
    names = ["background", BLOOD_POOL_NAME] + ([MYOCARDIUM_NAME] if myo is not None else [])
    mapping = {0: 0, blood: 1}
    if myo is not None:
        mapping[myo] = 2
    for value in sorted(labels):
        if value not in mapping:
            mapping[value] = len(names)
            names.append(by_name[value].replace(" ", "_"))
    classes = Classes(tuple(names), myocardium=2 if myo is not None else None)
    return LabelPlan(classes, mapping)


def _patient_of(case: str) -> tuple[str, int]:
    """A case's patient and frame index (0-based; 0 without a frame in its name)."""
    m = _FRAME_RE.match(case)
    return (m.group(1), int(m.group(2)) - 1) if m else (case, 0)


def read_info(path: Path) -> dict[str, str]:
    """ACDC's ``Info.cfg`` (``key: value`` lines).

    Raises:
        UserError: The file is missing or unreadable.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"{path}: missing; every ACDC patient folder holds Info.cfg (ED, "
                        "ES, Group); restore it") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def discover_acdc(root: Path) -> list[NiftiPatient]:
    """ACDC's patients and their labelled frames.

    Raises:
        UserError: No patient folder, a patient without labelled frames or without its
            ``Info.cfg``, or an ``Info.cfg`` without ED and ES.
    """
    patients = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        labels = sorted(folder.glob(f"{folder.name}_frame*_gt.nii*"))
        if not labels:
            continue
        info_path = folder / "Info.cfg"
        info = read_info(info_path)
        try:
            ed, es = int(info["ED"]) - 1, int(info["ES"]) - 1
        except (KeyError, ValueError):
            raise UserError(f"{info_path}: no ED and ES frame numbers; restore the file") \
                from None
        patient = NiftiPatient(folder.name, group=info.get("Group"), ed_phase=ed,
                               es_phase=es)
        for label in labels:
            case = nifti.stem(label).removesuffix("_gt")
            image = next((p for p in (folder / f"{case}{s}" for s in nifti.SUFFIXES)
                          if p.is_file()), None)
            if image is None:
                raise UserError(f"{label}: no image {case}.nii.gz beside it; restore it")
            patient.frames.append(NiftiFrame(image, label, _patient_of(case)[1]))
        patients.append(patient)
    if not patients:
        raise UserError(f"{root}: no ACDC patient folder (patientNNN/patientNNN_frameFF_gt"
                        ".nii.gz); check the folder or pass --layout")
    return patients


def dataset_labels(root: Path) -> tuple[dict[str, Any], dict[int, str]]:
    """nnU-Net's ``dataset.json`` and its labels as value -> name (v1 and v2 forms).

    Raises:
        UserError: The file is missing or bad, declares several channels, or labels
            that are regions (lists of values) or not integers.
    """
    path = Path(root) / "dataset.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the nnU-Net layout needs dataset.json") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc.__class__.__name__}); fix the file") \
            from None
    channels = spec.get("channel_names") or spec.get("modality") or {"0": "MRI"}
    if len(channels) != 1:
        raise UserError(f"{path}: {len(channels)} channels; the networks take one (a cine "
                        "MRI); give a data set of one channel")
    raw = spec.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: no labels; declare them as nnU-Net does")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        value_is_int = isinstance(value, int) and not isinstance(value, bool)
        if value_is_int:  # v2: name -> value
            labels[value] = str(key)
        elif str(key).lstrip("-").isdigit() and isinstance(value, str):  # v1: value -> name
            labels[int(key)] = value
        else:
            raise UserError(f"{path}: label {key!r}: {value!r} is not one value (regions "
                            "are not supported); declare one integer per label")
    if 0 not in labels:
        raise UserError(f"{path}: no background label 0; declare it")
    return spec, labels


def discover_nnunet(root: Path) -> list[NiftiPatient]:
    """The training cases of an nnU-Net raw data set, grouped by patient.

    Raises:
        UserError: No ``imagesTr``/``labelsTr``, a case in ``dataset.json`` without its
            files, or a label map without its image.
    """
    root = Path(root)
    spec, _ = dataset_labels(root)
    ending = spec.get("file_ending", ".nii.gz")
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise UserError(f"{root}: no imagesTr/ and labelsTr/; the nnU-Net layout holds both")
    cases: list[str] = []
    if isinstance(spec.get("training"), list):  # v1 lists its cases
        for entry in spec["training"]:
            case = nifti.stem(Path(str(entry.get("label", ""))))
            for needed in (images / f"{case}_0000{ending}", labels / f"{case}{ending}"):
                if not needed.is_file():
                    raise UserError(f"{root / 'dataset.json'}: case {case}: {needed} is "
                                    "missing; restore it or drop the case")
            cases.append(case)
    else:
        cases = sorted(nifti.stem(p) for p in labels.glob(f"*{ending}"))
        for case in cases:
            if not (images / f"{case}_0000{ending}").is_file():
                raise UserError(f"{labels / (case + ending)}: no image {case}_0000{ending} "
                                "in imagesTr; restore it or drop the case")
    expected = spec.get("numTraining")
    if isinstance(expected, int) and expected != len(cases):
        raise UserError(f"{root / 'dataset.json'}: numTraining is {expected} but "
                        f"{len(cases)} case(s) have their files; restore the missing ones")
    if not cases:
        raise UserError(f"{labels}: no label maps; check the folder")
    patients: dict[str, NiftiPatient] = {}
    for case in cases:
        pid, phase = _patient_of(case)
        patients.setdefault(pid, NiftiPatient(pid)).frames.append(
            NiftiFrame(images / f"{case}_0000{ending}", labels / f"{case}{ending}", phase))
    return list(patients.values())


def frame_slices(patient_id: str, frame: NiftiFrame, plan: LabelPlan, root: Path,
                 declared: set[int]) -> tuple[list[Slice], float]:
    """Every slice of one labelled frame, and the factor its values were scaled by.

    Raises:
        UserError: Bad image or label map (see ``nifti``), or the two differ in shape or
            affine.
    """
    img, lab = nifti.load(frame.image), nifti.load(frame.label)
    nifti.check_stack(frame.image, img)
    data = nifti.read_data(frame.image, img)
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise UserError(f"{frame.image}: a 4-D image beside a 3-D label map; give the "
                            "frame's own 3-D image")
        data = data[..., 0]
    labels = nifti.label_values(frame.label, nifti.read_data(frame.label, lab), declared)
    if data.ndim == 2:
        data, labels = data[..., None], labels[..., None] if labels.ndim == 2 else labels
    if data.shape != labels.shape:
        raise UserError(f"{frame.label}: shape {labels.shape} differs from its image's "
                        f"{data.shape}; give the image's own label map")
    if not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise UserError(f"{frame.label}: its affine differs from its image's ({frame.image}); "
                        "give label maps on their image's grid")
    raw, factor = nifti.raw_values(frame.image, data)
    classes = plan.apply(labels)
    geo = nifti.geometry(img.affine, data.shape[2])
    n = data.shape[2]
    slices = [Slice(
        patient_id=patient_id, image=np.ascontiguousarray(raw[:, :, k].T),
        mask=np.ascontiguousarray(classes[:, :, k].T), slice_index=k,
        phase_index=frame.phase_index, instance_number=frame.phase_index * n + k + 1,
        pixel_spacing_mm=geo.pixel_spacing_mm, slice_thickness_mm=geo.slice_thickness_mm,
        image_position=geo.positions[k], image_orientation=geo.orientation,
        trigger_time_ms=float("nan"), source=relative_source(frame.image, [Path(root)]))
        for k in range(n)]
    return slices, factor


def read_nifti_slices(patients: list[NiftiPatient], plan: LabelPlan, root: Path,
                      declared: set[int], progress: bool = True
                      ) -> tuple[dict[str, list[Slice]], dict[str, float]]:
    """Every labelled frame's slices, per patient, in slice then phase order, and each
    patient's intensity scale (1 where its values were kept).

    Raises:
        UserError: As :func:`frame_slices`, or image sizes that differ within a patient.
    """
    from tqdm import tqdm

    out: dict[str, list[Slice]] = {}
    scales: dict[str, float] = {}
    frames = [(p, f) for p in patients for f in p.frames]
    for patient, frame in tqdm(frames, desc="prepare", unit="frame",
                               disable=not progress or None, leave=False):
        slices, factor = frame_slices(patient.patient_id, frame, plan, root, declared)
        out.setdefault(patient.patient_id, []).extend(slices)
        scales[patient.patient_id] = min(scales.get(patient.patient_id, 1.0), factor)
    for slices in out.values():
        slices.sort(key=lambda s: (s.slice_index, s.phase_index))
    return out, scales
