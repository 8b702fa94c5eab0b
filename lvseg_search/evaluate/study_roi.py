"""Where a study's LV lies: one centre for the field of view of all its images.

A model with ``roi = localized`` finds the LV in each image on its own. Where the network
calls other tissue LV in some image, and that region is the larger, the image's view is
cut around the wrong tissue and its LV is lost. The heart moves little between the
images of one short-axis study (slices and phases of one series), so the median of the
centres found in its images is where the LV lies in each of them, and a few wrong images
do not move it. ``segment(..., study_roi=True)`` cuts every image's view there; scoring,
``export``'s decision and ``predict`` all segment this way, so the cross-validated figure
is that of the model as ``predict`` serves it.

The centre is in mm from each image's centre along its rows and columns. Images of one
series share their orientation and field of view, so the same offset is the same place
in each of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lvseg_search.model.postprocess import largest_region


def lv_centre_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """The centroid of a mask's largest region, in mm from the image's centre.

    Args:
        mask: ``[H, W]``, nonzero = LV.
        spacing_mm: The image's (row, column) pixel spacing.

    Returns:
        ``[row, column]`` mm; NaN for an empty mask.
    """
    region = largest_region(mask)
    if not region.any():
        return np.full(2, np.nan)
    where = np.array(ndimage.center_of_mass(region))
    centre = np.array(mask.shape, dtype=np.float64) / 2 - 0.5  # as the resampling grids
    return (where - centre) * np.asarray(spacing_mm, dtype=np.float64)


def study_centre_mm(masks: Sequence[np.ndarray],
                    spacing_mm: Sequence[Sequence[float]]) -> np.ndarray:
    """The median, row and column apart, of the LV centres of a study's images.

    Args:
        masks: The study's masks from a first pass, each ``[H, W]``.
        spacing_mm: Each image's (row, column) pixel spacing.

    Returns:
        ``[row, column]`` mm from each image's centre; NaN where no image has an LV
        (the model then cuts each view where it would on its own).
    """
    found = [c for c in (lv_centre_mm(m, s) for m, s in zip(masks, spacing_mm, strict=True))
             if np.isfinite(c).all()]
    return np.median(np.stack(found), axis=0) if found else np.full(2, np.nan)
