"""``lvseg-search predict MODEL_DIR DICOM_FILE_OR_DIR --out DIR``: LV masks for new DICOM
images, with areas, per-phase volumes and, for a whole short-axis stack, end-diastolic
and end-systolic volume and ejection fraction.

Each folder of DICOM files is one study (``data.studies``); volumes as
``evaluate.volumes`` computes them. A model that locates the LV has every image of a
series cut around the series' LV (``evaluate.study_roi``), as its cross-validated figures
were scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import binary_erosion

from lvseg_search import atomic
from lvseg_search.classes import Classes, regions
from lvseg_search.data.dicom_io import DicomImage, read_image
from lvseg_search.data.ingest import index_frames
from lvseg_search.data.studies import find_dicoms, geometry_problems, split_series
from lvseg_search.errors import UserError
from lvseg_search.evaluate.scoring import segment
from lvseg_search.evaluate.volumes import stack_volumes

OVERLAY_COLOUR = np.array([255, 60, 40], dtype=np.float64)
MYOCARDIUM_COLOUR = np.array([60, 160, 255], dtype=np.float64)


def load_model(model_dir: Path):
    """The exported SavedModel's serving function (raw int16 batch -> probabilities, mask).

    Raises:
        UserError: ``model_dir`` is not a folder written by ``export``.
    """
    from lvseg_search.model.formats import SAVED_MODEL, saved_model_runner

    path = Path(model_dir) / SAVED_MODEL
    if not (path / "saved_model.pb").is_file():
        raise UserError(f"{model_dir}: no {SAVED_MODEL}/ inside; pass a folder written by "
                        "'lvseg-search export'")
    return saved_model_runner(path)


def _card(model_dir: Path) -> dict[str, Any]:
    """The model card ({} where there is none readable)."""
    try:
        card = json.loads((Path(model_dir) / "model_card.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _postprocessing(model_dir: Path) -> dict[str, Any] | None:
    """The model card's ``postprocessing``; None for models exported before the card
    recorded it (or without a readable card)."""
    post = _card(model_dir).get("postprocessing")
    return post if isinstance(post, dict) else None


def model_classes(model_dir: Path) -> Classes:
    """The classes of a model's masks, as its card names them (cards before they did
    name them under ``data``; models without a card segment the LV).

    Raises:
        UserError: The card's classes cannot be read.
    """
    card = _card(model_dir)
    record = card.get("classes") or (card.get("data") or {})
    try:
        return Classes.from_json(record) if record.get("classes") else Classes()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{Path(model_dir) / 'model_card.json'}: unreadable classes; export "
                        "the model again") from None


def keeps_largest_region(model_dir: Path) -> bool:
    """Whether masks are reduced to their largest region: as the model card's
    post-processing says (an export may decide against it); models exported before the
    card recorded it always were."""
    post = _postprocessing(model_dir)
    return True if post is None else bool(post.get("largest_region", True))


def centres_on_study(model_dir: Path, serve) -> bool:
    """Whether each study's views are cut around the study's LV: a model that locates
    the LV (``roi`` localized in its card) and holds the signature that takes a centre
    (models exported before it had one locate the LV in each image on its own)."""
    post = _postprocessing(model_dir)
    return (post is not None and post.get("roi") == "localized"
            and bool(getattr(serve, "at_centre", False)))


def overlay_png(image: np.ndarray, mask: np.ndarray, classes: Classes | None = None) -> bytes:
    """The image (1st-99th percentile window) with the mask tinted and outlined, as PNG:
    the blood pool red with its (endocardial) contour, and with a myocardium that blue
    with the epicardial contour."""
    from lvseg_search._tf import tf

    classes = classes or Classes()
    lo, hi = np.percentile(image, [1, 99])
    grey = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    found = regions(mask, classes)
    if classes.has_myocardium:
        myo = found["myo"]
        rgb[myo] = 0.7 * rgb[myo] + 0.3 * MYOCARDIUM_COLOUR
        epi = found["epi"]
        rgb[epi & ~binary_erosion(epi)] = MYOCARDIUM_COLOUR
    inside = found["endo"]
    edge = inside & ~binary_erosion(inside)
    rgb[inside] = 0.7 * rgb[inside] + 0.3 * OVERLAY_COLOUR
    rgb[edge] = OVERLAY_COLOUR
    return tf().io.encode_png(rgb.round().astype(np.uint8)).numpy()


def parse_pixel_spacing(text: str | None) -> tuple[float, float] | None:
    """``--pixel-spacing R,C`` (mm), or None when not given.

    Raises:
        UserError: Not two positive numbers.
    """
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--pixel-spacing: {text!r} is not two positive sizes in mm; give "
                        "row,column, e.g. 1.25,1.25")
    return values[0], values[1]


def image_spacing(path: Path, image: DicomImage,
                  fallback: tuple[float, float] | None) -> tuple[float, float]:
    """An image's pixel spacing: its DICOM PixelSpacing, else ``--pixel-spacing``.

    Raises:
        UserError: The file has no usable PixelSpacing and none was given.
    """
    spacing = image.pixel_spacing_mm
    if all(np.isfinite(v) and v > 0 for v in spacing):
        return float(spacing[0]), float(spacing[1])
    if fallback is not None:
        return fallback
    found = ("none" if not any(np.isfinite(v) for v in spacing)
             else ", ".join(f"{v:g}" for v in spacing))
    raise UserError(f"{path}: no usable PixelSpacing (found {found}); the model needs each "
                    "image's pixel size: pass --pixel-spacing R,C in mm")


OUTPUTS = ("masks", "overlays", "nifti", "seg")


def _row(study: str, mask: np.ndarray, spacing, classes: Classes, **fields) -> dict[str, Any]:
    """One image's row of ``areas.csv``: its blood pool (and myocardium) area."""
    pixel_area = spacing[0] * spacing[1]
    found = regions(mask, classes)
    blood = int(found["endo"].sum())
    row = {"study": study, **fields, "lv_pixels": blood, "area_mm2": float(blood * pixel_area)}
    if classes.has_myocardium:
        myo = int(found["myo"].sum())
        row.update({"myo_pixels": myo, "myo_area_mm2": float(myo * pixel_area)})
    return row


