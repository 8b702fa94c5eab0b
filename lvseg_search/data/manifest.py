"""``manifest.json``: the fingerprint of a prepared data folder."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search import __version__
from lvseg_search.classes import BLOOD_POOL_NAME, IGNORE, MYOCARDIUM_NAME, Classes
from lvseg_search.data.ingest import Slice, slice_spacing_mm
from lvseg_search.data.shards import SCHEMA_VERSION, SUFFIX, check_shard
from lvseg_search.errors import UserError

FILENAME = "manifest.json"
CLASS_NAMES = {0: "background", 1: BLOOD_POOL_NAME, 2: MYOCARDIUM_NAME}


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {}
    return {"min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "std": float(values.std())}


def build(slices_by_patient: dict[str, list[Slice]], layout: str, *, myocardium: bool,
          pseudonymized: bool, leakage_prone: bool = False,
          unlabelled: dict[str, int] | None = None,
          groups: dict[str, str | None] | None = None,
          bad_contours: dict[str, int] | None = None, classes: Classes | None = None,
          extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Builds the manifest of a prepared data folder.

    Args:
        slices_by_patient: Slices written, per (possibly pseudonymized) patient id.
        layout: Input layout name.
        myocardium: Whether class 2 was written.
        pseudonymized: Whether patient ids are salted hashes.
        leakage_prone: True for data without patient ids (image-level splits only).
        unlabelled: DICOM images without contours, per patient, not written.
        groups: A cohort per patient where known (``groups.sunnybrook_group``), kept to
            stratify folds by.
        bad_contours: Frames left out for inconsistent contour pairs, per patient.
        classes: The data set's classes (NIfTI label maps); None: the contours' (the
            blood pool, and the myocardium with ``myocardium``).
        extra: More per-patient fields (the data set's ED and ES frames, an intensity
            scale).

    Returns:
        The manifest as a JSON-ready dict.
    """
    patients = []
    all_pixels = []
    n_classes = classes.count if classes is not None else (3 if myocardium else 2)
    class_counts = np.zeros(n_classes, dtype=np.int64)
    sizes = set()
    partial_total = 0
    for pid, slices in slices_by_patient.items():
        spacing = np.array([s.pixel_spacing_mm for s in slices], dtype=np.float64)
        partial = 0
        for s in slices:
            sizes.add(s.image.shape)
            all_pixels.append(s.image.ravel())
            counts = np.bincount(s.mask.ravel(), minlength=IGNORE + 1)
            class_counts += counts[: class_counts.size]
            partial += int(counts[IGNORE] > 0)
        partial_total += partial
        patients.append({
            "patient_id": pid,
            "shard": pid + SUFFIX,
            "slices": len(slices),
            "slice_positions": len({s.slice_index for s in slices}),
            "phases": len({s.phase_index for s in slices}),
            "unlabelled_images_skipped": int((unlabelled or {}).get(pid, 0)),
            **({"partially_labelled_slices": partial} if myocardium else {}),
            **({"bad_contour_frames_skipped": int(bad_contours.get(pid, 0))}
               if bad_contours else {}),
            "image_size": list(slices[0].image.shape),
            "pixel_spacing_mm": [float(x) for x in np.nanmedian(spacing, axis=0)]
            if np.isfinite(spacing).any() else None,
            "slice_thickness_mm": _finite_or_none(float(slices[0].slice_thickness_mm)),
            "slice_spacing_mm": _finite_or_none(slice_spacing_mm(slices)),
            "group": (groups or {}).get(pid),
            **(extra or {}).get(pid, {}),
        })
    pixels = np.concatenate(all_pixels).astype(np.float64)
    p1, p99 = np.percentile(pixels, [1, 99])
    total = int(class_counts.sum())
    if classes is None:
        classes = Classes(tuple(CLASS_NAMES[k] for k in range(class_counts.size)),
                          myocardium=2 if myocardium else None,
                          ignore=IGNORE if partial_total else None)
    return {
        "schema_version": SCHEMA_VERSION,
        "package": "lvseg-search",
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source_layout": layout,
        # Classes by id, their roles and the label of unlabelled pixels (``classes``).
        **classes.to_json(),
        "partially_labelled_slices": partial_total,
        "pseudonymized": pseudonymized,
        "leakage_prone": leakage_prone,
        "n_patients": len(patients),
        "n_slices": int(sum(p["slices"] for p in patients)),
        "image_sizes": sorted([list(s) for s in sizes]),
        "intensity": {**_stats(pixels), "p1": float(p1), "p99": float(p99)},
        "class_balance": {classes.names[k]: (float(c) / total if total else 0.0)
                          for k, c in enumerate(class_counts)},
        "patients": patients,
    }


