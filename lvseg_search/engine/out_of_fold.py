"""A trial's out-of-fold decision table (``evaluate.decision``), computed once and kept in
the trial's folder.

``report`` and ``export`` both need the table of the best trial, and ``report`` is run
again and again while a search goes on; each computation predicts every validation image
with every field of view and test-time augmentation (a localized field of view twice:
once to find the study's LV). The table is a function of the fold checkpoints, the
validation shards and the grid, so it is kept next to the checkpoints with a digest of
all three and used again only while that digest matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from lvseg_search import atomic
from lvseg_search.engine.run import Run

FILE = "out_of_fold.json"
# Bumped when the table's rows or their computation change, which retires kept tables.
FORMAT = 3  # 2: convex-hull rows; 3: localized rows cut around each study's LV


def _digest(run: Run, trial_id: str, rois: Sequence[str], modes: Sequence[str]) -> str:
    """What the table depends on: fold checkpoints, validation shards, grid, settings.

    Raises:
        UserError: A fold checkpoint is missing.
    """
    digest = hashlib.sha256()
    for k in range(run.n_folds):
        digest.update(run.fold_network_path(trial_id, k).read_bytes())
    validation = [p for fold in run.splits["folds"] for p in fold["val"]]
    digest.update(run.data.fingerprint(validation).encode())
    o = run.options
    settings = [FORMAT, o.image_size, o.normalization, o.spacing_mm, list(rois), list(modes)]
    if run.data.classes.has_myocardium:  # what cv_dice means then
        settings.append(o.objective)
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


def out_of_fold_digest(run: Run, trial_id: str) -> str:
    """What a trial's out-of-fold predictions depend on (its fold checkpoints, the
    validation shards, the grid, every setting tried).

    Raises:
        UserError: A fold checkpoint is missing.
    """
    from lvseg_search.model.contract import ROI_MODES
    from lvseg_search.model.tta import TTA_MODES

    return _digest(run, trial_id, ROI_MODES if run.options.physical else ("centre",),
                   TTA_MODES)


def out_of_fold_decisions(run: Run, trial_id: str,
                          folds: Callable[[], Sequence[tuple[Any, Any]]] | None = None
                          ) -> list[dict[str, Any]]:
    """The trial's out-of-fold table of every field of view, test-time augmentation and
    post-processing: the kept one when its digest matches, else computed and kept.

    Args:
        run: The search.
        trial_id: A completed trial (every fold has its checkpoint).
        folds: Gives, in fold order, each fold's network and its validation patients
            (``evaluate.scoring.load_patient_images``) when the table must be computed (default:
            loaded from the checkpoints and the shards).

    Returns:
        Rows of ``evaluate.decision.out_of_fold_table``.

    Raises:
        UserError: A fold checkpoint is missing.
    """
    from lvseg_search.evaluate.decision import out_of_fold_table
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.model.contract import ROI_MODES
    from lvseg_search.model.tta import TTA_MODES

    o = run.options
    rois = ROI_MODES if o.physical else ("centre",)
    digest = _digest(run, trial_id, rois, TTA_MODES)
    path = run.trial_dir(trial_id) / FILE
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("digest") == digest:
            return kept["table"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # none kept, or unreadable: the table is derived data, computed again below
    pairs = list(folds()) if folds is not None else [
        (run.fold_network(trial_id, k), load_patient_images(run.data, fold["val"]))
        for k, fold in enumerate(run.splits["folds"])]
    table = out_of_fold_table(pairs, o.image_size, o.normalization, o.spacing_mm or None,
                              modes=TTA_MODES, rois=rois, classes=run.data.classes,
                              objective=o.objective)
    # In a read-only run folder the table is right, only not kept.
    with contextlib.suppress(OSError):
        atomic.write_json(path, {"trial_id": trial_id, "digest": digest, "table": table})
    return table
