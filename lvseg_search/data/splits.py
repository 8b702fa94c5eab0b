"""Patient-grouped K-fold splits with optional held-out test patients (``splits.json``).

Every slice of a patient stays in one part: scikit-learn's group splitters are fed
one group per patient, so no patient is ever in two parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search import atomic
from lvseg_search.errors import UserError

FILENAME = "splits.json"


def make_splits(slices_per_patient: dict[str, int], folds: int, *, test_patients: int = 0,
                test_ids: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Splits patients into held-out test patients and K cross-validation folds.

    Args:
        slices_per_patient: Number of slices of each patient (balances fold sizes).
        folds: Number of folds K (>= 2).
        test_patients: How many patients to hold out at random (ignored with ``test_ids``).
        test_ids: Explicit held-out patient ids.
        seed: Random seed for the test draw and fold assignment.

    Returns:
        ``{"seed", "folds": [{"train": [...], "val": [...]}, ...], "test": [...]}``.

    Raises:
        UserError: Too few patients for the folds, or unknown test ids.
    """
    # Imported here: scikit-learn takes over a second to import, and every search
    # process (and each recycled child) reads its saved splits without making any.
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    patients = sorted(slices_per_patient)
    if folds < 2:
        raise UserError(f"--folds: {folds} folds cannot cross-validate; use at least 2")
    if test_ids:
        unknown = sorted(set(test_ids) - set(patients))
        if unknown:
            raise UserError(f"--test-ids: unknown patient(s) {', '.join(unknown)}; the data "
                            f"holds {', '.join(patients)}")
        test = sorted(set(test_ids))
    elif test_patients:
        if not 0 < test_patients < len(patients):
            raise UserError(f"--test-patients: {test_patients} is not between 1 and "
                            f"{len(patients) - 1} for {len(patients)} patients")
        groups = np.arange(len(patients))
        _, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=test_patients,
                                             random_state=seed).split(groups, groups=groups))
        test = sorted(patients[i] for i in test_idx)
    else:
        test = []
    pool = [p for p in patients if p not in test]
    if folds > len(pool):
        raise UserError(f"--folds: {folds} folds need at least {folds} patients, but only "
                        f"{len(pool)} remain for cross-validation; lower --folds"
                        + (" or hold out fewer test patients" if test else ""))
    # One row per slice, grouped by patient, so folds balance slices, not patients.
    groups = np.repeat(np.arange(len(pool)), [slices_per_patient[p] for p in pool])
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    result_folds = []
    for train_idx, val_idx in splitter.split(groups, groups=groups):
        result_folds.append({"train": sorted(pool[i] for i in np.unique(groups[train_idx])),
                             "val": sorted(pool[i] for i in np.unique(groups[val_idx]))})
    return {"seed": seed, "n_folds": folds, "folds": result_folds, "test": test}


def save(path: Path, splits: dict[str, Any]) -> None:
    """Writes ``splits.json`` atomically."""
    atomic.write_json(path, splits)


def load(path: Path, known_patients: Sequence[str] | None = None) -> dict[str, Any]:
    """Reads ``splits.json`` and checks it against the data's patients.

    Raises:
        UserError: The file is unreadable, malformed, leaks a patient between parts, or
            names patients the data does not hold.
    """
    try:
        splits = json.loads(Path(path).read_text(encoding="utf-8"))
        folds = splits["folds"]
        test = set(splits.get("test", []))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run 'lvseg-search split' first") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a splits file; run 'lvseg-search split' again") from None
    for k, fold in enumerate(folds):
        train, val = set(fold["train"]), set(fold["val"])
        if train & val or (train | val) & test:
            raise UserError(f"{path}: fold {k} puts a patient in two parts; run "
                            "'lvseg-search split' again")
        if known_patients is not None and (train | val | test) - set(known_patients):
            raise UserError(f"{path}: fold {k} names patients not in the data; run "
                            "'lvseg-search split' again")
    return splits
