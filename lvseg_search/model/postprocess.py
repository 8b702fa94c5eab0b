"""Post-processing of predicted LV masks: keep the largest connected region, optionally
filled to its convex hull.

The LV blood pool of a short-axis slice is one connected region, so any other region a
network predicts is a false positive (typically part of the right ventricle or a bright
vessel). Removing all but the largest region is nnU-Net's standard post-processing; on
the real Sunnybrook subset it raised the best search's fold Dice by 0.03-0.05. The
search scores masks after this step, and ``predict`` delivers them after it, so the
objective is the quality users get. SciPy's labelling does the connected components;
the exported models do the same inside their graph (``serving_layers.LargestRegion``, tested
equal to this).

A second, optional step fills the largest region's convex hull. The endocardial contour
of the Sunnybrook experts (and of most clinical guidelines) encloses the papillary
muscles and trabeculations with the blood pool, where a network tends to follow the
bright blood and leaves notches; the hull closes them. Whether it helps is decided per
trial by the out-of-fold CV Dice (``evaluate.decision``), never assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from lvseg_search.classes import Classes


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a 2-D mask.

    Args:
        mask: Boolean or 0/1 mask ``[H, W]``.

    Returns:
        A boolean mask holding only the largest region (all False when ``mask`` is
        empty; the first of equally large regions).
    """
    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _binary(classes: Classes | None) -> bool:
    return classes is None or (not classes.has_myocardium and classes.count == 2)


def keep_largest_regions(masks: Iterable[np.ndarray],
                         classes: Classes | None = None) -> list[np.ndarray]:
    """:func:`largest_region` of each mask, in the masks' dtype; of label maps with
    more classes, per contour (:func:`per_contour`)."""
    if _binary(classes):
        return [largest_region(m).astype(np.asarray(m).dtype) for m in masks]
    return [per_contour(m, classes, largest_region, others=True) for m in masks]


def per_contour(labels: np.ndarray, classes: Classes,
                step: Callable[[np.ndarray], np.ndarray], others: bool = False) -> np.ndarray:
    """A post-processing step applied to a label map's contours: to the blood pool
    (the endocardial region) and to the blood pool with the myocardium (the
    epicardial region); the myocardium is then the ring between the two, and a pixel
    inside the endocardial region is blood pool. Other classes are kept where they lie
    outside the epicardial region (each through ``step`` too, with ``others``).

    Args:
        labels: Class ids ``[H, W]``.
        classes: The classes.
        step: Binary mask -> binary mask (``largest_region``, ``convex_hull``).
        others: Apply ``step`` to the other classes too.

    Returns:
        Class ids ``[H, W]`` in ``labels``' dtype.
    """
    labels = np.asarray(labels)
    endo = step(labels == classes.blood_pool)
    epi = step(np.isin(labels, classes.epicardial)) | endo
    out = np.zeros_like(labels)
    for c in range(1, classes.count):
        if c not in classes.epicardial:
            region = labels == c
            out[(step(region) if others else region) & ~epi] = c
    if classes.has_myocardium:
        out[epi] = classes.myocardium
    out[endo] = classes.blood_pool
    return out


# Directions of the half-planes whose intersection stands for the convex hull: the
# polygon circumscribing the true hull has 2 * HULL_DIRECTIONS sides, which for a disc
# adds 0.08% of its area.
HULL_DIRECTIONS = 32
# Pixels this close (in pixels) outside a half-plane count as inside, so that float32
# rounding of the projections cannot drop a mask pixel from its own hull.
HULL_TOLERANCE = 1e-3


def hull_directions() -> np.ndarray:
    """Unit vectors (row, column) ``[HULL_DIRECTIONS, 2]`` spread over half a turn, as
    float32."""
    angles = np.pi * np.arange(HULL_DIRECTIONS) / HULL_DIRECTIONS
    return np.stack([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The pixels whose centres lie in the convex hull of a 2-D mask's pixel centres.

    The hull is taken as the intersection of the mask's extents along
    :data:`HULL_DIRECTIONS` directions (within :data:`HULL_TOLERANCE`), the same
    computation as the exported models' ``serving_layers.ConvexHull`` (tested equal), not
    scikit-image's ``convex_hull_image``, which has no graph counterpart.

    Args:
        mask: Boolean or 0/1 mask ``[H, W]``.

    Returns:
        A boolean mask ``[H, W]`` that contains ``mask`` (all False when it is empty).
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    rows, cols = np.indices(mask.shape, dtype=np.float32)
    directions = hull_directions()
    # [H, W, D] projections of every pixel centre on every direction, in float32 as the
    # graph computes them.
    proj = rows[..., None] * directions[:, 0] + cols[..., None] * directions[:, 1]
    inside = proj[mask]
    low, high = inside.min(axis=0), inside.max(axis=0)
    return np.all((proj >= low - HULL_TOLERANCE) & (proj <= high + HULL_TOLERANCE), axis=-1)


def fill_convex_hulls(masks: Iterable[np.ndarray],
                      classes: Classes | None = None) -> list[np.ndarray]:
    """:func:`convex_hull` of each mask, in the masks' dtype; of label maps with more
    classes, of each contour (:func:`per_contour`)."""
    if _binary(classes):
        return [convex_hull(m).astype(np.asarray(m).dtype) for m in masks]
    return [per_contour(m, classes, convex_hull) for m in masks]
