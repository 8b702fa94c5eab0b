"""Where along the ventricle a slice lies: base, mid or apex.

Networks fail most at the base (the valve plane, where the LV outflow and the atrium
join) and at the apex (a small, blurred ring), so scores are broken down by position.
Slice indices follow the slice normal, whose direction (base to apex or back) varies by
scanner and planning; the base is the end where the expert's LV is larger, which holds
for every short-axis stack (the ventricle narrows towards the apex).
"""

from __future__ import annotations

import numpy as np

POSITIONS = ("base", "mid", "apex")


def slice_positions(slice_index: np.ndarray, masks, spacing_mm: np.ndarray) -> list[str]:
    """Each labelled image's third of the patient's labelled slice positions.

    Args:
        slice_index: Each image's slice position index (along the slice normal).
        masks: Each image's expert mask (class 1 = LV).
        spacing_mm: Each image's (row, column) pixel spacing.

    Returns:
        ``base``, ``mid`` or ``apex`` per image; ``mid`` for every image of a patient
        with fewer than 3 labelled positions (no thirds to tell apart).
    """
    slice_index = np.asarray(slice_index)
    positions = np.unique(slice_index)
    n = len(positions)
    if n < 3:
        return ["mid"] * len(slice_index)
    rank = np.searchsorted(positions, slice_index)
    third = np.minimum(3 * rank // n, 2)
    area = np.array([np.count_nonzero(np.asarray(m) == 1) * float(np.prod(s))
                     for m, s in zip(masks, spacing_mm, strict=True)])
    first_is_base = area[third == 0].mean() >= area[third == 2].mean()
    names = POSITIONS if first_is_base else POSITIONS[::-1]
    return [names[t] for t in third]
