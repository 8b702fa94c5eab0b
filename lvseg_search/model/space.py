"""Search spaces: one human-editable TOML file each in ``search_spaces/``.

A space lists hyperparameters under ``[hyperparameters]``; each is either a set of
``values`` (one value fixes it) or a ``min``/``max`` range with optional ``step`` and
``sampling = "log"``. An optional ``[search]`` table sets defaults for the search
options (command-line options override them).
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvseg_search.errors import UserError
from lvseg_search.model.schedule import SCHEDULES


def _spaces_dir() -> Path:
    """The shipped spaces: the repository's search_spaces/, which a regular install
    copies into the package (lvseg_search/search_spaces)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "search_spaces"
    return installed if installed.is_dir() else package.parent / "search_spaces"


SPACES_DIR = _spaces_dir()

# name -> (kind, allowed choices or (lowest, highest))
HYPERPARAMETERS: dict[str, tuple[str, Any]] = {
    "architecture": ("choice", ("encoder_decoder", "lab_fcn")),
    "depth": ("int", (1, 6)),
    "base_filters": ("int", (2, 512)),
    "kernel_size": ("int", (1, 9)),
    "convs_per_stage": ("int", (1, 4)),
    "downsampling": ("choice", ("max_pool", "strided_conv")),
    "decoder": ("choice", ("unet", "transposed", "fcn")),
    "normalization": ("choice", ("none", "batch", "group", "instance")),
    "dropout": ("float", (0.0, 0.9)),
    "activation": ("choice", ("relu", "elu", "gelu", "swish")),
    "loss": ("choice", ("crossentropy", "dice", "crossentropy_dice")),
    "optimizer": ("choice", ("adam", "adamw", "sgd", "rmsprop", "sgd_nesterov")),
    "learning_rate": ("float", (1e-7, 1e3)),
    "lr_schedule": ("choice", SCHEDULES),
    "block": ("choice", ("plain", "residual")),
    "deep_supervision": ("choice", ("off", "on")),
}

# Hyperparameters a space may leave out (spaces written before they existed), and the
# value they then take.
OPTIONAL = {"lr_schedule": "constant"}
# Hyperparameters added later still: a space that leaves one out does not declare it at
# all (so its searches draw the same configurations from the same seed as before it
# existed), and its networks take this value.
UNDECLARED = {"block": "plain", "deep_supervision": "off"}

# Largest meaningful value of each augmentation option (all start at 0: none); the
# last six are probabilities. augment_offset_mm is in mm (the LV-centred training views'
# offsets, data.pipeline).
AUGMENT_LIMITS = {"augment_rotation_deg": 180.0, "augment_scale": 0.9, "augment_shift": 0.5,
                  "augment_offset_mm": 100.0,
                  "augment_intensity": 1.0, "augment_gamma": 1.0, "augment_contrast": 1.0,
                  "augment_brightness": 1.0, "augment_noise": 1.0, "augment_blur": 1.0,
                  "augment_low_resolution": 1.0}

# Where a finalist starts (engine.final_stage): its configuration's longest screening
# trial's weights, or a new initialization trained with one decay to the final epoch.
FINAL_FROM = ("screening", "scratch")

