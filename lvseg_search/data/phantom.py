"""``lvseg-search synth``: a synthetic short-axis cine phantom written as real DICOM
files plus Sunnybrook-format contours in the link.csv layout, so ``prepare`` ingests
it through the same code path as real data.

Per patient: slices from base to apex at several cardiac phases (phase 0 is end
diastole, the middle phase end systole), a bright LV blood pool with papillary
muscles inside a dark myocardial ring, a right-ventricle crescent, chest wall, fat
and lungs, a smooth coil sensitivity bias and Rician noise; heart size, position,
in-plane orientation, contraction and contrast vary per patient. The LV regions are
painted from the very polygons written as contours, so labels match the image.

``truth.json`` beside the data gives what a perfect segmentation would measure, from
the contour polygons themselves: per patient its myocardial wall thickness, EDV, ESV
and LV mass at end-diastole (ring area x slice gap x 1.05 g/mL).

No library generates cardiac MR phantoms with Sunnybrook-format contours, so this
module is written here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from lvseg_search import atomic
from lvseg_search.classes import MYOCARDIAL_DENSITY_G_PER_ML
from lvseg_search.data.contours import rasterize, write_contour
from lvseg_search.errors import UserError

SLICE_GAP_MM = 10.0
TRUTH = "truth.json"
O_CONTOURS = ("all", "ed")
# ``linkcsv``: DICOM and Sunnybrook contours; ``nifti``: ACDC's layout (volumes, label
# maps, Info.cfg); ``nnunet``: nnU-Net's raw layout.
FORMATS = ("linkcsv", "nifti", "nnunet")
# nnU-Net's labels as its ACDC data set names them (Dataset027_ACDC).
NNUNET_LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}


def polygon_area(points: np.ndarray) -> float:
    """A closed polygon's area (shoelace), in the square of its coordinates' unit."""
    x, y = np.asarray(points, dtype=np.float64).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@dataclass(frozen=True)
class Heart:
    """Per-patient random anatomy and acquisition parameters."""

    spacing_mm: float
    thickness_mm: float
    centre: tuple[float, float]  # (x, y) pixels at the base
    drift: tuple[float, float]  # centre shift per slice, pixels
    angle: float  # in-plane orientation, radians
    endo_mm: float  # ED endocardial radius at the base
    ecc: float  # minor / major axis ratio
    wall_mm: float  # ED myocardial thickness
    ef: float  # ejection fraction (area)
    n_slices: int
    blood: float
    myo: float
    tissue: float
    fat: float
    noise: float
    gain: float
    heart_rate: float
    coil: tuple[float, float]
    wobble: tuple[np.ndarray, np.ndarray]  # harmonic amplitudes and phases


def _heart(rng: np.random.Generator, size: int) -> Heart:
    return Heart(
        spacing_mm=float(rng.uniform(1.25, 1.45) * 256 / size),
        thickness_mm=float(rng.choice([8.0, 10.0])),
        centre=tuple(size / 2 + rng.uniform(-0.1, 0.1, 2) * size),
        drift=tuple(rng.uniform(-0.6, 0.6, 2) * size / 256),
        angle=float(rng.uniform(0, 2 * np.pi)),
        endo_mm=float(rng.uniform(21, 29)),
        ecc=float(rng.uniform(0.8, 1.0)),
        wall_mm=float(rng.uniform(7, 11)),
        ef=float(rng.uniform(0.4, 0.7)),
        n_slices=int(rng.integers(6, 10)),
        blood=float(rng.uniform(0.75, 1.0)),
        myo=float(rng.uniform(0.1, 0.22)),
        tissue=float(rng.uniform(0.25, 0.4)),
        fat=float(rng.uniform(0.55, 0.8)),
        noise=float(rng.uniform(0.02, 0.05)),
        gain=float(rng.uniform(400, 1200)),
        heart_rate=float(rng.uniform(55, 90)),
        coil=tuple(rng.uniform(0, 1, 2) * size),
        wobble=(rng.uniform(0, 0.04, 3), rng.uniform(0, 2 * np.pi, 3)),
    )


def _ellipse_polygon(centre, a: float, b: float, angle: float, wobble) -> np.ndarray:
    """Closed polygon (x, y) of a wobbly rotated ellipse, ~0.7 px between points,
    rounded to the two decimals the contour files keep."""
    n = max(24, int(2 * np.pi * max(a, b) / 0.7))
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    amp, ph = wobble
    r = 1 + sum(amp[m] * np.cos((m + 2) * phi + ph[m]) for m in range(len(amp)))
    x, y = a * r * np.cos(phi), b * r * np.sin(phi)
    ca, sa = np.cos(angle), np.sin(angle)
    pts = np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], axis=1)
    return np.round(pts, 2)


def _ellipse_mask(shape, centre, a: float, b: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dx, dy = xx - centre[0], yy - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def render_frame(heart: Heart, size: int, slice_k: int, phase: int, phases: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one frame.

    Returns:
        ``(pixels int16 [size, size], endocardial polygon, epicardial polygon)``,
        polygons as ``[N, 2]`` (x, y) pixel coordinates.
    """
    shape = (size, size)
    px = 1.0 / heart.spacing_mm
    u = slice_k / max(1, heart.n_slices - 1)
    taper = np.sqrt(1 - 0.85 * u**2)  # base (u=0) to apex (u=1)
    contraction = np.sin(np.pi * phase / phases) ** 2  # 0 at ED, 1 at mid-cycle (ES)
    a_ed = heart.endo_mm * taper * px
    b_ed = a_ed * heart.ecc
    wall = heart.wall_mm * px
    myo_area = np.pi * ((a_ed + wall) * (b_ed + wall) - a_ed * b_ed)
    scale = np.sqrt(1 - heart.ef * contraction)
    a, b = a_ed * scale, b_ed * scale
    # The myocardium keeps its area as it contracts, so it thickens at end systole.
    grow = (-(a + b) + np.sqrt((a + b) ** 2 + 4 * myo_area / np.pi)) / 2
    centre = (heart.centre[0] + heart.drift[0] * slice_k,
              heart.centre[1] + heart.drift[1] * slice_k)
    endo = _ellipse_polygon(centre, a, b, heart.angle, heart.wobble)
    epi = _ellipse_polygon(centre, a + grow, b + grow, heart.angle,
                           (heart.wobble[0] * 0.5, heart.wobble[1]))
    endo_mask, epi_mask = rasterize(endo, shape), rasterize(epi, shape)

    img = np.full(shape, 0.02)
    body_c = (size / 2, size / 2 + 0.05 * size)
    img[_ellipse_mask(shape, body_c, 0.46 * size, 0.36 * size, 0.05)] = heart.fat
    img[_ellipse_mask(shape, body_c, 0.43 * size, 0.33 * size, 0.05)] = heart.tissue
    ca, sa = np.cos(heart.angle), np.sin(heart.angle)
    for side in (-1, 1):  # lungs on both sides of the heart, along its septal axis
        lc = (centre[0] - side * sa * 0.3 * size, centre[1] + side * ca * 0.3 * size)
        img[_ellipse_mask(shape, lc, 0.1 * size, 0.15 * size, heart.angle)] = 0.04
    rv_r = (a_ed + wall) * 1.25
    rv_c = (centre[0] + ca * (a + grow + 0.45 * rv_r), centre[1] + sa * (a + grow + 0.45 * rv_r))
    rv_outer = _ellipse_mask(shape, rv_c, rv_r * 0.75 + 2 * px, rv_r + 2 * px, heart.angle)
    rv_blood = _ellipse_mask(shape, rv_c, rv_r * 0.75, rv_r, heart.angle)
    img[rv_outer] = heart.myo
    img[rv_blood & ~epi_mask] = heart.blood * 0.9
    img[epi_mask] = heart.myo
    img[endo_mask] = heart.blood
    if u < 0.8:  # papillary muscles sit inside the blood pool, within the i-contour
        for sign in (-1, 1):
            pc = (centre[0] + 0.55 * a * np.cos(heart.angle + sign * 2.2),
                  centre[1] + 0.55 * b * np.sin(heart.angle + sign * 2.2))
            img[_ellipse_mask(shape, pc, 0.18 * a, 0.14 * a, heart.angle) & endo_mask] = (
                heart.myo * 1.3)
    img = gaussian_filter(img, 0.6)
    yy, xx = np.mgrid[:size, :size]
    d2 = (xx - heart.coil[0]) ** 2 + (yy - heart.coil[1]) ** 2
    img *= 0.55 + 0.9 * np.exp(-d2 / (2 * (0.7 * size) ** 2))
    sigma = heart.noise * heart.blood
    img = np.hypot(img + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    pixels = np.clip(np.round(img * heart.gain), 0, 32767).astype(np.int16)
    return pixels, endo, epi


def _orientation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    row = np.cross(normal, [0.0, 0.0, 1.0])
    row /= np.linalg.norm(row)
    col = np.cross(normal, row)
    return row, col, normal


def _write_dicom(path: Path, pixels: np.ndarray, *, patient: int, seed: int, heart: Heart,
                 instance: int, phases: int, phase: int, position: np.ndarray,
                 row: np.ndarray, col: np.ndarray) -> None:
    uid = generate_uid(entropy_srcs=[str(seed), str(patient), str(instance)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality = "MR"
    ds.Manufacturer = "lvseg-search phantom"
    # Identifying fields are filled like a real study's, so tests can prove they never
    # leave the DICOM files.
    ds.PatientName = f"Phantom^Patient{patient:04d}"
    ds.PatientID = f"SYN{patient:04d}"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), str(patient), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), str(patient), "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(seed), str(patient), "frame"])
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *col)]
    ds.SliceLocation = round(float(position[2]), 3)  # like scanners: not the normal axis
    ds.PixelSpacing = [round(heart.spacing_mm, 6)] * 2
    ds.SliceThickness = heart.thickness_mm
    ds.SpacingBetweenSlices = SLICE_GAP_MM
    ds.TriggerTime = round(60000.0 / heart.heart_rate * phase / phases, 3)
    ds.CardiacNumberOfImages = phases
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def synth(out: Path, patients: int, *, seed: int = 0, size: int = 256, phases: int = 2,
          overwrite: bool = False, progress: bool = True, o_contours: str = "all",
          format: str = "linkcsv") -> list[str]:
    """Writes a phantom data set in the Sunnybrook link.csv layout (or as NIfTI volumes
    with label maps: ACDC's layout, or nnU-Net's; the same images and labels, the
    geometry in the affine).

    Args:
        out: Output folder (written atomically).
        patients: Number of patients (>= 1).
        seed: Random seed; the same seed gives the same files.
        size: Image rows and columns (>= 32).
        phases: Cardiac phases per slice (>= 2: end diastole and end systole).
        overwrite: Replace a non-empty ``out``.
        progress: Show a progress bar.
        o_contours: ``all``: an o-contour for every frame; ``ed``: at end-diastole
            only, as the Sunnybrook experts mostly drew them (``linkcsv`` only).
        format: One of :data:`FORMATS`.

    Returns:
        The patient ids written.

    Raises:
        UserError: An option is out of range or ``out`` is not empty.
    """
    if patients < 1:
        raise UserError(f"--patients: {patients} is not a positive number of patients")
    if size < 32:
        raise UserError(f"--size: {size} is too small, use at least 32 pixels")
    if phases < 2:
        raise UserError(f"--phases: {phases} is too few, need at least 2 (ED and ES)")
    if format not in FORMATS:
        raise UserError(f"--format: unknown {format!r}; choose one of {', '.join(FORMATS)}")
    if o_contours not in O_CONTOURS:
        raise UserError(f"--o-contours: unknown {o_contours!r}; choose one of "
                        f"{', '.join(O_CONTOURS)}")
    truth: dict[str, dict[str, float]] = {}
    ids = [f"SYN{i:04d}" if format == "linkcsv" else f"patient{i:03d}"
           for i in range(1, patients + 1)]
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        if format == "linkcsv":
            with (tmp / "link.csv").open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["patient_id", "original_id"])
                w.writerows([pid, f"SYN-{i}"] for i, pid in enumerate(ids, start=1))
        for i, pid in enumerate(tqdm(ids, desc="synth", unit="patient",
                                     disable=not progress or None, leave=False), start=1):
            rng = np.random.default_rng([seed, i])
            heart = _heart(rng, size)
            row, col, normal = _orientation(rng)
            origin = rng.uniform(-50, 50, 3) - (size / 2) * heart.spacing_mm * (row + col)
            if format == "linkcsv":
                dicom_dir = tmp / "dicoms" / pid
                cdir = tmp / "contourfiles" / f"SYN-{i}"
                for d in (dicom_dir, cdir / "i-contours", cdir / "o-contours"):
                    d.mkdir(parents=True)
            pixel_mm2 = heart.spacing_mm ** 2
            blood = np.zeros(phases)
            ring = np.zeros(phases)
            volumes = np.zeros((phases, heart.n_slices, size, size), np.int16)
            labels = np.zeros((phases, heart.n_slices, size, size), np.uint8)
            for k in range(heart.n_slices):
                position = origin + k * SLICE_GAP_MM * normal
                for p in range(phases):
                    n = k * phases + p + 1
                    pixels, endo, epi = render_frame(heart, size, k, p, phases, rng)
                    if format == "linkcsv":
                        _write_dicom(dicom_dir / f"{n}.dcm", pixels, patient=i, seed=seed,
                                     heart=heart, instance=n, phases=phases, phase=p,
                                     position=position, row=row, col=col)
                        write_contour(cdir / "i-contours"
                                      / f"IM-0001-{n:04d}-icontour-manual.txt", endo)
                        if o_contours == "all" or p == 0:
                            write_contour(cdir / "o-contours"
                                          / f"IM-0001-{n:04d}-ocontour-manual.txt", epi)
                    else:
                        volumes[p, k] = pixels
                        inner = rasterize(endo, (size, size))
                        labels[p, k][rasterize(epi, (size, size))] = 2  # ACDC's myocardium
                        labels[p, k][inner] = 3  # ACDC's LV
                    blood[p] += polygon_area(endo) * pixel_mm2
                    ring[p] += (polygon_area(epi) - polygon_area(endo)) * pixel_mm2
            if format != "linkcsv":
                _write_nifti(tmp, format, pid, volumes, labels, heart, origin, row, col,
                             normal)
            ml = SLICE_GAP_MM / 1000.0
            truth[pid] = {"wall_mm": heart.wall_mm, "edv_ml": float(blood[0] * ml),
                          "esv_ml": float(blood.min() * ml),
                          "lv_mass_ed_g": float(ring[0] * ml * MYOCARDIAL_DENSITY_G_PER_ML)}
        if format == "nnunet":
            atomic.write_json(tmp / "dataset.json", {
                "channel_names": {"0": "cineMRI"}, "labels": NNUNET_LABELS,
                "numTraining": len(ids) * phases, "file_ending": ".nii.gz",
                "name": "lvseg-search phantom"})
        atomic.write_json(tmp / TRUTH, {"source": "contour polygons", "patients": truth})
    return ids


