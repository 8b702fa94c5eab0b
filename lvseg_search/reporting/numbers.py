"""How the report writes numbers: one formatter for figures, and durations and counts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Digits that mean something, per column of the trial table (Markdown and console).
DIGITS = {"cv_dice": 3, "cv_dice_std": 3, "apd_mm": 1, "hausdorff_mm": 1,
          "good_contours_pct": 0, "train_seconds": 0}


def number(value: Any, digits: int | None = None) -> str:
    """A figure with ``digits`` decimals, ``-`` where there is none (missing, NaN, not a
    number); without ``digits``, 3 decimals (3 significant digits under 0.01)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"


def cell(value: Any, column: str = "") -> str:
    """A trial-table cell: a float with its column's digits, anything else as text."""
    if isinstance(value, float | np.floating):
        return number(value, DIGITS.get(column, 3 if column.startswith("dice_fold_") else None))
    return str(value)


def duration(seconds: float) -> str:
    """``3 min 07 s``, ``42 s``; ``-`` for none."""
    if not seconds or math.isnan(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def count(n: float) -> str:
    """``1.2 M``, ``35 k``, ``512``."""
    n = float(n)
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else f"{n:.0f}"
