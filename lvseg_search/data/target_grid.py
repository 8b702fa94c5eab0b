"""The network's physical grid, chosen from the training data.

Every image is resampled to one in-plane pixel size and cut to one square field of view
around its centre (``pipeline.to_grid``), so the network learns the heart's size in mm,
not in the training scanner's pixels. By default the pixel size is the median of the
training images' (no image is resampled far from what it holds) and the field of view
the smallest that, cut around each image's centre, holds every labelled LV pixel of the
training data at any rotation, plus a margin of context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvseg_search.data import shards
from lvseg_search.data.manifest import PreparedData
from lvseg_search.errors import UserError

# Context around the farthest LV pixel, mm on each side: the myocardium (about 10 mm)
# and some of what surrounds it.
MARGIN_MM = 15.0
LV = 1


@dataclass(frozen=True)
class TargetGrid:
    """The network's grid.

    Attributes:
        spacing_mm: Pixel size, mm.
        size: Pixels per side (a multiple of the networks' largest stride).
        field_of_view_mm: The field of view asked for; the grid covers
            ``size * spacing_mm``, at least as much.
        median_spacing_mm: The training images' median pixel size.
        lv_radius_mm: Farthest labelled LV pixel from its image's centre, mm.
    """

    spacing_mm: float
    size: int
    field_of_view_mm: float
    median_spacing_mm: float
    lv_radius_mm: float


def data_geometry(data: PreparedData, patients: Sequence[str]) -> tuple[float, float]:
    """The patients' median pixel size and the farthest distance of a labelled LV pixel
    (its outer corner) from its image's centre, both in mm.

    Raises:
        UserError: No image of the patients has a pixel spacing (the lab's legacy
            records), or none has a labelled LV.
    """
    spacings, radius = [], 0.0
    for pid in patients:
        for r in shards.read_shard(data.shard(pid)):
            sr, sc = (float(v) for v in r["pixel_spacing_mm"])
            if not (math.isfinite(sr) and math.isfinite(sc) and sr > 0 and sc > 0):
                continue
            spacings.append((sr + sc) / 2)
            rows, cols = np.nonzero(r["mask"] == LV)
            if rows.size:
                h, w = r["mask"].shape
                dy = (np.abs(rows + 0.5 - h / 2) + 0.5) * sr
                dx = (np.abs(cols + 0.5 - w / 2) + 0.5) * sc
                radius = max(radius, float(np.sqrt(dy ** 2 + dx ** 2).max()))
    if not spacings:
        raise UserError(f"{data.root}: no image has a pixel spacing (the lab's legacy records "
                        "carry none), so no physical grid can be set; pass --spacing none")
    if radius == 0.0:
        raise UserError(f"{data.root}: no labelled LV in the training patients, so no field of "
                        "view can be derived; pass --field-of-view MM")
    return float(np.median(spacings)), radius


def choose_grid(data: PreparedData, patients: Sequence[str], stride: int, *,
                spacing_mm: float | None = None, field_of_view_mm: float | None = None,
                image_size: int | None = None) -> TargetGrid:
    """Chooses the grid: given values win, the rest comes from the data.

    Two of pixel size, field of view and size decide the third: with ``image_size``
    given, the pixel size is the field of view over it (or, with the pixel size given
    too, the field of view follows); otherwise the size is the field of view over the
    pixel size, rounded up to a multiple of ``stride``.

    Args:
        data: The prepared data folder.
        patients: The patients the search trains and validates on (never test ones).
        stride: The largest downsampling of the space's networks.
        spacing_mm: The pixel size (None: the median of the patients' images).
        field_of_view_mm: The field of view (None: from the patients' LV labels).
        image_size: The network's pixels per side (None: from the two others).

    Raises:
        UserError: A value out of range, all three given, or data without the geometry
            to derive the rest from.
    """
    if spacing_mm is not None and spacing_mm <= 0:
        raise UserError(f"--spacing: {spacing_mm:g} mm must be more than 0 (or 'none')")
    if field_of_view_mm is not None and field_of_view_mm <= 0:
        raise UserError(f"--field-of-view: {field_of_view_mm:g} mm must be more than 0")
    if image_size is not None and spacing_mm is not None and field_of_view_mm is not None:
        raise UserError("--image-size, --spacing and --field-of-view: any two decide the "
                        "third; drop one")
    median, radius = data_geometry(data, patients)
    fov = field_of_view_mm if field_of_view_mm is not None else 2 * (radius + MARGIN_MM)
    if image_size is not None:
        if spacing_mm is not None:
            fov = image_size * spacing_mm
        spacing = spacing_mm if spacing_mm is not None else fov / image_size
        size = image_size
    else:
        spacing = spacing_mm if spacing_mm is not None else median
        size = max(1, math.ceil(fov / spacing / stride)) * stride
    return TargetGrid(spacing_mm=round(float(spacing), 6), size=int(size),
                      field_of_view_mm=round(float(fov), 3), median_spacing_mm=median,
                      lv_radius_mm=radius)
