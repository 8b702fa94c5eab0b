"""The best trial's fold models at work, for the report: its out-of-fold predictions
(overlays, per-image scores, the decision table ``export`` decides by) and the held-out
test patients' scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lvseg_search.engine.run import Run
from lvseg_search.reporting.figures import OVERLAYS_PER_PATIENT, draw_overlays
from lvseg_search.reporting.table import decision_frame, position_table


def score_test(run: Run, networks: list[Any]) -> dict[str, Any] | None:
    """The held-out test patients' scores for the average of a trial's fold models
    (None without test patients)."""
    from lvseg_search.evaluate.scoring import load_patient_images, score_patients
    from lvseg_search.model.serving import make_predictor

    if not run.splits["test"]:
        return None
    o = run.options
    classes = run.data.classes
    predict = make_predictor(networks, o.image_size, o.normalization, o.spacing_mm or None,
                             classes=classes if classes.count > 2 else None)
    _, summary = score_patients(predict, load_patient_images(run.data, run.splits["test"]),
                                objective=o.objective)
    return summary


def out_of_fold_overlays(run: Run, trial_id: str, networks: list[Any] | None = None,
                         validation: list[list[Any]] | None = None
                         ) -> tuple[str | None, list[dict[str, Any]]]:
    """Image, expert contour and predicted contour for a trial's validation patients
    (each scored by the fold model that did not see them).

    Args:
        run: The run.
        trial_id: The trial.
        networks: Its fold models, if already built (else built here).
        validation: Each fold's validation patients, if already loaded.

    Returns:
        The figure (base64 PNG, None when no fold finished) and per-image scores, each
        with its slice ``position`` (base, mid, apex; see ``positions``).
    """
    from lvseg_search.evaluate.positions import slice_positions
    from lvseg_search.evaluate.scoring import load_patient_images, score_masks, segment
    from lvseg_search.model.serving import make_predictor

    panels, scores = [], []
    classes = run.data.classes
    labels = classes if classes.count > 2 else None
    for k in range(run.n_folds):
        model = networks[k] if networks is not None else run.fold_network(trial_id, k)
        o = run.options
        predict = make_predictor([model], o.image_size, o.normalization, o.spacing_mm or None,
                                 classes=labels)
        patients = (validation[k] if validation is not None
                    else load_patient_images(run.data, run.splits["folds"][k]["val"]))
        for patient in patients:
            _, pred = segment(predict, patient.images, patient.spacing_mm, classes=labels)
            rows, _ = score_masks(pred, patient)
            where = slice_positions(patient.slice_index, patient.masks, patient.spacing_mm)
            scores += [{"fold": k, **r, "position": w} for r, w in zip(rows, where,
                                                                       strict=True)]
            picks = np.unique(np.linspace(0, len(patient.images) - 1,
                                          min(OVERLAYS_PER_PATIENT, len(patient.images)))
                              .round().astype(int))
            for i in picks:
                panels.append((patient.images[i], patient.masks[i], pred[i],
                               f"{patient.patient_id} s{patient.slice_index[i]} "
                               f"p{patient.phase_index[i]}", rows[i]))
    return draw_overlays(panels, classes), scores


def best_trial_details(run: Run, trial_id: str, networks: list[Any],
                       validation: list[list[Any]],
                       scores: list[dict[str, Any]]) -> list[tuple[str, str, pd.DataFrame]]:
    """The best trial's out-of-fold breakdowns: Dice by patient and slice position, and
    the test-time augmentation and post-processing table that ``export`` decides by.

    Returns:
        (title, note, table) per section.
    """
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import TIE, choose

    out = []
    positions = position_table(scores)
    if positions is not None:
        out.append((f"Trial {trial_id}: Dice by patient and slice position",
                    "Mean per-image Dice (images) of each validation patient, predicted by "
                    "the fold model that never saw it; base, mid and apex are thirds of the "
                    "patient's contoured slice positions, the base being the end where the "
                    "expert's LV is larger.", positions))
    table = out_of_fold_decisions(run, trial_id,
                                  lambda: list(zip(networks, validation, strict=True)))
    out.append((f"Trial {trial_id}: field of view, test-time augmentation and "
                "post-processing",
                "CV Dice of the out-of-fold predictions with each setting; `export` keeps "
                f"the highest (gains under {TIE:g} count as ties, which go to the cheaper "
                "setting, or to the field of view cut around the localized LV) unless "
                "--roi, --tta, --no-largest-region or --[no-]convex-hull say otherwise. "
                "The search ranked "
                "trials with the field of view around the image centre, without test-time "
                "augmentation, with the largest region.",
                decision_frame(table, choose(table))))
    return out


def ensemble_section(result: dict[str, Any]) -> tuple[str, str, pd.DataFrame]:
    """The finalists' out-of-fold ensemble against the best finalist
    (``engine.finalist_ensemble``), as a details section."""
    from lvseg_search.evaluate.decision import TIE

    single, ens = result["single"], result["ensemble"]
    total = sum(ens["weights"].values())
    members = ", ".join(f"{t} x {w}/{total}" for t, w in ens["weights"].items())
    rows = [{"model": f"best finalist, trial {single['trial']}",
             "CV Dice": f"{single['cv_dice']:.4f}",
             "per fold": ", ".join(f"{d:.3f}" for d in single["dice_per_fold"]),
             "nested CV Dice": f"{single['nested_cv_dice']:.4f}",
             "delivered": "yes" if result["delivers"] == "single" else ""},
            {"model": f"ensemble: {members}", "CV Dice": f"{ens['cv_dice']:.4f}",
             "per fold": ", ".join(f"{d:.3f}" for d in ens["dice_per_fold"]),
             "nested CV Dice": f"{ens['nested_cv_dice']:.4f}",
             "delivered": "yes" if result["delivers"] == "ensemble" else ""}]
    s = result["setting"]
    note = (f"Out-of-fold CV Dice of the masks as delivered ({s['roi']} field of view, "
            f"test-time augmentation {s['tta']}, largest region "
            f"{'yes' if s['largest_region'] else 'no'}, convex hull "
            f"{'yes' if s['convex_hull'] else 'no'}: the best finalist's decided "
            "setting). The ensemble averages the finalists' probabilities with the "
            "weights greedy selection with replacement gave them (Caruana et al. 2004); "
            f"it is delivered only when it beats the best finalist by more than {TIE:g}. "
            "Both are chosen on the folds that score them, so read the nested figure "
            "too: each fold scored by the finalist, or the ensemble, chosen on the other "
            "folds alone."
            + "".join(f" Left out: finalist {f['trial']}, {f['status'].lower()} "
                      f"({f['reason']})." for f in result.get("left_out", [])))
    return ("Ensemble of the finalists (out-of-fold)", note, pd.DataFrame(rows))
