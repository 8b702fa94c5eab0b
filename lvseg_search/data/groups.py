"""Patient groups to stratify folds by: the Sunnybrook cohort read off a case id, or a
column of the user's CSV."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lvseg_search.data.manifest import PreparedData
from lvseg_search.errors import UserError

# The Sunnybrook Cardiac Data's cohorts, as its case ids name them (SC-HF-I-1 ...).
SUNNYBROOK_GROUPS = {
    "HF-I": "heart failure with infarction",
    "HF-NI": "heart failure without infarction",
    "HYP": "hypertrophy",
    "N": "normal",
}
_CASE = re.compile(r"^SC-(HF-I|HF-NI|HYP|N)-0*\d+$", re.IGNORECASE)


def sunnybrook_group(case_id: str) -> str | None:
    """The cohort of a Sunnybrook case id (``SC-HF-NI-3`` -> ``HF-NI``), or None for
    any other id."""
    m = _CASE.match(case_id.strip())
    return m.group(1).upper() if m else None


def read_groups(path: Path, column: str = "group") -> dict[str, str]:
    """A group per patient from a CSV with a ``patient_id`` column and ``column``.

    Raises:
        UserError: The file is missing or unreadable, lacks either column, or gives a
            patient no group or two.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UserError(f"--groups: {path}: cannot be read ({exc.strerror or exc}); pass a "
                        "CSV with columns patient_id and a group") from None
    except (UnicodeDecodeError, csv.Error):
        raise UserError(f"--groups: {path}: not a CSV text file; pass a CSV with columns "
                        "patient_id and a group") from None
    if not rows or not {"patient_id", column} <= set(rows[0]):
        raise UserError(f"--groups: {path}: needs a header with columns 'patient_id' and "
                        f"'{column}' (--group-column names the group's column)")
    groups: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        pid, group = (row["patient_id"] or "").strip(), (row[column] or "").strip()
        if not pid or not group:
            raise UserError(f"--groups: {path}: line {line} lacks a patient_id or a "
                            f"{column}; give every patient one")
        if groups.get(pid, group) != group:
            raise UserError(f"--groups: {path}: patient {pid} has two groups "
                            f"({groups[pid]}, {group}); give each patient one")
        groups[pid] = group
    return groups


def patient_groups(data: PreparedData, groups_file: Path | None = None,
                   column: str = "group") -> dict[str, str]:
    """The group of each patient of a prepared data folder, to stratify folds by.

    Args:
        data: The prepared data folder.
        groups_file: A CSV of groups (``read_groups``); None takes the groups that
            ``prepare`` recorded (Sunnybrook cohorts from the case ids).
        column: The CSV's group column.

    Raises:
        UserError: A patient has no group (names them and what to pass).
    """
    if groups_file is not None:
        given = read_groups(groups_file, column)
        known = {pid: given[pid] for pid in data.patient_ids if pid in given}
        where = f"in {groups_file}"
    else:
        known = {p["patient_id"]: p["group"] for p in data.manifest["patients"]
                 if p.get("group")}
        where = "from the case ids (Sunnybrook SC-HF-I-1 style)"
    missing = [pid for pid in data.patient_ids if pid not in known]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise UserError(f"--stratify group: no group {where} for {shown}; pass --groups FILE "
                        "(a CSV with columns patient_id and group)")
    return known
