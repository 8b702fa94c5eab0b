"""The options of a search: their schema with its true defaults, the names the command
line gives them, and their resolution (command line over the space's ``[search]`` table
over the defaults here) with every range check.

``search.json`` holds these options as resolved; ``engine.upgrade`` brings the files of
older run folders to this schema with the values those folders trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lvseg_search.classes import OBJECTIVES
from lvseg_search.data.augmentation import Augmentation
from lvseg_search.data.pipeline import PipelineConfig
from lvseg_search.errors import UserError
from lvseg_search.model.space import FINAL_FROM, SearchSpace, check_image_size

# Version 1: the first versioned schema (augmentation nested; every option recorded).
# Version 2: the final stage (finalists, final_epochs); the default network in the race
# unless --no-default.
# Version 3: the objective over the contours (endo, epi, mean).
# Version 4: where finalists start (final_from).
SCHEMA_VERSION = 4
# Finalists when none are asked for (capped by the trials a capped search screens).
DEFAULT_FINALISTS = 3
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Options a splits file (--splits) decides instead of the command line.
SPLIT_OPTIONS = ("folds", "test_patients", "test_ids", "test_seed", "stratify", "groups_file",
                 "group_column")
STRATIFY = ("slices", "group")
# keras-tuner's oracles (engine.tuner.make_oracle), and the trials the random and the
# Bayesian ones run by default, as in keras-tuner.
ORACLES = ("hyperband", "random", "bayesian", "fixed")
DEFAULT_MAX_TRIALS = 10
# Options that only size the search, not how a trial trains: a run may resume with others.
BUDGET_OPTIONS = ("max_trials", "hyperband_iterations", "finalists")
# Options a space's [search] table may set (and the augment_* keys, see Augmentation).
SPACE_OPTIONS = ("max_epochs", "min_epochs", "factor", "hyperband_iterations", "image_size",
                 "batch_size", "folds", "normalization", "steps_per_epoch", "finalists",
                 "final_epochs", "final_from")
# The options given on the command line (None: not given), by the option's name; the
# command-line destinations that differ from it, and the two that are no option field.
GIVEN = ("folds", "test_patients", "test_ids", "test_seed", "stratify", "groups_file",
         "group_column", "max_epochs", "min_epochs", "factor", "hyperband_iterations",
         "image_size", "spacing", "field_of_view", "batch_size", "steps_per_epoch",
         "normalization", "seed", "precision", "jit", "max_trials", "oracle",
         "include_default", "no_default", "finalists", "final_epochs", "final_from",
         "objective")
CLI_NAMES = {"hyperband_iterations": "iterations", "groups_file": "groups"}


@dataclass(frozen=True)
class SearchOptions:
    """Resolved options of one search (``search.json``). The defaults are the search's
    own; a space's ``[search]`` table and the command line override them
    (:func:`resolve_options`).

    Attributes:
        spacing_mm: The network grid's pixel size, mm (``data.target_grid``): None
            until chosen from the data (``engine.run_setup``), 0 to resize whole images
            to ``image_size`` (``--spacing none``).
        field_of_view_mm: The grid's field of view, mm (None: from the data).
        min_epochs: Hyperband's shortest rung (None: :func:`default_min_epochs`).
        include_default: The space's ``[default]`` network as the first trial (by
            default whenever the space has one; ``--no-default``).
        finalists: Distinct configurations the final stage trains again after
            screening (``engine.final_stage``; 0: none).
        final_epochs: Their epochs (None: twice ``max_epochs`` unless the space says).
        final_from: Where a finalist starts (``model.space.FINAL_FROM``): its
            configuration's longest screening trial (continued, the learning rate
            restarted) or a new initialization with one decay to ``final_epochs``.
        lr_per_rung: Hyperband trials anneal their learning rate to their rung's end,
            restarting at each promotion (``model.schedule``).
        data_digest: ``manifest.identity`` of the data (it may move).
        objective: What ranks trials where the data has a myocardium
            (``classes.OBJECTIVES``): the endocardial contour's Dice, the epicardial's,
            or their mean; the blood pool's Dice where it has none.
    """

    data: str
    space: str
    space_digest: str
    folds: int = 3
    test_patients: int = 0
    test_ids: tuple[str, ...] = ()
    max_epochs: int = 9
    factor: int = 3
    hyperband_iterations: int = 1
    image_size: int = 128
    batch_size: int = 8
    normalization: str = "zscore"
    seed: int = 0
    precision: str = "float32"
    jit: bool = False
    max_trials: int | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)
    # 0: an epoch is one pass over the fold's training slices.
    steps_per_epoch: int = 0
    data_digest: str = ""
    test_seed: int = 0
    stratify: str = "slices"
    oracle: str = "hyperband"
    groups_file: str = ""
    group_column: str = "group"
    spacing_mm: float | None = None
    field_of_view_mm: float | None = None
    include_default: bool = True
    min_epochs: int | None = None
    lr_per_rung: bool = True
    finalists: int = DEFAULT_FINALISTS
    final_epochs: int | None = None
    final_from: str = "screening"
    objective: str = "mean"
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: Path | str) -> SearchOptions:
        """The options from a current-schema record (``engine.upgrade.upgrade`` first).

        Args:
            record: The record's options by name.
            source: Its file, for messages.

        Raises:
            UserError: The record holds an option this version does not know.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise UserError(f"{source}: unknown option(s) {', '.join(unknown)}; it was "
                            "written by a newer lvseg-search; upgrade the package")
        values = dict(record)
        values["test_ids"] = tuple(values.get("test_ids", ()))
        if isinstance(values.get("augmentation"), Mapping):
            values["augmentation"] = Augmentation(**values["augmentation"])
        return cls(**values)

    def pipeline(self, batch_size: int | None = None) -> PipelineConfig:
        """The search's pipeline settings (``.training()`` adds shuffling and the
        augmentation given here).

        Args:
            batch_size: Images per batch (default: the search's).
        """
        return PipelineConfig(
            image_size=self.image_size, spacing_mm=self.spacing_mm or None,
            normalization=self.normalization, batch_size=batch_size or self.batch_size,
            seed=self.seed, augmentation=self.augmentation)

    @property
    def physical(self) -> bool:
        """Whether the network sees a physical grid (else whole images resized)."""
        return bool(self.spacing_mm)

    def plan_text(self) -> str:
        """How the search samples and trains its trials, in words."""
        default = "; the space's default network first" if self.include_default else ""
        top = ("the best configuration" if self.finalists == 1
               else f"the top {self.finalists} configurations")
        how = ("trained from scratch" if self.final_from == "scratch" else "trained on")
        final = (f"; then {top}"
                 f"{' and the default network' if self.include_default else ''} {how} "
                 f"to {self.final_epochs} epochs (final stage)"
                 if self.finalists and self.oracle != "fixed" else "")
        return self._screening_text() + default + final

    def _screening_text(self) -> str:
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

    def augmentation_text(self) -> str:
        """The training augmentation, in words."""
        return self.augmentation.describe(self.physical)


