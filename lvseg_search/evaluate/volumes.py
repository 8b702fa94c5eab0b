"""LV volumes of a segmented study: per phase, and for a whole short-axis stack the
end-diastolic and end-systolic volumes and the ejection fraction.

Volumes sum slice areas times the spacing between slice positions measured along the
slice normal (ImagePositionPatient projected on the normal of ImageOrientationPatient),
never SliceLocation, which need not step by the slice spacing (in the Sunnybrook sample
it steps 6.72 mm for slices 10 mm apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from lvseg_search.classes import MYOCARDIAL_DENSITY_G_PER_ML
from lvseg_search.data.ingest import distinct_positions, spacing_along_normal


def stack_volumes(rows: list[dict[str, Any]], normal_positions: list[float],
                  geometry_problems: Sequence[str] = (),
                  ed_es: tuple[int, int] | None = None
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-phase LV volumes of one study and, for a whole stack, EDV, ESV and EF, and
    with the myocardium segmented, its volume and the LV mass at end-diastole
    (myocardial volume x 1.05 g/mL).

    Args:
        rows: Per-image rows with ``slice_index``, ``phase_index`` and ``area_mm2`` (the
            blood pool's), and ``myo_area_mm2`` where the model segments the myocardium.
        normal_positions: Each image's position along the slice normal (mm).
        geometry_problems: What makes the stack's positions unusable
            (``studies.geometry_problems``): volumes need the spacing between slices,
            so with any problem there are none (NaN) and no EF, and the summary says why.
        ed_es: The end-diastolic and end-systolic phase where the data says (ACDC's
            Info.cfg); None: the phases of largest and smallest blood-pool volume.

    Returns:
        Volumes per phase (``phase_index``, ``slices``, ``volume_ml``, and
        ``myocardial_volume_ml`` and ``lv_mass_g`` with the myocardium) and the study summary (slice
        spacing, ED/ES phases and volumes, ejection fraction, or why there is none; with
        the myocardium ``myocardial_volume_ed_ml`` and ``lv_mass_ed_g``, or
        ``why_no_mass``).
    """
    frame = pd.DataFrame(rows)
    myocardium = "myo_area_mm2" in frame
    positions = distinct_positions(normal_positions)
    spacing = spacing_along_normal(normal_positions)
    slices, phases = frame["slice_index"].nunique(), frame["phase_index"].nunique()
    sums = {"area_mm2": ("area_mm2", "sum")}
    if myocardium:
        sums["myo_area_mm2"] = ("myo_area_mm2", "sum")
    volumes = (frame.groupby("phase_index")
               .agg(slices=("slice_index", "nunique"), **sums)
               .reset_index())
    volumes["volume_ml"] = volumes["area_mm2"] * spacing / 1000.0
    if myocardium:
        volumes["myocardial_volume_ml"] = volumes["myo_area_mm2"] * spacing / 1000.0
        volumes["lv_mass_g"] = volumes["myocardial_volume_ml"] * MYOCARDIAL_DENSITY_G_PER_ML
    areas = [c for c in ("area_mm2", "myo_area_mm2") if c in volumes]
    summary: dict[str, Any] = {"images": len(frame), "slices": int(slices),
                               "phases": int(phases), "slice_spacing_mm": spacing}
    if geometry_problems:
        volumes["volume_ml"] = float("nan")
        if myocardium:
            volumes[["myocardial_volume_ml", "lv_mass_g"]] = float("nan")
        summary.update({"slice_spacing_mm": None, "ejection_fraction": None,
                        "why_no_ef": "no volumes: " + "; ".join(geometry_problems)})
        if myocardium:
            summary.update({"lv_mass_ed_g": None, "why_no_mass": summary["why_no_ef"]})
        return volumes.drop(columns=areas), summary
    complete = (volumes["slices"] == slices).all()
    if slices < 3 or phases < 2 or not complete or len(positions) != slices:
        summary["ejection_fraction"] = None
        summary["why_no_ef"] = (f"not a whole short-axis stack ({slices} slice(s) x {phases} "
                                f"phase(s){'' if complete else ', phases miss slices'}); "
                                "give every slice of every phase")
        if myocardium:
            summary.update({"lv_mass_ed_g": None, "why_no_mass": summary["why_no_ef"]})
        return volumes.drop(columns=areas), summary
    by_phase = volumes.set_index("phase_index", drop=False)
    if ed_es is not None and all(p in by_phase.index for p in ed_es):
        ed, es = by_phase.loc[ed_es[0]], by_phase.loc[ed_es[1]]
        summary["phases_from"] = "the data"
    else:
        ed = volumes.loc[volumes["volume_ml"].idxmax()]
        es = volumes.loc[volumes["volume_ml"].idxmin()]
    edv, esv = float(ed["volume_ml"]), float(es["volume_ml"])
    summary.update({"ed_phase": int(ed["phase_index"]), "es_phase": int(es["phase_index"]),
                    "edv_ml": edv, "esv_ml": esv, "stroke_volume_ml": edv - esv,
                    "ejection_fraction": (edv - esv) / edv if edv > 0 else None})
    if edv <= 0:
        summary["why_no_ef"] = "no LV segmented at any phase (every volume is 0)"
    if myocardium:
        myo = float(ed["myocardial_volume_ml"])
        summary.update({"myocardial_volume_ed_ml": myo,
                        "lv_mass_ed_g": myo * MYOCARDIAL_DENSITY_G_PER_ML if edv > 0 else None})
        if edv <= 0:
            summary["why_no_mass"] = summary["why_no_ef"]
    return volumes.drop(columns=areas), summary
