"""``lvseg-search predict MODEL_DIR DICOM_FILE_OR_DIR --out DIR``: LV masks for new DICOM
images, with areas, per-phase volumes and, for a whole short-axis stack, end-diastolic
and end-systolic volume and ejection fraction.

Each folder of DICOM files is one study. Volumes sum slice areas times the spacing
between slice positions measured along the slice normal (ImagePositionPatient projected
on the normal of ImageOrientationPatient), never SliceLocation, which need not step by
the slice spacing (in the Sunnybrook sample it steps 6.72 mm for slices 10 mm apart).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import binary_erosion

from lvseg_search import atomic
from lvseg_search.dicom_io import DicomImage, read_image
from lvseg_search.errors import UserError
from lvseg_search.ingest import distinct_positions, frame_indices, spacing_along_normal
from lvseg_search.scoring import segment

OVERLAY_COLOUR = np.array([255, 60, 40], dtype=np.float64)


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


def load_model(model_dir: Path):
    """The exported SavedModel's serving function (raw int16 batch -> probabilities, mask).

    Raises:
        UserError: ``model_dir`` is not a folder written by ``export``.
    """
    from lvseg_search.export import SAVED_MODEL, saved_model_runner

    path = Path(model_dir) / SAVED_MODEL
    if not (path / "saved_model.pb").is_file():
        raise UserError(f"{model_dir}: no {SAVED_MODEL}/ inside; pass a folder written by "
                        "'lvseg-search export'")
    return saved_model_runner(path)


def overlay_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """The image (1st-99th percentile window) with the mask tinted and outlined, as PNG."""
    from lvseg_search._tf import tf

    lo, hi = np.percentile(image, [1, 99])
    grey = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    inside = mask.astype(bool)
    edge = inside & ~binary_erosion(inside)
    rgb[inside] = 0.7 * rgb[inside] + 0.3 * OVERLAY_COLOUR
    rgb[edge] = OVERLAY_COLOUR
    return tf().io.encode_png(rgb.round().astype(np.uint8)).numpy()


def stack_volumes(rows: list[dict[str, Any]], normal_positions: list[float]
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-phase LV volumes of one study and, for a whole stack, EDV, ESV and EF.

    Args:
        rows: Per-image rows with ``slice_index``, ``phase_index`` and ``area_mm2``.
        normal_positions: Each image's position along the slice normal (mm).

    Returns:
        Volumes per phase (``phase_index``, ``slices``, ``volume_ml``) and the study
        summary (slice spacing, ED/ES phases and volumes, ejection fraction, or why
        there is none).
    """
    frame = pd.DataFrame(rows)
    positions = distinct_positions(normal_positions)
    spacing = spacing_along_normal(normal_positions)
    slices, phases = frame["slice_index"].nunique(), frame["phase_index"].nunique()
    volumes = (frame.groupby("phase_index")
               .agg(slices=("slice_index", "nunique"), area_mm2=("area_mm2", "sum"))
               .reset_index())
    volumes["volume_ml"] = volumes["area_mm2"] * spacing / 1000.0
    summary: dict[str, Any] = {"images": len(frame), "slices": int(slices),
                               "phases": int(phases), "slice_spacing_mm": spacing}
    complete = (volumes["slices"] == slices).all()
    if slices < 3 or phases < 2 or not complete or len(positions) != slices:
        summary["ejection_fraction"] = None
        summary["why_no_ef"] = (f"not a whole short-axis stack ({slices} slice(s) x {phases} "
                                f"phase(s){'' if complete else ', phases miss slices'}); "
                                "give every slice of every phase")
        return volumes.drop(columns="area_mm2"), summary
    ed = volumes.loc[volumes["volume_ml"].idxmax()]
    es = volumes.loc[volumes["volume_ml"].idxmin()]
    edv, esv = float(ed["volume_ml"]), float(es["volume_ml"])
    summary.update({"ed_phase": int(ed["phase_index"]), "es_phase": int(es["phase_index"]),
                    "edv_ml": edv, "esv_ml": esv, "stroke_volume_ml": edv - esv,
                    "ejection_fraction": (edv - esv) / edv if edv > 0 else None})
    return volumes.drop(columns="area_mm2"), summary


