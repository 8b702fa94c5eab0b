"""``lvseg-search prepare``: input layout -> per-patient shards + ``manifest.json``."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

from lvseg_search import atomic
from lvseg_search.data import lab_records, layouts, manifest, shards
from lvseg_search.data.groups import sunnybrook_group
from lvseg_search.data.ingest import Slice, pseudonym, read_contoured_slices
from lvseg_search.errors import UserError


def _pseudonymize(slices_by_patient: dict[str, list[Slice]], originals: dict[str, str],
                  salt: str) -> dict[str, list[Slice]]:
    out = {}
    for pid, slices in slices_by_patient.items():
        new = pseudonym(pid, salt)
        names = [n for n in (pid, originals.get(pid)) if n]
        renamed = []
        for s in slices:
            source = s.source
            for name in names:
                source = source.replace(name, new)
            renamed.append(dataclasses.replace(s, patient_id=new, source=source))
        out[new] = renamed
    return out


def _nifti(root: Path, layout: str, classes: str | None, allow_mixed_sizes: bool,
           progress: bool) -> tuple[dict[str, list[Slice]], Any, dict[str, str | None],
                                    dict[str, dict[str, Any]]]:
    """A NIfTI data set's slices, its label plan, groups and per-patient fields.

    Raises:
        UserError: Bad input (see ``nifti_layouts``).
    """
    from lvseg_search.data import nifti_layouts as nl

    chosen = nl.parse_classes_option(classes)
    if layout == "acdc":
        patients = nl.discover_acdc(root)
        labels, source = dict(nl.ACDC_LABELS), "the ACDC convention"
    else:
        patients = nl.discover_nnunet(root)
        _, labels = nl.dataset_labels(root)
        source = str(root / "dataset.json")
    plan = nl.plan_labels(labels, chosen, source)
    slices, scales = nl.read_nifti_slices(patients, plan, root, set(labels), progress)
    sizes = {s.image.shape for group in slices.values() for s in group}
    if len(sizes) > 1 and not allow_mixed_sizes:
        shapes = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise UserError(f"{root}: images come in several sizes ({shapes}); pass "
                        "--allow-mixed-sizes (the physical grid takes any)")
    groups = {p.patient_id: p.group for p in patients}
    extra: dict[str, dict[str, Any]] = {}
    for p in patients:
        fields: dict[str, Any] = {}
        if p.ed_phase is not None:
            fields.update(ed_phase=p.ed_phase, es_phase=p.es_phase)
        if scales.get(p.patient_id, 1.0) != 1.0:
            fields["intensity_scale"] = scales[p.patient_id]
        extra[p.patient_id] = fields
    return slices, plan, groups, extra


def prepare(input_path: Path, out: Path, *, layout: str | None = None,
            images: Path | None = None, myocardium: bool = False,
            pseudonymize: bool = False, salt: str | None = None,
            allow_mixed_sizes: bool = False, accept_image_level_split: bool = False,
            skip_bad_contours: bool = False, classes: str | None = None,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Ingests DICOM + contours (or lab TFRecords) into shards and a manifest.

    Args:
        input_path: Data folder (or a lab ``.tfrecords`` file).
        out: Output data folder; written atomically.
        layout: ``linkcsv``, ``challenge`` or ``lab``; detected when None.
        images: Images root of the challenge layout (default: ``input_path``).
        myocardium: Add class 2 (myocardium) from o-contours; frames with an i-contour
            only keep their blood pool, the rest of them unlabelled.
        pseudonymize: Replace patient ids by salted hashes.
        salt: Salt for pseudonyms; random (and never stored) when None.
        allow_mixed_sizes: Accept images of different sizes.
        accept_image_level_split: Accept lab TFRecords without patient ids.
        skip_bad_contours: Leave out (and count) frames whose o-contour lies inside or
            crosses the i-contour, instead of refusing them.
        classes: ``lv=ID,myo=ID``: which label values of a NIfTI data set are the LV
            blood pool and the myocardium (default: from their names).
        overwrite: Replace a non-empty ``out``.
        progress: Show a progress bar.

    Returns:
        The manifest written.

    Raises:
        UserError: Bad input or options (see the design's "Bad input").
    """
    input_path = Path(input_path)
    layout = layout or layouts.detect_layout(input_path)
    if not input_path.exists():
        raise UserError(f"{input_path}: input does not exist")
    unlabelled: dict[str, int] = {}
    bad_contours: dict[str, int] = {}
    originals: dict[str, str] = {}
    plan = None
    extra: dict[str, dict[str, Any]] = {}
    groups: dict[str, str | None] = {}
    if classes and layout not in ("acdc", "nnunet"):
        raise UserError(f"--classes: the {layout} layout's classes come from its contours; "
                        "drop the option")
    if layout in ("acdc", "nnunet"):
        if myocardium:
            raise UserError(f"--myocardium: the {layout} layout's label maps name their own "
                            "classes; drop the option")
        slices_by_patient, plan, groups, extra = _nifti(input_path, layout, classes,
                                                        allow_mixed_sizes, progress)
    elif layout == "lab":
        if myocardium:
            raise UserError("--myocardium: the lab's TFRecords hold LV labels only; drop it")
        slices_by_patient = lab_records.lab_slices(input_path, accept_image_level_split)
    else:
        if layout == "linkcsv":
            patients = layouts.discover_linkcsv(input_path)
        elif layout == "challenge":
            patients = layouts.discover_challenge(input_path, images)
        else:
            raise UserError(f"--layout: unknown layout {layout!r}; choose one of "
                            f"{', '.join(layouts.LAYOUTS)}")
        unlabelled = {p.patient_id: p.unlabelled_images for p in patients}
        originals = {p.patient_id: p.original_id for p in patients}
        slices_by_patient = read_contoured_slices(patients, [p for p in (images, input_path) if p],
                                          myocardium=myocardium,
                                          allow_mixed_sizes=allow_mixed_sizes,
                                          progress=progress,
                                          skip_bad_contours=skip_bad_contours,
                                          skipped=bad_contours)
    # The cohort (HF-I, HF-NI, HYP, N) of a Sunnybrook case id, to stratify folds by; a
    # NIfTI data set's own group (ACDC's pathology).
    cohorts = {pid: groups.get(pid) or sunnybrook_group(originals.get(pid, ""))
               or sunnybrook_group(pid) for pid in slices_by_patient}
    if pseudonymize:
        salt = salt or secrets.token_hex(16)
        renamed = _pseudonymize(slices_by_patient, originals, salt)
        unlabelled = {pseudonym(k, salt): v for k, v in unlabelled.items()}
        cohorts = {pseudonym(k, salt): v for k, v in cohorts.items()}
        bad_contours = {pseudonym(k, salt): v for k, v in bad_contours.items()}
        extra = {pseudonym(k, salt): v for k, v in extra.items()}
        slices_by_patient = renamed
    result = manifest.build(slices_by_patient, layout, myocardium=myocardium,
                            pseudonymized=pseudonymize, leakage_prone=layout == "lab",
                            unlabelled=unlabelled, groups=cohorts,
                            bad_contours=bad_contours if skip_bad_contours else None,
                            classes=plan.classes if plan is not None else None, extra=extra)
    if plan is not None:
        result["source_labels"] = plan.source_labels()
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        for pid, slices in slices_by_patient.items():
            shards.write_shard(tmp / f"{pid}{shards.SUFFIX}", slices)
        atomic.write_json(tmp / manifest.FILENAME, result)
    return result