def _stack_of(images: list[DicomImage], masks: list[np.ndarray],
              indices: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray] | str:
    """A DICOM series' masks as a NIfTI volume ``[columns, rows, slices, phases]`` and its
    affine, or why its geometry gives none."""
    from lvseg_search.data import nifti

    slices = sorted({s for s, _ in indices})
    phases = sorted({p for _, p in indices})
    if len(indices) != len(slices) * len(phases):
        return "the series is not every slice at every phase"
    if len({m.shape for m in masks}) > 1:
        return "its images differ in size"
    first = {s: im for im, (s, p) in zip(images, indices, strict=True) if p == phases[0]}
    positions = np.array([first[s].image_position for s in slices], np.float64)
    step = (np.diff(positions, axis=0).mean(axis=0) if len(slices) > 1
            else np.cross(*np.reshape(first[slices[0]].image_orientation, (2, 3)))
            * first[slices[0]].slice_thickness_mm)
    if len(slices) > 1 and not np.allclose(np.diff(positions, axis=0), step, atol=0.1):
        return "its slices are not evenly spaced"
    rows, cols = masks[0].shape
    volume = np.zeros((cols, rows, len(slices), len(phases)), np.uint8)
    for m, (s, p) in zip(masks, indices, strict=True):
        volume[:, :, slices.index(s), phases.index(p)] = np.asarray(m).T
    im = first[slices[0]]
    return volume, nifti.affine_of(im.pixel_spacing_mm, im.image_orientation,
                                   positions[0], step)