def _write_nifti(root: Path, format: str, pid: str, volumes: np.ndarray, labels: np.ndarray,
                 heart: Heart, origin, row, col, normal) -> None:
    """One patient's frames as NIfTI volumes and label maps (ACDC's values), slices along
    the third axis, in the ACDC or nnU-Net layout."""
    from lvseg_search.data import nifti

    affine = nifti.affine_of((heart.spacing_mm, heart.spacing_mm), (*row, *col), origin,
                             SLICE_GAP_MM * normal)
    phases = volumes.shape[0]
    folder = root / pid
    if format == "nifti":
        folder.mkdir()
        (folder / "Info.cfg").write_text(
            f"ED: 1\nES: {phases // 2 + 1}\nGroup: NOR\nHeight: 170.0\nNbFrame: {phases}\n"
            "Weight: 70.0\n", encoding="utf-8")
    else:
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(exist_ok=True)
    for p in range(phases):
        case = f"{pid}_frame{p + 1:02d}"
        image = np.ascontiguousarray(volumes[p].transpose(2, 1, 0))  # [x, y, slice]
        label = np.ascontiguousarray(labels[p].transpose(2, 1, 0))
        if format == "nifti":
            nifti.write(folder / f"{case}.nii.gz", image, affine)
            nifti.write(folder / f"{case}_gt.nii.gz", label, affine)
        else:
            nifti.write(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
            nifti.write(root / "labelsTr" / f"{case}.nii.gz", label, affine)