def load(data_dir: Path) -> dict[str, Any]:
    """Reads and checks ``manifest.json`` of a prepared data folder.

    Raises:
        UserError: The manifest is missing, not JSON, or of another schema version.
    """
    path = Path(data_dir) / FILENAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; is {data_dir} a folder written by "
                        "'lvseg-search prepare'?") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc.__class__.__name__}); run "
                        "'lvseg-search prepare' again") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema version {manifest.get('schema_version')!r}, this "
                        f"version reads {SCHEMA_VERSION}; run 'lvseg-search prepare' again")
    return manifest


def identity(manifest: dict[str, Any]) -> str:
    """A digest of what a prepared data folder holds (classes, patients, their slices and
    pixel statistics), not of where or when it was written: the same data moved to
    another folder or machine keeps it, other data (even under the same patient ids)
    does not."""
    keys = ("classes", "n_slices", "intensity", "class_balance", "patients")
    picked = {k: manifest.get(k) for k in keys}
    # A patient's group labels the data without changing it (and older manifests have
    # none): the same images keep their identity.
    picked["patients"] = [{k: v for k, v in p.items() if k != "group"}
                          for p in picked["patients"] or []]
    blob = json.dumps(picked, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PreparedData:
    """A prepared data folder with its manifest, read once per command and passed on.

    Attributes:
        root: The folder.
        manifest: Its checked ``manifest.json``.
    """

    root: Path
    manifest: dict[str, Any]

    @property
    def patient_ids(self) -> list[str]:
        """Patient ids in manifest order."""
        return [p["patient_id"] for p in self.manifest["patients"]]

    @property
    def slice_counts(self) -> dict[str, int]:
        """Slices (examples) per patient."""
        return {p["patient_id"]: p["slices"] for p in self.manifest["patients"]}

    @property
    def num_classes(self) -> int:
        """Classes, background included."""
        return len(self.manifest["classes"])

    @property
    def classes(self) -> Classes:
        """The classes, their roles and the ignore label (``lvseg_search.classes``)."""
        return Classes.from_json(self.manifest)

    def patient(self, patient_id: str, hint: str = "") -> dict[str, Any]:
        """One patient's manifest entry.

        Args:
            patient_id: The patient.
            hint: What to tell the user when the patient is unknown.

        Raises:
            UserError: The patient is not in the manifest.
        """
        for p in self.manifest["patients"]:
            if p["patient_id"] == patient_id:
                return p
        raise UserError(f"{self.root}: patient {patient_id} is not in the manifest"
                        + (f"; {hint}" if hint else ""))

    def fingerprint(self, patients: Sequence[str] | None = None) -> str:
        """SHA-256 over shards' names and bytes, in patient order.

        Args:
            patients: The patients whose shards count (default: all).
        """
        digest = hashlib.sha256()
        for pid in sorted(patients if patients is not None else self.patient_ids):
            entry = self.patient(pid)
            digest.update(entry["shard"].encode())
            digest.update(hashlib.sha256((self.root / entry["shard"]).read_bytes()).digest())
        return digest.hexdigest()

    def shard(self, patient_id: str, hint: str = "") -> Path:
        """Path of a patient's shard (see :meth:`patient` for ``hint``)."""
        return self.root / self.patient(patient_id, hint)["shard"]

    def verify(self, patients: Sequence[str] | None = None) -> None:
        """Reads shards to their end and checks their schema and example counts against
        the manifest, so that a truncated or foreign shard stops a command before it
        starts work instead of failing it midway.

        Args:
            patients: The patients to check (default: all).

        Raises:
            UserError: A shard is missing, truncated, of another schema, or holds another
                number of examples than the manifest says (names the file).
        """
        counts = self.slice_counts
        for pid in patients if patients is not None else self.patient_ids:
            path = self.shard(pid)
            found = check_shard(path)
            if found != counts[pid]:
                raise UserError(f"{path}: holds {found} example(s) where the manifest says "
                                f"{counts[pid]}; re-create the folder with 'lvseg-search "
                                "prepare'")

    def slices(self, patients: Sequence[str]) -> int:
        """Number of slices (examples) of ``patients``."""
        counts = self.slice_counts
        return sum(counts[p] for p in patients)


def open_data(data_dir: Path | str) -> PreparedData:
    """Reads a prepared data folder's manifest once (see :func:`load`).

    Raises:
        UserError: As :func:`load`.
    """
    return PreparedData(root=Path(data_dir), manifest=load(Path(data_dir)))