def _predict_series(serve, study: str, files: list[Path], images: list[DicomImage],
                    tmp: Path, outputs: set[str], batch_size: int,
                    spacings: list[tuple[float, float]], largest_region: bool = True,
                    study_roi: bool = False, classes: Classes | None = None,
                    pseudonym: str | None = None, required: frozenset[str] = frozenset()
                    ) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[str, Any]]:
    """Segments one series into ``tmp``: its per-image rows, volumes and summary. A
    viewer file the series cannot give is left out with the reason in the summary,
    unless it is in ``required`` (asked for by name: the command fails)."""
    from lvseg_search.data import nifti

    classes = classes or Classes()
    labels = classes if classes.count > 2 else None
    _, masks = segment(serve, [im.pixels for im in images], spacings, batch_size,
                       largest_region, study_roi, labels)
    problems = geometry_problems(images)
    indexing = index_frames(images, positions_usable=not problems)
    rows = []
    for path, im, mask, (s, ph), spacing in zip(files, images, masks, indexing.indices,
                                                spacings, strict=True):
        if "masks" in outputs:
            (tmp / "masks" / study).mkdir(parents=True, exist_ok=True)
            np.save(tmp / "masks" / study / f"{path.stem}.npy", mask)
        if "overlays" in outputs:
            (tmp / "overlays" / study).mkdir(parents=True, exist_ok=True)
            (tmp / "overlays" / study / f"{path.stem}.png").write_bytes(
                overlay_png(im.pixels, mask, classes))
        rows.append(_row(study, mask, spacing, classes, file=path.name,
                         instance_number=im.instance_number, slice_index=int(s),
                         phase_index=int(ph), position_mm=round(im.normal_position_mm, 3),
                         trigger_time_ms=im.trigger_time_ms))
    volumes, summary = stack_volumes(rows, [im.normal_position_mm for im in images],
                                     problems)
    summary["geometry"] = {"problems": problems, "indices_from": indexing.source,
                           "notes": list(indexing.notes)}
    files_written: dict[str, str] = {}
    if "nifti" in outputs:
        stack = _stack_of(images, masks, indexing.indices) if not problems else \
            "; ".join(problems)
        if isinstance(stack, str):
            if "nifti" in required:
                raise UserError(f"{study}: no NIfTI label map: {stack}; pass --outputs "
                                "without nifti")
            summary["why_no_nifti"] = f"no NIfTI label map: {stack}"
        else:
            target = tmp / "nifti" / f"{study.replace('/', '_')}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            volume, affine = stack
            nifti.write(target, volume if volume.shape[3] > 1 else volume[..., 0], affine)
            files_written["nifti"] = target.relative_to(tmp).as_posix()
    if "seg" in outputs:
        from lvseg_search.data.dicom_seg import SegUnavailable, write_seg

        # One SEG per phase: a SEG's frames of one segment may not share a position, and
        # a cine's phases do.
        (tmp / "seg").mkdir(exist_ok=True)
        written = []
        try:
            if problems:
                raise SegUnavailable("; ".join(problems))
            for phase in sorted({p for _, p in indexing.indices}):
                at = [i for i, (_, p) in enumerate(indexing.indices) if p == phase]
                target = tmp / "seg" / f"{study.replace('/', '_')}_phase{phase:02d}.dcm"
                for note in write_seg(target, [files[i] for i in at],
                                      [masks[i] for i in at], classes, pseudonym):
                    if note not in summary["geometry"]["notes"]:
                        summary["geometry"]["notes"].append(note)
                written.append(target.relative_to(tmp).as_posix())
        except SegUnavailable as exc:
            if "seg" in required:  # asked for by name: the command fails
                raise UserError(f"{files[0].parent}: no DICOM SEG for series {study} "
                                f"({exc}); pass --outputs without seg") from None
            for name in written:
                (tmp / name).unlink()
            written = []
            summary["why_no_seg"] = f"no DICOM SEG: {exc}"
        if written:
            files_written["seg"] = written
    if files_written:
        summary["files"] = files_written
    return rows, volumes, summary


def _nifti_studies(source: Path) -> dict[str, Path] | None:
    """NIfTI images under ``source`` (a file, or a folder's files other than label
    maps), one study each; None where ``source`` is no NIfTI."""
    from lvseg_search.data import nifti

    source = Path(source)
    if source.is_file():
        return {nifti.stem(source): source} if nifti.is_nifti(source) else None
    if not source.is_dir():
        return None
    found = sorted(p for p in source.rglob("*") if p.is_file() and nifti.is_nifti(p)
                   and not nifti.stem(p).endswith("_gt"))
    if not found or any(source.rglob("*.dcm")):
        return None
    return {nifti.stem(p): p for p in found}


def _info_phases(path: Path) -> tuple[int, int] | None:
    """ED and ES frames (0-based) from an ACDC ``Info.cfg`` beside a cine, if any."""
    from lvseg_search.data.nifti_layouts import read_info

    info_path = Path(path).parent / "Info.cfg"
    if not info_path.is_file():
        return None
    info = read_info(info_path)
    try:
        return int(info["ED"]) - 1, int(info["ES"]) - 1
    except (KeyError, ValueError):
        return None


