"""The run folder of a search (``results/NAME``): its layout, the options schema of
``search.json`` (defaults, checks, older folders), creating or resuming it, and reading
it back (finished, running or interrupted) for ``search``, ``report`` and ``export``.

Layout::

    search.json        the resolved options (a re-run with the same options resumes)
    space.toml         a copy of the search space file, so that report, export and
                       workers need not find the original (another folder or machine)
    splits.json        the patient-grouped folds and held-out test patients
    tuner/             keras-tuner's project: oracle.json, trial_<id>/trial.json (and
                       failure.txt, why it failed), and per fold,
                       trial_<id>/fold_<k>/{checkpoint.weights.h5,result.json}
    tensorboard/       HParams config, one session per finished trial, fold curves

Nothing here imports TensorFlow or Keras at module level: a recycled search's parent
process prepares the run without loading them.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lvseg_search import atomic
from lvseg_search.data import manifest as manifest_mod
from lvseg_search.data import splits as splits_mod
from lvseg_search.data.manifest import PreparedData
from lvseg_search.data.pipeline import PipelineConfig
from lvseg_search.engine.lock import LOCK_FILE
from lvseg_search.errors import UserError
from lvseg_search.model.space import SearchSpace, check_image_size, largest_stride, load_space

CHECKPOINT = "checkpoint.weights.h5"
RESULT = "result.json"
FAILURE = "failure.txt"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SEARCH_FILE = "search.json"
SPACE_FILE = "space.toml"
PROJECT = "tuner"
# Options a splits file (--splits) decides instead of the command line.
SPLIT_OPTIONS = ("folds", "test_patients", "test_ids", "test_seed", "stratify", "groups_file",
                 "group_column")
STRATIFY = ("slices", "group")
# keras-tuner's oracles (engine.tuner.make_oracle), and the trials the random and the
# Bayesian ones run by default, as in keras-tuner.
ORACLES = ("hyperband", "random", "bayesian", "fixed")
DEFAULT_MAX_TRIALS = 10
# Options that only size the search, not how a trial trains: a run may resume with others.
BUDGET_OPTIONS = ("max_trials", "hyperband_iterations")
# Training augmentation (flips always): the pipeline's defaults unless the space sets them.
# The last six are probabilities, nnU-Net's defaults for 2-D (the ranges are fixed,
# see data.pipeline).
AUGMENT_DEFAULTS = {"augment_rotation_deg": PipelineConfig.max_rotation_deg,
                    "augment_scale": PipelineConfig.max_scale,
                    "augment_shift": PipelineConfig.max_shift,
                    "augment_offset_mm": 40.0,
                    "augment_intensity": PipelineConfig.intensity,
                    "augment_gamma": 0.3, "augment_contrast": 0.15,
                    "augment_brightness": 0.15, "augment_noise": 0.1, "augment_blur": 0.2,
                    "augment_low_resolution": 0.25}
# steps_per_epoch 0: an epoch is one pass over the fold's training slices.
# min_epochs None: max_epochs / factor**2, Hyperband's three least aggressive brackets.
DEFAULTS = {"max_epochs": 9, "min_epochs": None, "factor": 3, "hyperband_iterations": 1,
            "image_size": 128, "batch_size": 8, "folds": 3, "normalization": "zscore",
            "steps_per_epoch": 0,
            **AUGMENT_DEFAULTS}


def default_min_epochs(max_epochs: int, factor: int, brackets: int = 3) -> int:
    """Hyperband's shortest rung when none is given: that of its ``brackets`` least
    aggressive brackets (fewer when ``max_epochs`` is too small for them), rounded down so
    that keras-tuner's own bracket count (a float division) keeps the last of them.

    Args:
        max_epochs: Epochs of the longest trial.
        factor: Hyperband's reduction factor.
        brackets: Brackets wanted.

    Returns:
        The ``min_epochs`` to give the oracle (at least 1).
    """
    # keras-tuner's own count (HyperbandOracle._get_num_brackets, private) with a
    # shortest rung of 1: the most brackets this budget can have.
    possible, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        possible += 1
    return max(1, max_epochs // factor ** (min(brackets, possible) - 1))


def fold_dir(trial_dir: Path, k: int) -> Path:
    """Folder of fold ``k`` inside a trial folder."""
    return Path(trial_dir) / f"fold_{k}"


class UnreadableRecord(ValueError):
    """A record of the run folder that exists but cannot be read (corrupt, truncated).

    Attributes:
        path: The file.
        reason: What is wrong with it.
    """

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: unreadable ({reason})")
        self.path = Path(path)
        self.reason = reason


def read_fold_result(trial_dir: Path, k: int) -> dict[str, Any] | None:
    """The saved result of fold ``k`` of a trial, or None when it did not finish.

    Raises:
        UnreadableRecord: The result file exists but is not a fold result.
    """
    path = fold_dir(trial_dir, k) / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableRecord(path, type(exc).__name__) from None
    if not isinstance(result, dict) or "history" not in result:
        raise UnreadableRecord(path, "not a fold result")
    return result


def trial_message(trial_dir: Path, trial: Any) -> str:
    """Why a trial failed: keras-tuner's message, else the one its tuner wrote next to it.

    A distributed worker's failure message does not reach the chief (keras-tuner sends a
    trial over gRPC without it), so the worker also writes it into the shared run folder.
    """
    if trial.message:
        return trial.message
    path = Path(trial_dir) / FAILURE
    return path.read_text(encoding="utf-8") if path.is_file() else ""


@dataclass(frozen=True)
class SearchOptions:
    """Resolved options of one search (command line over space defaults over ours)."""

    data: str
    space: str
    space_digest: str
    folds: int
    test_patients: int
    test_ids: tuple[str, ...]
    max_epochs: int
    factor: int
    hyperband_iterations: int
    image_size: int
    batch_size: int
    normalization: str
    seed: int
    precision: str
    jit: bool
    max_trials: int | None
    # Run folders written before augmentation was an option trained with these.
    augment_rotation_deg: float = 10.0
    augment_scale: float = 0.1
    augment_shift: float = 0.0
    augment_intensity: float = 0.1
    # Run folders written before it was an option trained one pass per epoch.
    steps_per_epoch: int = 0
    # manifest.identity of the data; empty in run folders written before it was kept.
    data_digest: str = ""
    # How new splits are drawn: the test patients' own seed, and what the folds balance
    # (a run resumes from its splits.json, so older folders need no other value).
    test_seed: int = 0
    stratify: str = "slices"
    # keras-tuner's oracle that samples trials (run folders before the choice: Hyperband).
    oracle: str = "hyperband"
    groups_file: str = ""
    group_column: str = "group"
    # The network's grid: pixel size and field of view, mm (data.target_grid). None
    # until chosen from the data (prepare_run); 0 resizes whole images to image_size
    # (--spacing none, and run folders written before the physical grid).
    spacing_mm: float | None = 0.0
    field_of_view_mm: float | None = 0.0
    # Augmentations added with the physical grid (probabilities); older run folders
    # trained without them.
    augment_gamma: float = 0.0
    augment_contrast: float = 0.0
    augment_brightness: float = 0.0
    augment_noise: float = 0.0
    augment_blur: float = 0.0
    augment_low_resolution: float = 0.0
    # The space's [default] network as the search's first trial (a baseline inside it).
    include_default: bool = False
    # Hyperband's shortest rung (keras-tuner's own default, 1, before it was an option).
    min_epochs: int = 1
    # Training views cut around the expert LV, moved by up to this many mm (physical
    # grid only); older run folders cut them around the image centre.
    augment_offset_mm: float = 0.0
    # Hyperband trials anneal their learning rate to their rung's end, restarting at each
    # promotion (model.schedule); older run folders decayed it over max_epochs.
    lr_per_rung: bool = False

    def pipeline(self, batch_size: int | None = None) -> PipelineConfig:
        """The search's pipeline settings (``.training()`` adds shuffling and the
        augmentation given here).

        Args:
            batch_size: Images per batch (default: the search's).
        """
        return PipelineConfig(
            image_size=self.image_size, spacing_mm=self.spacing_mm or None,
            normalization=self.normalization,
            batch_size=batch_size or self.batch_size, seed=self.seed,
            max_rotation_deg=self.augment_rotation_deg, max_scale=self.augment_scale,
            max_shift=self.augment_shift, max_offset_mm=self.augment_offset_mm,
            intensity=self.augment_intensity,
            gamma=self.augment_gamma, contrast=self.augment_contrast,
            brightness=self.augment_brightness, noise=self.augment_noise,
            blur=self.augment_blur, low_resolution=self.augment_low_resolution)

    @property
    def physical(self) -> bool:
        """Whether the network sees a physical grid (else whole images resized)."""
        return bool(self.spacing_mm)

    def plan_text(self) -> str:
        """How the search samples and trains its trials, in words."""
        if self.oracle == "hyperband":
            restarts = ", each rung's learning rate decaying to its end" if self.lr_per_rung else ""
            return (f"Hyperband, {self.min_epochs} to {self.max_epochs} epochs, factor "
                    f"{self.factor}{restarts}")
        if self.oracle == "fixed":
            return f"the space's default network, {self.max_epochs} epochs"
        return f"{self.oracle} search, {self.max_trials} trials of {self.max_epochs} epochs"

    def grid_text(self) -> str:
        """The network's input, in words."""
        if not self.physical:
            return f"whole images resized to {self.image_size} x {self.image_size} px"
        return (f"{self.image_size} x {self.image_size} px of {self.spacing_mm:.3g} mm "
                f"({self.image_size * self.spacing_mm:.0f} mm field of view) around each "
                "image's centre")


def resolve_options(space: SearchSpace, data: Path, **given: Any) -> SearchOptions:
    """Merges command-line values (None = not given) with the space's and our defaults.

    Raises:
        UserError: An option is out of range.
    """
    merged = {key: given.get(key) if given.get(key) is not None
              else space.search.get(key, default) for key, default in DEFAULTS.items()}
    spacing, field_of_view = parse_spacing(given.get("spacing")), given.get("field_of_view")
    if spacing == 0.0 and field_of_view is not None:
        raise UserError("--field-of-view: with --spacing none the whole image is resized; "
                        "drop one of them")
    if spacing != 0.0:
        # On the physical grid the size follows from the pixel size and the field of
        # view unless given on the command line (a space's image size is for --spacing
        # none); chosen with the data, in prepare_run.
        merged["image_size"] = given.get("image_size") or 0
    for key in ("max_epochs", "image_size", "batch_size", "hyperband_iterations"):
        if merged[key] < 1 and not (key == "image_size" and spacing != 0.0):
            opt = "--iterations" if key == "hyperband_iterations" else f"--{key.replace('_', '-')}"
            raise UserError(f"{opt}: {merged[key]} must be at least 1")
    if merged["steps_per_epoch"] < 0:
        raise UserError(f"--steps-per-epoch: {merged['steps_per_epoch']} must be 0 (one pass "
                        "over each fold's training slices) or more")
    if given.get("max_trials") is not None and given["max_trials"] < 1:
        raise UserError(f"--max-trials: {given['max_trials']} must be at least 1")
    if merged["factor"] < 2:
        raise UserError(f"--factor: {merged['factor']} must be at least 2")
    if merged["min_epochs"] is None:
        # Three brackets: the most aggressive one screens factor**2 times as many
        # trials as it trains to the end, and it runs first, so it is what makes a
        # search find good trials in the first third of its epochs (with two brackets,
        # Hyperband never came within 0.01 of random search's best in a third of its
        # epochs: benchmarks/search_value.py). Its first rung must still rank trials: a
        # space should set max_epochs so that max_epochs / factor**2 epochs do (quick's 3
        # do on the phantom, not on the real subset's 80 images an epoch, README). Budgets
        # too small for three brackets get as many as fit.
        merged["min_epochs"] = default_min_epochs(merged["max_epochs"], merged["factor"])
    if not 1 <= merged["min_epochs"] <= merged["max_epochs"]:
        raise UserError(f"--min-epochs: {merged['min_epochs']} must be from 1 to --max-epochs "
                        f"({merged['max_epochs']})")
    precision = given.get("precision") or "float32"
    if precision not in PRECISIONS:
        raise UserError(f"--precision: unknown {precision!r}; choose {', '.join(PRECISIONS)}")
    if merged["image_size"]:
        check_image_size(space, merged["image_size"])
    if field_of_view is not None and field_of_view <= 0:
        raise UserError(f"--field-of-view: {field_of_view:g} mm must be more than 0")
    if (spacing and merged["image_size"] and field_of_view is not None):
        raise UserError("--image-size, --spacing and --field-of-view: any two decide the "
                        "third; drop one")
    oracle = given.get("oracle") or "hyperband"
    if oracle not in ORACLES:
        raise UserError(f"--oracle: unknown {oracle!r}; choose one of {', '.join(ORACLES)}")
    max_trials = given.get("max_trials")
    include_default = bool(given.get("include_default"))
    if include_default and not space.default:
        raise UserError(f"--include-default: the space {space.name!r} ({space.path}) has no "
                        "[default] table; add one value per hyperparameter, or drop the "
                        "option")
    if oracle == "fixed":
        if not space.default:
            raise UserError(f"--oracle fixed: the space {space.name!r} ({space.path}) has no "
                            "[default] table; add one value per hyperparameter, or choose "
                            "another --oracle")
        max_trials = 1
    elif oracle != "hyperband" and max_trials is None:
        # What keras-tuner's RandomSearch and BayesianOptimization take by default.
        max_trials = DEFAULT_MAX_TRIALS
    groups_file = given.get("groups_file")
    stratify = given.get("stratify") or ("group" if groups_file else "slices")
    if stratify not in STRATIFY:
        raise UserError(f"--stratify: unknown {stratify!r}; choose {', '.join(STRATIFY)}")
    if groups_file and stratify != "group":
        raise UserError("--groups: a groups file stratifies by group; drop --stratify slices")
    return SearchOptions(
        test_seed=int(given.get("test_seed") or 0), stratify=stratify,
        groups_file=str(Path(groups_file).resolve()) if groups_file else "",
        group_column=given.get("group_column") or "group",
        data=str(Path(data).resolve()), space=str(Path(space.path).resolve()),
        space_digest=space.digest,
        test_patients=int(given.get("test_patients") or 0),
        test_ids=tuple(given.get("test_ids") or ()), seed=int(given.get("seed") or 0),
        precision=precision, jit=bool(given.get("jit")), max_trials=max_trials, oracle=oracle,
        spacing_mm=spacing, field_of_view_mm=field_of_view,
        include_default=include_default and oracle != "fixed", lr_per_rung=True, **merged)


def parse_spacing(value: Any) -> float | None:
    """``--spacing``: None (not given: from the data), ``none`` (0.0: whole images
    resized) or a pixel size in mm.

    Raises:
        UserError: Neither a positive number nor ``none``.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return 0.0
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--spacing: {value!r} is neither a pixel size in mm nor 'none'") from None
    if not mm > 0 or mm == float("inf"):
        raise UserError(f"--spacing: {value} must be a pixel size above 0 mm, or 'none'")
    return mm


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
    options = replace(options, data_digest=manifest_mod.identity(data.manifest))
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
        previous = json.loads(record.read_text(encoding="utf-8"))
        split = splits_mod.load(out / splits_mod.FILENAME, list(counts))
        legacy = {f.name: f.default for f in fields(SearchOptions) if f.default is not MISSING}
        if "spacing_mm" not in previous:
            # Written before the physical grid: resumed as it trained (whole images),
            # unless a grid is asked for explicitly (then the options differ, below).
            unknown = {k: legacy[k] for k in legacy if k not in previous
                       and k.startswith("augment_")}
            if options.spacing_mm is None and options.field_of_view_mm is None:
                unknown.update(spacing_mm=0.0, field_of_view_mm=0.0,
                               image_size=options.image_size or previous["image_size"])
            options = replace(options, **unknown)
        if "min_epochs" not in previous and "min_epochs" not in given:
            # Written before Hyperband's shortest rung was an option: it ran keras-tuner's
            # 1, and resumes so; another --min-epochs is refused below as a changed option.
            options = replace(options, min_epochs=1)
        elif ("min_epochs" not in given and "min_epochs" in previous
              and (previous.get("max_epochs"), previous.get("factor"))
              == (options.max_epochs, options.factor)):
            # The default rung changed (two brackets, then three): a run resumes with the
            # one it recorded for the same budget, as its brackets were laid out.
            options = replace(options, min_epochs=previous["min_epochs"])
        if "augment_offset_mm" not in previous:
            # Written before training views were cut around the LV: resumes with views
            # around the image centre, as its finished trials trained.
            options = replace(options, augment_offset_mm=0.0)
        if "lr_per_rung" not in previous:
            # Written before rungs restarted the schedule: resumes decaying over
            # max_epochs, as its finished trials trained.
            options = replace(options, lr_per_rung=False)
        # The grid chosen again from the same data and patients: the same, unless an
        # option that decides it changed.
        options = resolve_grid(options, data, split, space)
        # An option added since the run was written counts as the value it trained with.
        # Compared elsewhere: the space by its contents (space_digest), not by the path
        # (older runs hold relative ones); a splits file by its folds, below, not by the
        # recorded counts (older runs hold the command line's defaults); the data by its
        # contents where the run recorded them, so it may move. A new budget extends or
        # caps the search.
        skip = ("space", "data", "data_digest", *BUDGET_OPTIONS,
                *(SPLIT_OPTIONS if given_split is not None else ()))
        changed = [k for k, v in asdict(options).items() if k not in skip
                   and json.dumps(previous.get(k, legacy.get(k))) != json.dumps(v)]
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
                   if k in ("data", "data_digest", *BUDGET_OPTIONS) and previous.get(k) != v}
        if updated:
            atomic.write_json(record, {**previous, **updated})
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


def read_options(out: Path, missing: str) -> SearchOptions:
    """The resolved options stored in a run folder.

    Args:
        out: The run folder.
        missing: What to tell the user when the folder holds no search.

    Raises:
        UserError: No options file in ``out``.
    """
    record = Path(out) / SEARCH_FILE
    if not record.is_file():
        raise UserError(f"{out}: no {SEARCH_FILE} here; {missing}")
    stored = json.loads(record.read_text(encoding="utf-8"))
    return SearchOptions(**{**stored, "test_ids": tuple(stored["test_ids"])})


def run_space(out: Path, options: SearchOptions) -> SearchSpace:
    """The search space of a run folder: its own copy, else (runs written before it kept
    one) the file its options name.

    Raises:
        UserError: The space cannot be read, or the named file changed since the search
            started.
    """
    copy = Path(out) / SPACE_FILE
    if copy.is_file():
        return replace(load_space(copy), name=Path(options.space).stem)
    if not Path(options.space).is_file():
        raise UserError(f"{out}: its search space {options.space} is not there; run from the "
                        "folder the search was started in, or put the file back")
    sp = load_space(options.space)
    if sp.digest != options.space_digest:
        raise UserError(f"{options.space}: the search space file changed since the search "
                        f"in {out} started; put back the version it used")
    return sp


def relocate_data(out: Path, options: SearchOptions, data: PreparedData) -> SearchOptions:
    """A run's options with its data read from ``data`` (moved, or mounted elsewhere).

    Args:
        out: The run folder.
        options: Its options.
        data: The prepared data folder as it is now.

    Raises:
        UserError: ``data`` is not a prepared folder, or holds other data than the run's
            (for runs written before the data's digest was kept: lacks its patients).
    """
    if options.data_digest:
        other = manifest_mod.identity(data.manifest) != options.data_digest
    else:
        split = splits_mod.load(Path(out) / splits_mod.FILENAME)
        wanted = {pid for fold in split["folds"] for part in ("train", "val")
                  for pid in fold[part]} | set(split.get("test", []))
        other = bool(wanted - set(data.patient_ids))
    if other:
        raise UserError(f"--data: {data.root} holds other data than the search in {out} used; "
                        "pass the folder its data was prepared into")
    return replace(options, data=str(data.root.resolve()))


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


@dataclass
class Run:
    """A run folder (``results/NAME``).

    Attributes:
        path: The folder.
        options: The search's resolved options.
        splits: Its folds and held-out test patients.
        trials: keras-tuner trials by id, in id order.
    """

    path: Path
    options: SearchOptions
    splits: dict[str, Any]
    trials: dict[str, Any] = field(default_factory=dict)
    unreadable: list[UnreadableRecord] = field(default_factory=list)
    _data: PreparedData | None = field(default=None, repr=False)

    @property
    def n_folds(self) -> int:
        """Number of cross-validation folds."""
        return len(self.splits["folds"])

    @property
    def data_dir(self) -> Path:
        """The prepared data folder the search trained on.

        Raises:
            UserError: It holds no prepared data (any more).
        """
        data = Path(self.options.data)
        if not (data / manifest_mod.FILENAME).is_file():
            raise UserError(f"{self.path}: its data folder {data} holds no prepared data "
                            "(moved or deleted?); pass --data with the folder's new place")
        return data

    @property
    def data(self) -> PreparedData:
        """The prepared data folder with its manifest, read once.

        Raises:
            UserError: As :attr:`data_dir`, or the manifest is unreadable.
        """
        if self._data is None:
            self._data = manifest_mod.open_data(self.data_dir)
        return self._data

    def trial_dir(self, trial_id: str) -> Path:
        """Folder of one trial."""
        return self.path / PROJECT / f"trial_{trial_id}"

    def fold_results(self, trial_id: str) -> list[dict[str, Any] | None]:
        """Each fold's saved result (None where the fold has not finished, or where its
        result is unreadable, which :attr:`unreadable` then lists)."""
        return [self._fold_result(trial_id, k) for k in range(self.n_folds)]

    def _fold_result(self, trial_id: str, k: int) -> dict[str, Any] | None:
        try:
            return read_fold_result(self.trial_dir(trial_id), k)
        except UnreadableRecord as exc:
            if all(u.path != exc.path for u in self.unreadable):
                self.unreadable.append(exc)
            return None

    def full_history(self, trial_id: str, k: int) -> dict[str, list[float]]:
        """Fold ``k``'s training curves from epoch 1: a promoted trial's own epochs
        after those of the trials it continues."""
        result = self._fold_result(trial_id, k)
        if result is None:
            return {}
        history = {name: list(v) for name, v in result["history"].items()}
        parent = self.trials[trial_id].hyperparameters.values.get("tuner/trial_id")
        if parent is not None and parent in self.trials:
            earlier = self.full_history(parent, k)
            history = {name: earlier.get(name, [])[:result["initial_epoch"]] + values
                       for name, values in history.items()}
        return history

    @functools.cached_property
    def space(self) -> SearchSpace:
        """The search space the run used (read once)."""
        return run_space(self.path, self.options)

    def build_network(self, trial_id: str, precision: str = "float32"):
        """A freshly initialized, compiled network with a trial's hyperparameters.

        Args:
            trial_id: The trial.
            precision: Keras dtype policy to compute in.
        """
        from lvseg_search.model.hypermodel import SegmentationHyperModel

        hypermodel = SegmentationHyperModel(self.space, self.options.image_size,
                                            num_classes=self.data.num_classes, precision=precision)
        return hypermodel.build(self.trials[trial_id].hyperparameters.copy())

    def fold_network_path(self, trial_id: str, k: int) -> Path:
        """A trial's fold-``k`` checkpoint.

        Raises:
            UserError: The fold has no checkpoint.
        """
        path = fold_dir(self.trial_dir(trial_id), k) / CHECKPOINT
        if not path.is_file():
            raise UserError(f"{path}: missing; fold {k} of trial {trial_id} has not finished")
        return path

    def fold_network(self, trial_id: str, k: int):
        """A trial's fold-``k`` network with its saved weights (last epoch trained),
        computing in float32 whatever precision it trained in.

        Raises:
            UserError: The fold has no checkpoint.
        """
        from lvseg_search.model.deep_supervision import inference_network

        path = self.fold_network_path(trial_id, k)
        # Loaded into the network as it trained: the checkpoint holds the optimizer's
        # state too (under mixed_float16, a loss-scaling optimizer's), which only a built
        # optimizer of the same kind takes without a warning.
        result = self._fold_result(trial_id, k) or {}
        precision = result.get("dtype_policy", self.options.precision)
        trained = self.build_network(trial_id, precision)
        trained.optimizer.build(trained.trainable_variables)
        trained.load_weights(str(path))
        if precision == "float32":
            return inference_network(trained)
        # Reports and exported models compute in float32; the weights are float32 in
        # every policy.
        model = self.build_network(trial_id)
        model.set_weights(trained.get_weights())
        return inference_network(model)


def load_run(path: Path, data: Path | None = None) -> Run:
    """Reads a run folder.

    Args:
        path: The run folder.
        data: The prepared data folder, where it is now if it moved since the search
            (default: where the search read it).

    Raises:
        UserError: The folder holds no search, or ``data`` holds other data than the
            search used.
    """
    from lvseg_search.engine.kt_compat import load_trial

    path = Path(path)
    options = read_options(path, "not a search run folder; pass the --out folder of "
                                 "'lvseg-search search'")
    split = splits_mod.load(path / splits_mod.FILENAME)
    prepared = None
    if data is not None:
        prepared = manifest_mod.open_data(data)
        options = relocate_data(path, options, prepared)
    trials, unreadable = {}, []
    for p in sorted((path / PROJECT).glob("trial_*/trial.json"),
                    key=lambda p: p.parent.name.removeprefix("trial_").zfill(8)):
        try:
            t = load_trial(p)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            # Reported, never dropped: keras-tuner rewrites trial.json in place, so a
            # running search's file may be caught mid-write; anything else is damage.
            unreadable.append(UnreadableRecord(p, type(exc).__name__))
            continue
        trials[t.trial_id] = t
    return Run(path=path, options=options, splits=split, trials=trials,
               unreadable=unreadable, _data=prepared)


def find_trial(run: Run, trial_id: str) -> Any | None:
    """A trial by its id as the run writes it (``0015``) or as a number (``15``); None
    when the run has no such trial."""
    if trial_id in run.trials:
        return run.trials[trial_id]
    if trial_id.isdigit():
        # keras-tuner pads ids to the width of --max-trials, so users see 0015 or 15.
        for tid, trial in run.trials.items():
            if tid.isdigit() and int(tid) == int(trial_id):
                return trial
    return None


def completed_trials(run: Run) -> list[Any]:
    """Completed trials, best CV Dice first."""
    done = [t for t in run.trials.values() if t.status == "COMPLETED" and t.score is not None]
    return sorted(done, key=lambda t: t.score, reverse=True)


def best_trial(run: Run):
    """The trial with the best CV Dice.

    Raises:
        UserError: No trial has completed yet.
    """
    done = completed_trials(run)
    if not done:
        raise UserError(f"{run.path}: no trial has completed yet; wait for the search or "
                        "resume it")
    return done[0]


def summarize(out: Path) -> dict[str, Any]:
    """Completed trials (best first) and failed ones, read from the run folder (so the
    chief, a worker or a later ``report`` all see the same search)."""
    from lvseg_search.engine.kt_compat import load_trial

    folders = {}  # trial -> its folder, as found on disk
    unreadable = []
    for path in sorted((Path(out) / PROJECT).glob("trial_*/trial.json")):
        try:
            folders[load_trial(path)] = path.parent
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            unreadable.append(str(UnreadableRecord(path, type(exc).__name__)))
    trials = list(folders)
    completed = sorted((t for t in trials if t.status == "COMPLETED" and t.score is not None),
                       key=lambda t: t.score, reverse=True)
    rows = []
    for t in completed:
        metrics = {name: t.metrics.get_last_value(name) for name in t.metrics.metrics}
        rows.append({"trial_id": t.trial_id, "score": t.score, "metrics": metrics,
                     "hyperparameters": dict(t.hyperparameters.values)})
    failed = [{"trial_id": t.trial_id, "status": t.status,
               "message": trial_message(folders[t], t)}
              for t in trials if t.status in ("FAILED", "INVALID")]
    return {"completed": rows, "failed": failed, "n_trials": len(trials),
            "unreadable": unreadable}
