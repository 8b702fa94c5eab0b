"""Brings the ``search.json`` of an older run folder to the current options schema
(``engine.options``), with the values that folder's trials trained with.

Folders written before the schema had a version are version 0: which options they lack
says how old they are, and each step below fills the options added at one change, in
the order they were added. Later versions upgrade one version at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from lvseg_search.data.augmentation import PREFIX, Augmentation
from lvseg_search.engine.options import SCHEMA_VERSION

Record = dict[str, Any]


def _augmentation_options(r: Record) -> None:
    # Before augmentation was an option: 10 degrees, 10% zoom, gain and offset 0.1.
    for key, value in (("rotation_deg", 10.0), ("scale", 0.1), ("shift", 0.0),
                       ("intensity", 0.1)):
        r.setdefault(PREFIX + key, value)


def _steps_per_epoch(r: Record) -> None:
    r.setdefault("steps_per_epoch", 0)  # one pass over the training slices


def _data_digest(r: Record) -> None:
    r.setdefault("data_digest", "")  # the data is then known by its path and patients


def _split_draws(r: Record) -> None:
    # A run resumes from its splits.json, so these only describe how it was drawn.
    r.setdefault("test_seed", 0)
    r.setdefault("stratify", "slices")


def _oracle(r: Record) -> None:
    r.setdefault("oracle", "hyperband")
    r.setdefault("groups_file", "")
    r.setdefault("group_column", "group")


def _physical_grid(r: Record) -> None:
    # Before the physical grid: whole images resized, and none of its augmentations.
    if "spacing_mm" not in r:
        r.update(spacing_mm=0.0, field_of_view_mm=0.0)
    for key in ("gamma", "contrast", "brightness", "noise", "blur", "low_resolution"):
        r.setdefault(PREFIX + key, 0.0)


def _include_default(r: Record) -> None:
    r.setdefault("include_default", False)


def _min_epochs(r: Record) -> None:
    r.setdefault("min_epochs", 1)  # keras-tuner's own shortest rung


def _lv_centred_views(r: Record) -> None:
    r.setdefault(PREFIX + "offset_mm", 0.0)  # training views around the image centre


def _lr_per_rung(r: Record) -> None:
    r.setdefault("lr_per_rung", False)  # one decay over max_epochs


def _nest_augmentation(r: Record) -> None:
    flat = {key: r.pop(key) for key in list(r) if key.startswith(PREFIX)}
    r["augmentation"] = asdict(Augmentation.from_options(flat))


# Version 0 -> 1, in the order the options were added.
V0_STEPS: tuple[Callable[[Record], None], ...] = (
    _augmentation_options, _steps_per_epoch, _data_digest, _split_draws, _oracle,
    _physical_grid, _include_default, _min_epochs, _lv_centred_views, _lr_per_rung,
    _nest_augmentation)


def _final_stage(r: Record) -> None:
    # Before the final stage: the screening's trials were the search's result.
    r.setdefault("finalists", 0)
    r.setdefault("final_epochs", 0)


def _objective(r: Record) -> None:
    # Before the contours were scored: every search scored the blood pool.
    r.setdefault("objective", "endo")


def _final_from(r: Record) -> None:
    # Before finalists could start from scratch: each continued its screening trial.
    r.setdefault("final_from", "screening")


# version -> the steps that bring a record of that version to the next.
STEPS: dict[int, tuple[Callable[[Record], None], ...]] = {
    0: V0_STEPS, 1: (_final_stage,), 2: (_objective,), 3: (_final_from,)}


def record_version(record: Record) -> int:
    """The schema version of a ``search.json`` record (0: written before versions)."""
    return int(record.get("schema_version", 0))


def upgrade(record: Record) -> tuple[Record, frozenset[str]]:
    """A record brought to :data:`~lvseg_search.engine.options.SCHEMA_VERSION`.

    Args:
        record: ``search.json`` as read (left unchanged).

    Returns:
        The upgraded record, and the options it did not hold, filled with what the
        folder trained with (an augmentation setting by its ``augment_*`` name).

    Raises:
        ValueError: The record is of a newer version than this package knows.
    """
    version = record_version(record)
    if version > SCHEMA_VERSION:
        raise ValueError(f"schema version {version} is newer than this package's "
                         f"{SCHEMA_VERSION}")
    out = dict(record)
    while version < SCHEMA_VERSION:
        for step in STEPS[version]:
            step(out)
        version += 1
    out["schema_version"] = SCHEMA_VERSION
    filled = {key for key in out if key not in record} - {"schema_version", "augmentation"}
    if "augmentation" not in record:
        filled |= {key for key in Augmentation().as_options() if key not in record}
    return out, frozenset(filled)