def _predict_nifti(serve, study: str, path: Path, tmp: Path, outputs: set[str],
                   batch_size: int, largest_region: bool, study_roi: bool,
                   classes: Classes) -> tuple[list[dict[str, Any]], pd.DataFrame,
                                              dict[str, Any]]:
    """Segments one NIfTI stack (3-D) or cine (4-D, time last) into ``tmp``: a label map
    with the input's affine and header, and its rows, volumes and summary."""
    from lvseg_search.data import nifti
    from lvseg_search.data.dicom_io import normal_position_mm

    img = nifti.load(path)
    nifti.check_stack(path, img)
    data = nifti.read_data(path, img)
    volume = data.reshape(*data.shape[:2], -1, data.shape[3] if data.ndim == 4 else 1) \
        if data.ndim >= 3 else data[..., None, None]
    raw, _ = nifti.raw_values(path, volume)
    n_slices, n_phases = raw.shape[2], raw.shape[3]
    geo = nifti.geometry(img.affine, n_slices)
    keys = [(k, t) for t in range(n_phases) for k in range(n_slices)]
    images = [np.ascontiguousarray(raw[:, :, k, t].T) for k, t in keys]
    spacings = [geo.pixel_spacing_mm] * len(images)
    labels = classes if classes.count > 2 else None
    # One cine's views are cut around one LV, found over all of its frames.
    _, masks = segment(serve, images, spacings, batch_size, largest_region, study_roi, labels)
    rows, positions = [], []
    for (k, t), image, mask in zip(keys, images, masks, strict=True):
        position = normal_position_mm(geo.positions[k], geo.orientation)
        positions.append(position)
        if "overlays" in outputs:
            (tmp / "overlays" / study).mkdir(parents=True, exist_ok=True)
            (tmp / "overlays" / study / f"slice{k:02d}_frame{t:02d}.png").write_bytes(
                overlay_png(image, mask, classes))
        rows.append(_row(study, mask, geo.pixel_spacing_mm, classes, file=path.name,
                         slice_index=k, phase_index=t, position_mm=round(position, 3)))
    phases = _info_phases(path) if n_phases > 1 else None
    volumes, summary = stack_volumes(rows, positions, ed_es=phases)
    summary["geometry"] = {"problems": [], "indices_from": "NIfTI axes (slices third, "
                           "time fourth)", "notes": []}
    if phases is not None:
        summary["geometry"]["notes"].append("ED and ES frames from Info.cfg")
    if "nifti" in outputs or "masks" in outputs:
        label_map = np.zeros(raw.shape, np.uint8)
        for (k, t), mask in zip(keys, masks, strict=True):
            label_map[:, :, k, t] = np.asarray(mask).T
        label_map = label_map.reshape(data.shape) if data.ndim >= 3 else label_map[..., 0, 0]
        target = tmp / "nifti" / f"{study}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        nifti.write(target, label_map, img.affine, img.header)
        summary["files"] = {"nifti": target.relative_to(tmp).as_posix()}
    return rows, volumes, summary


def parse_outputs(text: str | None, overlays: bool = True) -> set[str]:
    """``--outputs masks,overlays,nifti,seg`` as a set (None: all of them; without
    ``overlays``, all but the overlays).

    Raises:
        UserError: An unknown output.
    """
    if text is None:
        return set(OUTPUTS) - (set() if overlays else {"overlays"})
    chosen = {p.strip() for p in str(text).split(",") if p.strip()}
    unknown = sorted(chosen - set(OUTPUTS))
    if unknown or not chosen:
        raise UserError(f"--outputs: {', '.join(unknown) or 'nothing'} is not a choice; give "
                        f"some of {', '.join(OUTPUTS)}, comma-separated")
    return chosen