_DEFAULT = {f.name: f.default for f in fields(SearchOptions)}


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
    # keras-tuner's own count (engine.kt_compat.hyperband_brackets, without loading
    # keras-tuner here) with a shortest rung of 1: the most brackets this budget can have.
    possible, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        possible += 1
    return max(1, max_epochs // factor ** (min(brackets, possible) - 1))


def given_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The search options given on a command line, by option name (None: not given).

    Args:
        arguments: The parsed command line, by destination (``vars(namespace)``).
    """
    given = {name: arguments.get(CLI_NAMES.get(name, name)) for name in GIVEN}
    if isinstance(given["test_ids"], str):
        given["test_ids"] = [s for s in given["test_ids"].split(",") if s] or None
    return given


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


def _merged(space: SearchSpace, given: Mapping[str, Any]) -> dict[str, Any]:
    """Command line over the space's [search] table over the schema's defaults."""
    merged = {key: given[key] if given.get(key) is not None
              else space.search.get(key, _DEFAULT[key]) for key in SPACE_OPTIONS}
    defaults = Augmentation().as_options()
    merged["augmentation"] = Augmentation.from_options(
        {key: space.search.get(key, value) for key, value in defaults.items()})
    return merged


def resolve_options(space: SearchSpace, data: Path, **given: Any) -> SearchOptions:
    """Merges command-line values (None = not given) with the space's and our defaults.

    Args:
        space: The search space.
        data: The prepared data folder.
        **given: Options by name (:data:`GIVEN`).

    Raises:
        UserError: An option is out of range or contradicts another.
    """
    unknown = sorted(set(given) - set(GIVEN))
    if unknown:
        raise TypeError(f"resolve_options: unknown option(s) {', '.join(unknown)}")
    merged = _merged(space, given)
    spacing, field_of_view = parse_spacing(given.get("spacing")), given.get("field_of_view")
    if spacing == 0.0 and field_of_view is not None:
        raise UserError("--field-of-view: with --spacing none the whole image is resized; "
                        "drop one of them")
    if spacing != 0.0:
        # On the physical grid the size follows from the pixel size and the field of
        # view unless given on the command line (a space's image size is for --spacing
        # none); chosen with the data, in run_setup.
        merged["image_size"] = given.get("image_size") or 0
    _check_ranges(merged, spacing, given)
    if given.get("max_epochs") is not None:
        # A space's shortest rung and final budget go with its own max_epochs: under
        # another --max-epochs each is kept where it still fits, else the rules below
        # give it (given on the command line, a misfit is refused as usual).
        if given.get("min_epochs") is None and (merged["min_epochs"] or 0) > merged["max_epochs"]:
            merged["min_epochs"] = None
        if (given.get("final_epochs") is None and merged["final_epochs"] is not None
                and merged["final_epochs"] <= merged["max_epochs"]):
            merged["final_epochs"] = None
    if merged["min_epochs"] is None:
        # Three brackets: the most aggressive one screens factor**2 times as many
        # trials as it trains to the end, and it runs first, so it is what makes a
        # search find good trials in the first third of its epochs (with two brackets,
        # Hyperband never came within 0.01 of random search's best in a third of its
        # epochs: benchmarks/search_value.py). Budgets too small for three brackets get
        # as many as fit.
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
    if spacing and merged["image_size"] and field_of_view is not None:
        raise UserError("--image-size, --spacing and --field-of-view: any two decide the "
                        "third; drop one")
    oracle, max_trials, include_default = _oracle_options(space, given)
    _final_stage(merged, given, oracle, max_trials)
    objective = given.get("objective") or "mean"
    if objective not in OBJECTIVES:
        raise UserError(f"--objective: unknown {objective!r}; choose one of "
                        f"{', '.join(OBJECTIVES)}")
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
        include_default=include_default, objective=objective, **merged)


def _check_ranges(merged: dict[str, Any], spacing: float | None,
                  given: Mapping[str, Any]) -> None:
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


def _final_stage(merged: dict[str, Any], given: Mapping[str, Any], oracle: str,
                 max_trials: int | None) -> None:
    """Checks and completes the final stage's options in ``merged``."""
    if merged["finalists"] is None:
        merged["finalists"] = DEFAULT_FINALISTS
    if merged["finalists"] < 0:
        raise UserError(f"--finalists: {merged['finalists']} must be 0 (no final stage) or "
                        "more")
    if oracle == "fixed":
        merged["finalists"] = 0  # one network: nothing to choose from
    elif max_trials is not None and merged["finalists"] > max_trials:
        if given.get("finalists") is not None:
            raise UserError(f"--finalists: {merged['finalists']} is more than the "
                            f"{max_trials} trials screened (--max-trials); ask for fewer "
                            "finalists or more trials")
        merged["finalists"] = max_trials
    if merged["final_epochs"] is None:
        # As long as a fixed network trained long (the README's real-data command gives
        # --oracle fixed twice the quick space's max_epochs).
        merged["final_epochs"] = 2 * merged["max_epochs"]
    if merged["final_from"] not in FINAL_FROM:
        raise UserError(f"--final-from: unknown {merged['final_from']!r}; choose "
                        f"{' or '.join(FINAL_FROM)}")
    if merged["finalists"] and merged["final_epochs"] <= merged["max_epochs"]:
        raise UserError(f"--final-epochs: {merged['final_epochs']} is not above the "
                        f"screening's --max-epochs ({merged['max_epochs']}); finalists "
                        "train on beyond the longest screened trial")


def _oracle_options(space: SearchSpace, given: Mapping[str, Any]
                    ) -> tuple[str, int | None, bool]:
    """The oracle, its trial budget and whether the default network competes."""
    oracle = given.get("oracle") or "hyperband"
    if oracle not in ORACLES:
        raise UserError(f"--oracle: unknown {oracle!r}; choose one of {', '.join(ORACLES)}")
    max_trials = given.get("max_trials")
    if max_trials is None and oracle != "fixed":
        max_trials = space.search.get("max_trials")  # checked when the space was read
    if given.get("include_default") and given.get("no_default"):
        raise UserError("--include-default and --no-default: choose one")
    asked = bool(given.get("include_default"))
    # The default network competes whenever the space has one, unless --no-default.
    include_default = asked or (bool(space.default) and not given.get("no_default"))
    if asked and not space.default:
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
    return oracle, max_trials, include_default and oracle != "fixed"

