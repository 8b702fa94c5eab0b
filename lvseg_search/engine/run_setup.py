"""Creating or resuming a run folder for a search (its options checked against the ones
the folder's search recorded), and attaching a distributed worker to its chief's folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lvseg_search import atomic
from lvseg_search.data import manifest as manifest_mod
from lvseg_search.data import splits as splits_mod
from lvseg_search.data.augmentation import PREFIX as AUGMENT_PREFIX
from lvseg_search.data.manifest import PreparedData
from lvseg_search.engine.lock import LOCK_FILE
from lvseg_search.engine.options import (
    BUDGET_OPTIONS,
    SPLIT_OPTIONS,
    SearchOptions,
)
from lvseg_search.engine.run import (
    SEARCH_FILE,
    SPACE_FILE,
    read_options,
    read_record,
    relocate_data,
    run_space,
)
from lvseg_search.errors import UserError
from lvseg_search.model.space import SearchSpace, largest_stride


def resolve_grid(options: SearchOptions, data: PreparedData, split: dict[str, Any],
                 space: SearchSpace) -> SearchOptions:
    """The options with the network's grid chosen (``data.target_grid``) from the
    patients the search trains and validates on; unchanged with ``--spacing none``."""
    if options.spacing_mm == 0.0:
        return options
    from lvseg_search.data.target_grid import choose_grid

    patients = sorted({p for f in split["folds"] for p in f["train"] + f["val"]})
    grid = choose_grid(data, patients, largest_stride(space), spacing_mm=options.spacing_mm,
                       field_of_view_mm=options.field_of_view_mm,
                       image_size=options.image_size or None)
    return replace(options, spacing_mm=grid.spacing_mm, image_size=grid.size,
                   field_of_view_mm=grid.field_of_view_mm)


def prepare_run(out: Path, options: SearchOptions, data: PreparedData, overwrite: bool,
                splits_file: Path | None, space: SearchSpace,
                given: frozenset[str] = frozenset()) -> tuple[SearchOptions, dict[str, Any]]:
    """Creates or resumes a run folder.

    Args:
        out: The run folder.
        options: The resolved options (:func:`resolve_options`).
        data: The prepared data folder the options name.
        overwrite: Start afresh even if ``out`` holds a search.
        splits_file: Use these splits instead of making new ones.
        space: The search space (its networks' stride sizes the grid).
        given: The options given on the command line: on resuming a run written before
            one of them existed, a given value is compared with the one it trained with
            instead of being replaced by it.

    Returns:
        The options as recorded (with the data's digest, ``splits_file``, its folds and test
        patients) and the run's splits.

    Raises:
        UserError: The folder holds another search or something else, or the splits file
            is bad or differs from the splits of the search being resumed.
    """
    if ("objective" in given and options.objective != "endo"
            and not data.classes.has_myocardium):
        raise UserError(f"--objective {options.objective}: {data.root} has no myocardium, "
                        "so no epicardial contour to score; prepare it with --myocardium, "
                        "or drop the option")
    # Without a myocardium there is one contour to score: the objective is its Dice.
    options = replace(options, data_digest=manifest_mod.identity(data.manifest),
                      objective=data.classes.objective(options.objective))
    counts = data.slice_counts
    given_split = None
    if splits_file is not None:
        given_split = splits_mod.load(splits_file, list(counts))
        options = replace(options, folds=len(given_split["folds"]), test_patients=0,
                          test_ids=tuple(given_split["test"]),
                          test_seed=int(given_split.get("test_seed", 0)),
                          stratify=given_split.get("stratify", "slices"), groups_file="",
                          group_column="group")
    record = out / SEARCH_FILE
    if record.is_file() and not overwrite:
        written, previous, filled = read_record(record)
        split = splits_mod.load(out / splits_mod.FILENAME, list(counts))
        options = _as_trained(options, previous, filled, given)
        # The grid chosen again from the same data and patients: the same, unless an
        # option that decides it changed.
        options = resolve_grid(options, data, split, space)
        # Compared elsewhere: the space by its contents (space_digest), not by the path
        # (older runs hold relative ones); a splits file by its folds, below, not by the
        # recorded counts (older runs hold the command line's defaults); the data by its
        # contents where the run recorded them, so it may move. A new budget extends or
        # caps the search.
        # The final epochs too where no finalist has trained: a final stage may be added.
        extend = ("final_epochs", "final_from") if not previous["finalists"] else ()
        skip = ("space", "data", "data_digest", *BUDGET_OPTIONS, *extend,
                *(SPLIT_OPTIONS if given_split is not None else ()))
        changed = [k for k, v in asdict(options).items() if k not in skip
                   and json.dumps(previous.get(k)) != json.dumps(v)]
        same_data = (previous["data_digest"] == options.data_digest
                     if previous.get("data_digest") else previous.get("data") == options.data)
        if not same_data:
            changed.insert(0, "data")
        if changed:
            raise UserError(f"{out}: holds a search with other options ({', '.join(changed)}); "
                            "re-run with the same options to resume, or choose another "
                            "--out, or pass --overwrite")
        if given_split is not None and (given_split["folds"], given_split["test"]) != (
                split["folds"], split["test"]):
            raise UserError(f"--splits: {splits_file} differs from the splits of the search in "
                            f"{out}; resume with its own {out / splits_mod.FILENAME}, or choose "
                            "another --out, or pass --overwrite")
        updated = {k: v for k, v in asdict(options).items()
                   if k in ("data", "data_digest", *BUDGET_OPTIONS, *extend)
                   and previous.get(k) != v}
        if updated:
            # In the record's own schema: an older folder stays as written (readers
            # upgrade it), so what it lacked keeps meaning "as it trained" on a resume.
            atomic.write_json(record, {**written, **updated})
        return options, split
    check_out_folder(out, overwrite)
    if given_split is not None:
        split = given_split
    else:
        groups = None
        if options.stratify == "group":
            from lvseg_search.data.groups import patient_groups

            groups = patient_groups(data, Path(options.groups_file) if options.groups_file
                                    else None, options.group_column)
        split = splits_mod.make_splits(counts, options.folds, test_patients=options.test_patients,
                                       test_ids=options.test_ids, seed=options.seed,
                                       test_seed=options.test_seed, groups=groups)
    options = resolve_grid(options, data, split, space)
    # Only once the new splits are sound does an overwritten run go (all but the lock
    # that this search holds).
    if overwrite and out.exists():
        for child in out.iterdir():
            if child.name != LOCK_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    splits_mod.save(out / splits_mod.FILENAME, split)
    atomic.write_text(out / SPACE_FILE, Path(options.space).read_bytes().decode("utf-8"))
    # search.json last: it marks the folder as a search.
    atomic.write_json(record, asdict(options))
    return options, split


def _as_trained(options: SearchOptions, previous: dict[str, Any], filled: frozenset[str],
                given: frozenset[str]) -> SearchOptions:
    """The options of a resumed run, with the values its trials trained with for the
    options added since it was written (``filled`` by the upgrade) that decide how a
    trial trains and were not given on the command line; other differences are refused
    by the caller as changed options."""
    aug = {key.removeprefix(AUGMENT_PREFIX): previous["augmentation"][
        key.removeprefix(AUGMENT_PREFIX)] for key in filled if key.startswith(AUGMENT_PREFIX)}
    if aug:
        # Written before these augmentations existed: resumed as its trials trained.
        options = replace(options, augmentation=replace(options.augmentation, **aug))
    if "objective" in filled and "objective" not in given:
        # Written before the contours were scored: its trials ranked by the blood pool.
        options = replace(options, objective=previous["objective"])
    if ("spacing_mm" in filled and options.spacing_mm is None
            and options.field_of_view_mm is None):
        # Written before the physical grid: resumed as it trained (whole images),
        # unless a grid is asked for explicitly (then the options differ).
        options = replace(options, spacing_mm=0.0, field_of_view_mm=0.0,
                          image_size=options.image_size or previous["image_size"])
    if "min_epochs" not in given and ("min_epochs" in filled or (
            (previous["max_epochs"], previous["factor"]) == (options.max_epochs,
                                                             options.factor))):
        # Written before Hyperband's shortest rung was an option (keras-tuner's 1), or
        # with another default rung (two brackets, then three): a run resumes with the
        # one it recorded for the same budget, as its brackets were laid out; another
        # --min-epochs is refused as a changed option.
        options = replace(options, min_epochs=previous["min_epochs"])
    if "include_default" not in given and "no_default" not in given:
        # Whether the default network competes is the run's own (the default changed in
        # schema version 2): resumed as it started unless asked otherwise.
        options = replace(options, include_default=previous["include_default"])
    if "finalists" not in given:
        # A new final stage, or another, only when asked for: a resume keeps the run's.
        options = replace(options, finalists=previous["finalists"])
    if "final_epochs" not in given and (previous["finalists"] or not options.finalists):
        # No finalist has trained yet where the run had no final stage: the final
        # epochs asked for now apply; otherwise those the finalists trained with.
        options = replace(options, final_epochs=previous["final_epochs"])
    if "final_from" not in given and (previous["finalists"] or not options.finalists):
        options = replace(options, final_from=previous["final_from"])
    if "lr_per_rung" in filled:
        # Written before rungs restarted the schedule: resumes decaying over max_epochs.
        options = replace(options, lr_per_rung=False)
    return options


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuses a run folder that exists, holds something, and holds no search.

    Raises:
        UserError: It does, and ``overwrite`` is false.
    """
    out = Path(out)
    if (out.is_dir() and not (out / SEARCH_FILE).is_file() and not overwrite
            and any(p.name != LOCK_FILE for p in out.iterdir())):
        raise UserError(f"{out}: output folder (--out) exists and holds no search; choose "
                        "another folder or pass --overwrite")


def load_worker_run(out: Path, data_dir: Path | None
                    ) -> tuple[SearchOptions, SearchSpace, dict[str, Any], PreparedData]:
    """Options, space, splits and data of a chief's run folder, for a worker.

    Args:
        out: The run folder the chief created.
        data_dir: The prepared data folder where this worker sees it (default: where the
            chief read it).

    Raises:
        UserError: The chief has not created the folder yet, or the data is not there.
    """
    options = read_options(out, "start the chief with the same --out first (the results "
                                "folder must be shared with the workers)")
    sp = run_space(out, options)
    data = manifest_mod.open_data(data_dir if data_dir is not None else options.data)
    if data_dir is not None:
        options = relocate_data(out, options, data)
    return options, sp, splits_mod.load(out / splits_mod.FILENAME, data.patient_ids), data
