"""Patient-grouped K-fold splits with optional held-out test patients (``splits.json``).

Every slice of a patient stays in one part: patients, not images, are assigned to
folds, so no patient is ever in two parts. Folds are balanced by slices and, when
patients carry a group (a Sunnybrook cohort, or a column of the user's CSV), by group.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search import atomic
from lvseg_search.errors import UserError

FILENAME = "splits.json"


def make_splits(slices_per_patient: dict[str, int], folds: int, *, test_patients: int = 0,
                test_ids: Sequence[str] | None = None, seed: int = 0, test_seed: int = 0,
                groups: dict[str, str] | None = None) -> dict[str, Any]:
    """Splits patients into held-out test patients and K cross-validation folds.

    The folds are balanced: each patient group (when ``groups`` is given) is spread as
    evenly as the counts allow, then the folds' slice counts, then their patient counts.
    The test patients are drawn with their own seed, so comparing settings over fold
    seeds keeps the same test set.

    Args:
        slices_per_patient: Number of slices of each patient (balances fold sizes).
        folds: Number of folds K (>= 2).
        test_patients: How many patients to hold out at random (ignored with ``test_ids``).
        test_ids: Explicit held-out patient ids.
        seed: Random seed of the fold assignment.
        test_seed: Random seed of the test draw.
        groups: A group per patient (for example its Sunnybrook cohort) to stratify by;
            None balances slices only.

    Returns:
        ``{"seed", "test_seed", "n_folds", "stratify", "folds": [{"train": [...],
        "val": [...]}, ...], "test": [...], "balance": [...]}``; ``balance`` lists each
        fold's validation patients, slices and (when stratified) groups.

    Raises:
        UserError: Too few patients for the folds, unknown test ids, or patients
            without a group.
    """
    patients = sorted(slices_per_patient)
    if folds < 2:
        raise UserError(f"--folds: {folds} folds cannot cross-validate; use at least 2")
    if groups is not None:
        missing = [p for p in patients if not groups.get(p)]
        if missing:
            raise UserError(f"--stratify group: no group for patient(s) {', '.join(missing)}; "
                            "pass --groups FILE with a group for every patient")
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
        drawn = np.random.default_rng(test_seed).choice(len(patients), test_patients,
                                                        replace=False)
        test = sorted(patients[i] for i in drawn)
    else:
        test = []
    pool = [p for p in patients if p not in test]
    if folds > len(pool):
        raise UserError(f"--folds: {folds} folds need at least {folds} patients, but only "
                        f"{len(pool)} remain for cross-validation; lower --folds"
                        + (" or hold out fewer test patients" if test else ""))
    assignment = _balanced_folds(pool, slices_per_patient, folds, seed, groups)
    result_folds = [{"train": sorted(p for p in pool if assignment[p] != k),
                     "val": sorted(p for p in pool if assignment[p] == k)}
                    for k in range(folds)]
    return {"seed": seed, "test_seed": test_seed, "n_folds": folds,
            "stratify": "group" if groups is not None else "slices",
            "folds": result_folds, "test": test,
            "balance": balance(result_folds, slices_per_patient, groups)}


# Random patient orders tried by the fold balancer; each is assigned greedily.
_ORDERS = 256


def _balanced_folds(pool: list[str], slices: dict[str, int], folds: int, seed: int,
                    groups: dict[str, str] | None) -> dict[str, int]:
    """Patient -> fold, balanced by group, then slices, then patients.

    Written here because scikit-learn's StratifiedGroupKFold balances the strata's
    proportions but leaves slice counts uneven without strata (23 to 35 slices a fold
    where 27 to 31 is possible, for 10 patients in 5 folds). A few hundred seeded
    patient orders (largest first with the sizes jittered, and plain random orders) are
    each assigned greedily: each patient to the fold with the fewest of its group, then
    the fewest slices, then the fewest patients. Of the most balanced assignments the
    seed picks one, so a given seed always gives the same folds, and other seeds other
    folds wherever equally balanced ones exist.
    """
    rng = np.random.default_rng(seed)
    # Without groups every patient is in one group, and no group count is balanced.
    group = {p: (groups or {}).get(p, "") for p in pool}
    names = sorted(set(group.values())) if groups is not None else []
    best: list[dict[str, int]] = []
    best_key = None
    for n in range(_ORDERS):
        if n % 2 == 0:
            jitter = rng.uniform(0.8, 1.2, len(pool))
            order = [pool[i] for i in np.argsort(-np.array([slices[p] for p in pool]) * jitter,
                                                 kind="stable")]
        else:
            order = [pool[i] for i in rng.permutation(len(pool))]
        fold_slices, fold_patients = [0] * folds, [0] * folds
        fold_groups = [dict.fromkeys(names, 0) for _ in range(folds)]
        assignment = {}
        for p in order:
            k = min(range(folds), key=lambda f: (fold_groups[f].get(group[p], 0),
                                                 fold_slices[f], fold_patients[f]))
            assignment[p] = k
            fold_slices[k] += slices[p]
            fold_patients[k] += 1
            if names:
                fold_groups[k][group[p]] += 1
        spread = sum(max(c[g] for c in fold_groups) - min(c[g] for c in fold_groups)
                     for g in names)
        key = (spread, max(fold_slices) - min(fold_slices),
               max(fold_patients) - min(fold_patients))
        if best_key is None or key < best_key:
            best, best_key = [assignment], key
        elif key == best_key and assignment not in best:
            best.append(assignment)
    return best[int(rng.integers(len(best)))]


def balance(folds: list[dict[str, list[str]]], slices: dict[str, int],
            groups: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each fold's validation patients, slices and (given ``groups``) patients per group.

    Args:
        folds: The folds' ``train``/``val`` patient lists.
        slices: Slices per patient.
        groups: Group per patient, or None.
    """
    rows = []
    for k, fold in enumerate(folds):
        row: dict[str, Any] = {"fold": k, "patients": len(fold["val"]),
                               "slices": sum(slices[p] for p in fold["val"])}
        if groups is not None:
            row["groups"] = dict(sorted(Counter(groups[p] for p in fold["val"]).items()))
        rows.append(row)
    return rows


def format_balance(split: dict[str, Any], slices: dict[str, int] | None = None) -> str:
    """The split as a table: per fold its validation patients, slices and groups.

    Args:
        split: A split (``make_splits`` or ``load``).
        slices: Slices per patient, for splits written before they recorded their balance.
    """
    rows = split.get("balance") or (balance(split["folds"], slices) if slices else [])
    lines = [f"{'fold':>4} {'patients':>8} {'slices':>6}  groups"]
    for row in rows:
        grouped = ", ".join(f"{g} {n}" for g, n in row.get("groups", {}).items()) or "-"
        lines.append(f"{row['fold']:>4} {row['patients']:>8} {row['slices']:>6}  {grouped}")
    return "\n".join(lines)


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