def _predict_series(serve, study: str, files: list[Path], images: list[DicomImage],
                    tmp: Path, overlays: bool, batch_size: int
                    ) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[str, Any]]:
    """Segments one series into ``tmp``: its per-image rows, volumes and summary."""
    _, masks = segment(serve, [im.pixels for im in images], batch_size)
    rows = []
    for path, im, mask, (s, ph) in zip(files, images, masks, frame_indices(images),
                                       strict=True):
        (tmp / "masks" / study).mkdir(parents=True, exist_ok=True)
        np.save(tmp / "masks" / study / f"{path.stem}.npy", mask)
        if overlays:
            (tmp / "overlays" / study).mkdir(parents=True, exist_ok=True)
            (tmp / "overlays" / study / f"{path.stem}.png").write_bytes(
                overlay_png(im.pixels, mask))
        pixel_area = im.pixel_spacing_mm[0] * im.pixel_spacing_mm[1]
        rows.append({"study": study, "file": path.name, "instance_number": im.instance_number,
                     "slice_index": int(s), "phase_index": int(ph),
                     "position_mm": round(im.normal_position_mm, 3),
                     "trigger_time_ms": im.trigger_time_ms, "lv_pixels": int(mask.sum()),
                     "area_mm2": float(mask.sum() * pixel_area)})
    volumes, summary = stack_volumes(rows, [im.normal_position_mm for im in images])
    return rows, volumes, summary


def predict(model_dir: Path, source: Path, out: Path, *, overlays: bool = True,
            batch_size: int = 16, overwrite: bool = False,
            verbose: bool = True) -> dict[str, Any]:
    """Segments DICOM images with an exported model.

    Writes ``masks/<study>/<name>.npy`` (uint8, 1 = LV), ``overlays/<study>/<name>.png``,
    ``areas.csv`` (LV area per image), ``volumes.csv`` (LV volume per study and phase)
    and ``studies.json`` (EDV, ESV and ejection fraction per whole-stack study). A folder
    holding several DICOM series gives one study per series (see :func:`split_series`).

    Args:
        model_dir: A folder written by ``export``.
        source: A DICOM file or a folder of them (each sub-folder one study).
        out: Output folder.
        overlays: Write PNG overlays.
        batch_size: Images per model call.
        overwrite: Replace an existing output folder.
        verbose: Print a summary.

    Returns:
        Per study: its summary (see :func:`stack_volumes`).

    Raises:
        UserError: Bad model folder, missing or unreadable DICOM, or existing ``out``.
    """
    serve = load_model(model_dir)
    studies = find_dicoms(source)
    area_rows: list[dict[str, Any]] = []
    volume_tables = []
    summaries: dict[str, Any] = {}
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        for folder, folder_files in studies.items():
            images = [read_image(f) for f in folder_files]
            for study, files, series in split_series(folder, folder_files, images):
                rows, volumes, summaries[study] = _predict_series(
                    serve, study, files, series, tmp, overlays, batch_size)
                area_rows += rows
                volume_tables.append(volumes.assign(study=study))
        pd.DataFrame(area_rows).to_csv(tmp / "areas.csv", index=False)
        cols = ["study", "phase_index", "slices", "volume_ml"]
        pd.concat(volume_tables)[cols].to_csv(tmp / "volumes.csv", index=False)
        (tmp / "studies.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if verbose:
        for study, s in summaries.items():
            if s.get("ejection_fraction") is not None:
                print(f"{study}: {s['images']} images, {s['slices']} slices x {s['phases']} "
                      f"phases, slice spacing {s['slice_spacing_mm']:.2f} mm: EDV "
                      f"{s['edv_ml']:.1f} ml (phase {s['ed_phase']}), ESV {s['esv_ml']:.1f} ml "
                      f"(phase {s['es_phase']}), EF {100 * s['ejection_fraction']:.1f}%")
            else:
                print(f"{study}: {s['images']} images; no ejection fraction: {s['why_no_ef']}")
        print(f"masks, overlays, areas.csv, volumes.csv, studies.json -> {out}")
    return summaries