def predict(model_dir: Path, source: Path, out: Path, *, overlays: bool = True,
            batch_size: int = 16, overwrite: bool = False, verbose: bool = True,
            pixel_spacing: str | tuple[float, float] | None = None,
            outputs: str | set[str] | None = None,
            pseudonymize: bool = False, salt: str | None = None) -> dict[str, Any]:
    """Segments DICOM images (or NIfTI stacks and cines) with an exported model.

    Writes ``masks/<study>/<name>.npy`` (uint8 class ids as the model card names them:
    1 = LV blood pool, 2 = myocardium where the model segments it),
    ``overlays/<study>/<name>.png``, ``areas.csv`` (blood-pool and myocardial area per
    image), ``volumes.csv`` (volumes per study and phase) and ``studies.json`` (EDV, ESV,
    SV, ejection fraction and LV mass at end-diastole per whole-stack study). A folder
    holding several DICOM series gives one study per series (see :func:`split_series`).
    Per DICOM series also a NIfTI label map of the stack (``nifti/<study>.nii.gz``,
    ``[columns, rows, slices, phases]``, its affine from the DICOM geometry) and a DICOM
    SEG referencing the source images (``seg/<study>.dcm``). A NIfTI input (a 3-D stack
    or a 4-D cine, slices along the third axis) gives its label map with the input's
    affine and header; ED and ES come from an ACDC ``Info.cfg`` beside a cine.

    Args:
        model_dir: A folder written by ``export``.
        source: A DICOM file or a folder of them (each sub-folder one study).
        out: Output folder.
        overlays: Write PNG overlays.
        batch_size: Images per model call.
        overwrite: Replace an existing output folder.
        verbose: Print a summary.
        pixel_spacing: ``R,C`` mm for images whose DICOM has no usable PixelSpacing.
        outputs: Which of :data:`OUTPUTS` to write (``--outputs``; default all).
        pseudonymize: Replace study names by salted hashes in every output and the
            patient's name and id in the DICOM SEG.
        salt: Salt of the pseudonyms (random when None).

    Returns:
        Per study: its summary (see :func:`stack_volumes`).

    Raises:
        UserError: Bad model folder, missing or unreadable DICOM, an image without a
            pixel spacing, or existing ``out`` (nothing is written then).
    """
    fallback = (pixel_spacing if isinstance(pixel_spacing, tuple)
                else parse_pixel_spacing(pixel_spacing))
    chosen = outputs if isinstance(outputs, set) else parse_outputs(outputs, overlays)
    if pseudonymize:
        import secrets

        from lvseg_search.data.ingest import pseudonym

        salt = salt or secrets.token_hex(16)

        def named(study: str) -> str:
            return "/".join(pseudonym(part, salt) for part in study.split("/"))
    else:
        def named(study: str) -> str:
            return study
    serve = load_model(model_dir)
    classes = model_classes(model_dir)
    if classes.count != serve.classes:
        raise UserError(f"{Path(model_dir) / 'model_card.json'}: names {classes.count} classes "
                        f"but the model gives {serve.classes}; the card belongs to another "
                        "model: export it again")
    largest_region = keeps_largest_region(model_dir)
    study_roi = centres_on_study(model_dir, serve)
    nifti_studies = _nifti_studies(source)
    studies = find_dicoms(source) if nifti_studies is None else {}
    area_rows: list[dict[str, Any]] = []
    volume_tables = []
    summaries: dict[str, Any] = {}
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        for name, path in (nifti_studies or {}).items():
            study = named(name)
            rows, volumes, summaries[study] = _predict_nifti(
                serve, study, path, tmp, chosen, batch_size, largest_region, study_roi,
                classes)
            for row in rows:  # a NIfTI file is named after its study
                row["file"] = row["file"].replace(name, study)
            area_rows += rows
            volume_tables.append(volumes.assign(study=study))
        for folder, folder_files in studies.items():
            images = [read_image(f) for f in folder_files]
            for series_name, files, series in split_series(folder, folder_files, images):
                study = named(series_name)
                spacings = [image_spacing(f, im, fallback)
                            for f, im in zip(files, series, strict=True)]
                rows, volumes, summaries[study] = _predict_series(
                    serve, study, files, series, tmp, chosen, batch_size, spacings,
                    largest_region, study_roi, classes,
                    pseudonym=named(folder) if pseudonymize else None,
                    required=frozenset(chosen) if outputs is not None else frozenset())
                area_rows += rows
                volume_tables.append(volumes.assign(study=study))
        pd.DataFrame(area_rows).to_csv(tmp / "areas.csv", index=False)
        cols = ["study", "phase_index", "slices", "volume_ml"] + (
            ["myocardial_volume_ml", "lv_mass_g"] if classes.has_myocardium else [])
        pd.concat(volume_tables)[cols].to_csv(tmp / "volumes.csv", index=False)
        (tmp / "studies.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if verbose:
        for study, s in summaries.items():
            for line in s["geometry"]["problems"] + s["geometry"]["notes"]:
                print(f"{study}: geometry: {line}")
            for key in ("why_no_seg", "why_no_nifti"):
                if key in s:
                    print(f"{study}: {s[key]}")
            if s.get("ejection_fraction") is not None:
                print(f"{study}: {s['images']} images, {s['slices']} slices x {s['phases']} "
                      f"phases, slice spacing {s['slice_spacing_mm']:.2f} mm: EDV "
                      f"{s['edv_ml']:.1f} ml (phase {s['ed_phase']}), ESV {s['esv_ml']:.1f} ml "
                      f"(phase {s['es_phase']}), SV {s['stroke_volume_ml']:.1f} ml, EF "
                      f"{100 * s['ejection_fraction']:.1f}%"
                      + (f", LV mass {s['lv_mass_ed_g']:.1f} g at end-diastole"
                         if s.get("lv_mass_ed_g") is not None else ""))
            else:
                print(f"{study}: {s['images']} images; no ejection fraction: {s['why_no_ef']}"
                      + ("; no LV mass" if "why_no_mass" in s else ""))
        written = [name for name in ("masks", "overlays", "nifti", "seg")
                   if (Path(out) / name).exists()]
        print(", ".join([*written, "areas.csv", "volumes.csv", "studies.json"]) + f" -> {out}")
    return summaries
