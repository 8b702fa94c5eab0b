"""NIfTI volumes as short-axis stacks, read and written with nibabel.

A volume's third axis is its slice axis; slice ``k`` is the image ``data[:, :, k].T``, so
that its rows run along the volume's second axis and its columns along the first, as a
DICOM image's rows and columns do in a volume converted from DICOM. The geometry comes
from the affine, in RAS (NIfTI's convention), and is handed on in DICOM's LPS, as the
shards keep it: each slice's ImagePositionPatient (its first pixel's centre),
ImageOrientationPatient (the directions of a row and of a column) and PixelSpacing
(row, column), so that volumes, EF and LV mass come out of the same code as for DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvseg_search.errors import UserError

SUFFIXES = (".nii.gz", ".nii")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# Raw values must fit the shards' int16; values that are not integers or do not fit are
# rescaled into this range (the networks normalize each image, so a scale changes
# nothing they see).
INT16_RANGE = 32000


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file."""
    return any(str(path).endswith(s) for s in SUFFIXES)


def stem(path: Path) -> str:
    """The file's name without its NIfTI suffix."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Geometry:
    """Where a stack's slices lie (LPS, mm).

    Attributes:
        pixel_spacing_mm: (row, column).
        slice_thickness_mm: The voxel size along the slice axis.
        orientation: ImageOrientationPatient: row direction, then column direction.
        positions: Per slice, ImagePositionPatient of its first pixel.
    """

    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    orientation: tuple[float, float, float, float, float, float]
    positions: tuple[tuple[float, float, float], ...]


def geometry(affine: np.ndarray, n_slices: int) -> Geometry:
    """The stack geometry of a volume's affine (RAS) in LPS."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3]
    along_i, along_j = lps[:, 0], lps[:, 1]
    spacing = (float(np.linalg.norm(along_j)), float(np.linalg.norm(along_i)))
    row_dir = along_i / spacing[1]
    col_dir = along_j / spacing[0]
    positions = tuple(tuple(float(v) for v in lps @ np.array([0.0, 0.0, k, 1.0]))
                      for k in range(n_slices))
    return Geometry(spacing, float(np.linalg.norm(lps[:, 2])),
                    tuple(float(v) for v in (*row_dir, *col_dir)), positions)


def affine_of(pixel_spacing_mm: tuple[float, float], orientation, first_position,
              slice_step) -> np.ndarray:
    """The RAS affine of a stack given in LPS: pixel spacing (row, column), the
    ImageOrientationPatient, the first slice's ImagePositionPatient and the step from one
    slice's position to the next (mm, a vector)."""
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing_mm[1]
    lps[:3, 1] = col_dir * pixel_spacing_mm[0]
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    out = np.eye(4)
    out[:3] = _RAS_TO_LPS @ lps[:3]
    return out


def load(path: Path):
    """Loads a NIfTI file.

    Raises:
        UserError: It cannot be read as NIfTI.
    """
    import nibabel as nib

    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except Exception as exc:  # nibabel raises several types for a bad file
        raise UserError(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}); "
                        "check the file") from None


def read_data(path: Path, img) -> np.ndarray:
    """A loaded NIfTI file's values (nibabel reads them only now).

    Raises:
        UserError: The file is truncated or damaged.
    """
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises OSError, EOFError, zlib errors...
        raise UserError(f"{path}: its data cannot be read ({exc.__class__.__name__}: the "
                        "file is truncated or damaged); restore it") from None


def check_stack(path: Path, img) -> None:
    """A volume whose third axis is its short-axis slice axis, or a one-line refusal.

    Short-axis cine stacks have slices thicker than their pixels (or as thick): a
    volume whose third axis has the finest spacing was stored along another axis.

    Raises:
        UserError: Fewer than 2 or more than 4 dimensions, or a third axis that is not
            the slice axis.
    """
    shape, zooms = img.shape, img.header.get_zooms()
    if len(shape) < 2 or len(shape) > 4:
        raise UserError(f"{path}: a {len(shape)}-D image; expected a short-axis stack "
                        "(x, y, slices) or a cine (x, y, slices, time)")
    if len(shape) >= 3 and shape[2] > 1 and zooms[2] + 1e-6 < min(zooms[0], zooms[1]):
        raise UserError(f"{path}: the third axis ({zooms[2]:g} mm) is finer than the image "
                        f"plane ({zooms[0]:g} x {zooms[1]:g} mm), so it is not a short-axis "
                        "stack's slice axis; reorient the volume so that slices lie along "
                        "its third axis")


def raw_values(path: Path, data: np.ndarray) -> tuple[np.ndarray, float]:
    """Image values as the shards' int16 and the factor they were scaled by (1: kept).

    Raises:
        UserError: Values that are not finite.
    """
    data = np.asarray(data)
    if not np.isfinite(data).all():
        raise UserError(f"{path}: holds values that are not finite numbers; fix the image")
    integral = np.issubdtype(data.dtype, np.integer) or np.array_equal(data, np.round(data))
    if integral and (data.size == 0 or (data.min() >= -32768 and data.max() <= 32767)):
        return data.astype(np.int16), 1.0
    peak = float(np.abs(data).max()) or 1.0
    factor = INT16_RANGE / peak
    return np.round(data * factor).astype(np.int16), factor


def label_values(path: Path, data: np.ndarray, declared: set[int]) -> np.ndarray:
    """A label map's values as integers, each one declared.

    Raises:
        UserError: A 4-D label map, non-integer values, or values not declared.
    """
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] > 1:
        raise UserError(f"{path}: a 4-D label map; give one label map per frame (3-D)")
    if data.ndim == 4:
        data = data[..., 0]
    if not np.array_equal(data, np.round(data)):
        raise UserError(f"{path}: label map holds values that are not integers; labels are "
                        "class ids")
    values = set(np.unique(data).astype(int).tolist())
    unknown = sorted(values - declared)
    if unknown:
        raise UserError(f"{path}: label value(s) {', '.join(map(str, unknown))} are not "
                        f"declared (declared: {', '.join(map(str, sorted(declared)))}); fix "
                        "the labels or the declaration")
    return data.astype(np.int64)


def write(path: Path, data: np.ndarray, affine: np.ndarray, header=None) -> None:
    """Writes a NIfTI file (with ``header``'s fields where given, e.g. the input's)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine, header=header)
    if header is not None:
        img.set_data_dtype(data.dtype)
        img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))