SEARCH_OPTIONS: dict[str, type] = {
    "max_epochs": int, "min_epochs": int, "factor": int, "hyperband_iterations": int,
    "image_size": int, "batch_size": int, "folds": int, "normalization": str,
    "steps_per_epoch": int, "finalists": int, "final_epochs": int, "final_from": str,
    "max_trials": int,
    **dict.fromkeys(AUGMENT_LIMITS, float),
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter's domain."""

    name: str
    kind: str  # "int", "float" or "choice"
    values: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    sampling: str = "linear"

    @property
    def fixed(self) -> bool:
        """Whether the domain holds a single value."""
        return len(self.values) == 1 or (self.min is not None and self.min == self.max)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space."""

    name: str
    path: Path
    params: dict[str, Param]
    search: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    # The [default] table: one value per hyperparameter, a sensible fixed network to
    # train as a baseline (``search --oracle fixed``); empty when the file has none.
    default: dict[str, Any] = field(default_factory=dict)

    def register(self, hp) -> dict[str, Any]:
        """Declares every hyperparameter on a keras-tuner ``HyperParameters`` object.

        Returns:
            The current value of each hyperparameter.
        """
        values = {}
        for p in self.params.values():
            if p.fixed:
                values[p.name] = hp.Fixed(p.name, p.values[0] if p.values else p.min)
            elif p.values:
                values[p.name] = hp.Choice(p.name, list(p.values))
            elif p.kind == "int":
                values[p.name] = hp.Int(p.name, int(p.min), int(p.max),
                                        step=int(p.step) if p.step else None,
                                        sampling=p.sampling)
            else:
                values[p.name] = hp.Float(p.name, p.min, p.max, step=p.step,
                                          sampling=p.sampling)
        return values

    def largest(self, name: str) -> Any:
        """The largest value a numeric hyperparameter can take."""
        p = self.params[name]
        return max(p.values) if p.values else p.max


def _check_value(path: Path, name: str, kind: str, allowed, value) -> Any:
    if kind == "choice":
        if value not in allowed:
            raise UserError(f"{path}: hyperparameter {name!r} has unknown value {value!r}; "
                            f"choose from {', '.join(map(str, allowed))}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{path}: hyperparameter {name!r} must be a number, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise UserError(f"{path}: hyperparameter {name!r} must be a whole number, got {value}")
    lo, hi = allowed
    if not lo <= value <= hi:
        raise UserError(f"{path}: hyperparameter {name!r} value {value} is outside "
                        f"{lo}..{hi}")
    return int(value) if kind == "int" else float(value)


def _param(path: Path, name: str, spec: Any) -> Param:
    if name not in HYPERPARAMETERS:
        raise UserError(f"{path}: unknown hyperparameter {name!r}; known: "
                        f"{', '.join(HYPERPARAMETERS)}")
    kind, allowed = HYPERPARAMETERS[name]
    if not isinstance(spec, dict):
        raise UserError(f"{path}: hyperparameter {name!r} needs a table like "
                        "{ values = [...] } or { min = ..., max = ... }")
    unknown = set(spec) - {"values", "min", "max", "step", "sampling"}
    if unknown:
        raise UserError(f"{path}: hyperparameter {name!r} has unknown key(s) "
                        f"{', '.join(sorted(unknown))}; use values, min, max, step, sampling")
    if "values" in spec:
        if set(spec) - {"values"}:
            raise UserError(f"{path}: hyperparameter {name!r} mixes 'values' with a range")
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: hyperparameter {name!r} has an empty 'values' list; "
                            "give at least one value")
        checked = tuple(_check_value(path, name, kind, allowed, v) for v in values)
        if len(set(checked)) != len(checked):
            raise UserError(f"{path}: hyperparameter {name!r} repeats a value")
        return Param(name, kind, values=checked)
    if kind == "choice":
        raise UserError(f"{path}: hyperparameter {name!r} takes 'values', not a range")
    if "min" not in spec or "max" not in spec:
        raise UserError(f"{path}: hyperparameter {name!r} needs 'values' or both 'min' "
                        "and 'max'")
    lo = _check_value(path, name, kind, allowed, spec["min"])
    hi = _check_value(path, name, kind, allowed, spec["max"])
    if lo > hi:
        raise UserError(f"{path}: hyperparameter {name!r} has an empty range "
                        f"(min {lo} > max {hi})")
    sampling = spec.get("sampling", "linear")
    if sampling not in ("linear", "log"):
        raise UserError(f"{path}: hyperparameter {name!r} sampling must be 'linear' or 'log'")
    if sampling == "log" and lo <= 0:
        raise UserError(f"{path}: hyperparameter {name!r} needs min > 0 for log sampling")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)
                             or step <= 0):
        raise UserError(f"{path}: hyperparameter {name!r} step must be a positive number")
    return Param(name, kind, min=lo, max=hi, step=step, sampling=sampling)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Loads and validates a search space by name (``quick``) or file path.

    Raises:
        UserError: The file is missing, not TOML, or has an unknown key, an empty
            range, a bad value or a missing hyperparameter.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = SPACES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.toml"))
        raise UserError(f"--space: no search space {str(name_or_path)!r}; use one of "
                        f"{', '.join(known)} or a .toml file path")
    raw = path.read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(doc) - {"hyperparameters", "search", "description", "default"}
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a space has "
                        "'description', [hyperparameters], [search] and [default]")
    hps = doc.get("hyperparameters")
    if not isinstance(hps, dict) or not hps:
        raise UserError(f"{path}: no [hyperparameters] table")
    params = {name: _param(path, name, spec) for name, spec in hps.items()}
    for name, value in OPTIONAL.items():
        params.setdefault(name, Param(name, HYPERPARAMETERS[name][0], values=(value,)))
    missing = [n for n in HYPERPARAMETERS if n not in params and n not in UNDECLARED]
    if missing:
        raise UserError(f"{path}: hyperparameter(s) {', '.join(missing)} missing; give each "
                        "a value (values = [x]) or a range")
    search = doc.get("search", {})
    for key, value in search.items():
        if key not in SEARCH_OPTIONS:
            raise UserError(f"{path}: unknown [search] key {key!r}; known: "
                            f"{', '.join(SEARCH_OPTIONS)}")
        kind = SEARCH_OPTIONS[key]
        allowed = (int, float) if kind is float else kind  # TOML writes 180 as an integer
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise UserError(f"{path}: [search] {key} must be a "
                            f"{ {float: 'number', int: 'whole number'}.get(kind, 'string')}")
        if key == "steps_per_epoch" and value < 0:
            raise UserError(f"{path}: [search] steps_per_epoch = {value} must be 0 (one pass "
                            "over each fold's training slices) or more")
        if key == "max_trials" and value < 1:
            raise UserError(f"{path}: [search] max_trials = {value} must be at least 1")
        if key == "final_from" and value not in FINAL_FROM:
            raise UserError(f"{path}: [search] final_from = {value!r} is unknown; choose "
                            f"{' or '.join(FINAL_FROM)}")
        if key in AUGMENT_LIMITS and not 0 <= value <= AUGMENT_LIMITS[key]:
            raise UserError(f"{path}: [search] {key} = {value} is out of range; use 0 "
                            f"(none) to {AUGMENT_LIMITS[key]:g}")
    return SearchSpace(name=path.stem, path=path, params=params, search=dict(search),
                       digest=hashlib.sha256(raw).hexdigest()[:16],
                       default=_default(path, doc.get("default"), params))


def _default(path: Path, table: Any, params: dict[str, Param]) -> dict[str, Any]:
    """The [default] table checked against the space: a known hyperparameter each, its
    value in the space's domain, and every hyperparameter given (one the space fixes may
    be left out: it takes that value)."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise UserError(f"{path}: [default] must be a table of one value per hyperparameter")
    values = {}
    for name, value in table.items():
        if name not in params:
            raise UserError(f"{path}: [default] has unknown hyperparameter {name!r}; known: "
                            f"{', '.join(params)}")
        p = params[name]
        if p.values:
            if isinstance(value, bool) or value not in p.values:
                raise UserError(f"{path}: [default] {name} = {value!r} is not one of the "
                                f"space's values ({', '.join(map(str, p.values))})")
            values[name] = p.values[p.values.index(value)]
        else:
            values[name] = _check_value(path, f"[default] {name}", p.kind, (p.min, p.max),
                                        value)
    for name, p in params.items():
        if name not in values:
            if not p.fixed:
                raise UserError(f"{path}: [default] gives no value for {name!r}; give one "
                                "value per hyperparameter that varies")
            values[name] = p.values[0] if p.values else p.min
    return {name: values[name] for name in params}


def largest_stride(space: SearchSpace) -> int:
    """The largest downsampling of the space's networks: every input size must be a
    multiple of it."""
    archs = space.params["architecture"].values
    return max((2 ** int(space.largest("depth")) if a == "encoder_decoder" else 16)
               for a in archs)


def check_image_size(space: SearchSpace, image_size: int) -> None:
    """Checks every network of the space fits ``image_size``.

    Raises:
        UserError: The image size is not divisible by the deepest network's stride.
    """
    stride = largest_stride(space)
    if image_size % stride:
        raise UserError(f"--image-size: {image_size} is not divisible by {stride}, the "
                        f"largest downsampling of space {space.name!r}; use a multiple of "
                        f"{stride}, e.g. {math.ceil(image_size / stride) * stride}")
