"""An ensemble of the search's finalists chosen out-of-fold (``evaluate.ensemble``), with
the single best finalist beside it and the nested figure of each.

Every finalist's fold models predict the validation patients they never saw, with the
setting the export decided for the best finalist (field of view, test-time augmentation,
post-processing); greedy selection with replacement then weighs the finalists by what
their averaged probabilities deliver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from lvseg_search import atomic
from lvseg_search.engine.final_stage import is_final
from lvseg_search.engine.out_of_fold import out_of_fold_digest
from lvseg_search.engine.run import Run, completed_trials, trial_message

FILE = "finalist_ensemble.json"
FORMAT = 2  # bumped when the result's contents or their computation change (2: left_out)

# Selection steps (Auto-sklearn takes 50 over hundreds of models; a few finalists need
# fewer) and the finalists needed for an ensemble.
ROUNDS = 20
MIN_FINALISTS = 2


def finalists(run: Run) -> list[str]:
    """The completed finalists' trial ids, best first."""
    return [t.trial_id for t in completed_trials(run) if is_final(t.hyperparameters.values)]


def left_out(run: Run) -> list[dict[str, str]]:
    """Finalists that failed (a fold that diverged, ran out of memory...): left out of
    the ensemble, each with its reason, for the report and the model card to say so."""
    out = []
    for trial_id, t in sorted(run.trials.items()):
        if is_final(t.hyperparameters.values) and t.status in ("FAILED", "INVALID"):
            reason = trial_message(run.trial_dir(trial_id), t).strip().splitlines()
            out.append({"trial": trial_id, "status": t.status,
                        "reason": reason[-1] if reason else "no reason recorded"})
    return out


def out_of_fold_probabilities(run: Run, trial_id: str,
                              validation: Sequence[Sequence[Any]],
                              setting: dict[str, Any]) -> list[list[list[np.ndarray]]]:
    """A trial's LV probabilities of each fold's validation patients from the fold model
    that never saw them, with a setting's field of view and test-time augmentation.

    Args:
        run: The search.
        trial_id: A completed trial.
        validation: Per fold, its validation patients
            (``evaluate.scoring.load_patient_images``).
        setting: ``roi`` and ``tta`` (a row of the out-of-fold table).

    Returns:
        Per fold, per patient, per image.
    """
    from lvseg_search.evaluate.scoring import segment
    from lvseg_search.model.serving import make_predictor

    o = run.options
    per_fold = []
    for k, patients in enumerate(validation):
        predict = make_predictor([run.fold_network(trial_id, k)], o.image_size,
                                 o.normalization, o.spacing_mm or None,
                                 tta=setting["tta"], roi=setting["roi"])
        per_fold.append([segment(predict, p.images, p.spacing_mm, largest_region=False,
                                 study_roi=setting["roi"] == "localized")[0]
                         for p in patients])
    return per_fold


def finalist_ensemble(run: Run, validation: Sequence[Sequence[Any]],
                      max_members: int | None = None,
                      setting: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The out-of-fold ensemble of the finalists against the best of them.

    Args:
        run: The search.
        validation: Per fold, its validation patients
            (``evaluate.scoring.load_patient_images``).
        max_members: Distinct members at most (None: any).
        setting: The field of view, test-time augmentation and post-processing
            (``roi``, ``tta``, ``largest_region``, ``convex_hull``; None: the one the
            best finalist's out-of-fold table decides, as export does by default).

    Returns:
        None without two completed finalists or for more than two classes (the
        selection averages LV probabilities); else ``setting`` (the decided one),
        ``single`` (``trial``, ``cv_dice``, ``dice_per_fold``, ``nested_cv_dice``: each
        fold scored by the finalist best on the other folds), ``ensemble`` (``weights``,
        ``cv_dice``, ``dice_per_fold``, ``nested_cv_dice``, ``nested_weights``) and
        ``delivers`` (``ensemble`` when it beats the single best by more than the
        decision table's tie margin, else ``single``), ``left_out`` (failed finalists
        with their reasons).
    """
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import choose
    from lvseg_search.evaluate.ensemble import (
        beats,
        delivered_dice,
        nested_selection,
        select,
    )
    ids = finalists(run)
    if len(ids) < MIN_FINALISTS or run.data.num_classes > 2:
        return None
    if setting is None:
        setting = choose(out_of_fold_decisions(run, ids[0]))
    # Kept in the run folder while the finalists' checkpoints, the validation data, the
    # grid and the setting are those it was computed from (report runs again and again).
    digest = hashlib.sha256(json.dumps(
        [FORMAT, [out_of_fold_digest(run, t) for t in ids], max_members,
         {k: setting[k] for k in ("roi", "tta", "largest_region", "convex_hull")}],
        default=str).encode()).hexdigest()
    path = run.path / FILE
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("digest") == digest:
            return kept["result"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # none kept, or unreadable: derived data, computed again below
    post = {"largest_region": bool(setting["largest_region"]),
            "convex_hull": bool(setting["convex_hull"])}
    candidates = {trial_id: out_of_fold_probabilities(run, trial_id, validation, setting)
                  for trial_id in ids}
    single_dice = {t: delivered_dice(c, validation, **post) for t, c in candidates.items()}
    best = ids[0]
    n = len(validation)
    # The single best chosen without each fold: the finalist best on the others.
    nested_single = []
    for k in range(n):
        others = [j for j in range(n) if j != k]
        pick = max(ids, key=lambda t: np.mean([single_dice[t][j] for j in others]))
        nested_single.append(single_dice[pick][k])
    chosen = select(candidates, validation, rounds=ROUNDS, max_members=max_members, **post)
    nested, nested_weights = nested_selection(candidates, validation, rounds=ROUNDS,
                                              max_members=max_members, **post)
    single = {"trial": best, "cv_dice": float(np.mean(single_dice[best])),
              "dice_per_fold": single_dice[best],
              "nested_cv_dice": float(np.mean(nested_single))}
    result = {"setting": {k: setting[k] for k in ("roi", "tta", "largest_region",
                                                  "convex_hull")},
              "single": single,
              "ensemble": {"weights": chosen.weights, "cv_dice": chosen.cv_dice,
                           "dice_per_fold": chosen.dice_per_fold,
                           "nested_cv_dice": float(np.mean(nested)),
                           "nested_weights": nested_weights},
              "delivers": ("ensemble" if beats(chosen.cv_dice, single["cv_dice"])
                           else "single"),
              "left_out": left_out(run)}
    # In a read-only run folder the result is right, only not kept.
    with contextlib.suppress(OSError):
        atomic.write_json(path, {"finalists": ids, "digest": digest, "result": result})
    return result
