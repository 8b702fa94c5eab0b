"""The run folder of a search (``results/NAME``): its layout, and reading it back
(finished, running or interrupted) for ``search``, ``report``, ``export`` and the tuner.
Its options are ``engine.options``'s schema (older files upgraded by ``engine.upgrade``);
``engine.run_setup`` creates or resumes it.

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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lvseg_search.data import manifest as manifest_mod
from lvseg_search.data import splits as splits_mod
from lvseg_search.data.manifest import PreparedData
from lvseg_search.engine import upgrade
from lvseg_search.engine.options import SearchOptions
from lvseg_search.engine.trial_score import last_metrics
from lvseg_search.errors import UserError
from lvseg_search.model.schedule import FINAL
from lvseg_search.model.space import SearchSpace, load_space

CHECKPOINT = "checkpoint.weights.h5"
RESULT = "result.json"
FAILURE = "failure.txt"
SEARCH_FILE = "search.json"
SPACE_FILE = "space.toml"
PROJECT = "tuner"


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
    return SearchOptions.from_record(read_record(record)[1], record)


def read_record(record: Path) -> tuple[dict[str, Any], dict[str, Any], frozenset[str]]:
    """A ``search.json`` as written, upgraded to the current schema, and the options it
    lacked (:func:`engine.upgrade.upgrade`).

    Raises:
        UserError: The file is unreadable, or written by a newer package.
    """
    try:
        stored = json.loads(Path(record).read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError("not an options record")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{record}: unreadable search options ({exc}); restore the file "
                        "or start the search afresh with --overwrite") from None
    try:
        return (stored, *upgrade.upgrade(stored))
    except ValueError as exc:
        raise UserError(f"{record}: {exc}; upgrade lvseg-search to read it") from None


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

        classes = self.data.classes
        hypermodel = SegmentationHyperModel(self.space, self.options.image_size,
                                            num_classes=classes.count, precision=precision,
                                            ignore=classes.ignore,
                                            blood_pool=classes.blood_pool)
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
    path = Path(path)
    options = read_options(path, "not a search run folder; pass the --out folder of "
                                 "'lvseg-search search'")
    split = splits_mod.load(path / splits_mod.FILENAME)
    prepared = None
    if data is not None:
        prepared = manifest_mod.open_data(data)
        options = relocate_data(path, options, prepared)
    trials, unreadable = load_trials(path)
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


def ranked(trials: Iterable[Any]) -> list[Any]:
    """The completed ones of ``trials``, best first: the final stage's trials (trained to
    the final budget) before the screening's, each by CV Dice."""
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    return sorted(done, key=lambda t: (bool(t.hyperparameters.values.get(FINAL)), t.score),
                  reverse=True)


def completed_trials(run: Run) -> list[Any]:
    """Completed trials, best first (:func:`ranked`)."""
    return ranked(run.trials.values())


def best_trial(run: Run):
    """The best trial: the best finalist where the search has a final stage, else the
    trial with the best CV Dice.

    Raises:
        UserError: No trial has completed yet.
    """
    done = completed_trials(run)
    if not done:
        raise UserError(f"{run.path}: no trial has completed yet; wait for the search or "
                        "resume it")
    return done[0]


def load_trials(out: Path) -> tuple[dict[str, Any], list[UnreadableRecord]]:
    """Every trial of a run folder, by id in id order, and the trial records that could
    not be read.

    Reported, never dropped: keras-tuner rewrites ``trial.json`` in place, so a running
    search's file may be caught mid-write; anything else is damage.
    """
    from lvseg_search.engine.kt_compat import load_trial

    trials, unreadable = {}, []
    for path in sorted((Path(out) / PROJECT).glob("trial_*/trial.json"),
                       key=lambda p: p.parent.name.removeprefix("trial_").zfill(8)):
        try:
            trial = load_trial(path)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            unreadable.append(UnreadableRecord(path, type(exc).__name__))
            continue
        trials[trial.trial_id] = trial
    return trials, unreadable


def summarize_trials(out: Path) -> dict[str, Any]:
    """Completed trials (best first) and failed ones, read from the run folder (so the
    chief, a worker or a later ``report`` all see the same search)."""
    found, unreadable = load_trials(out)
    trials = list(found.values())
    completed = ranked(trials)
    rows = [{"trial_id": t.trial_id, "score": t.score, "metrics": last_metrics(t),
             "hyperparameters": dict(t.hyperparameters.values)} for t in completed]
    failed = [{"trial_id": t.trial_id, "status": t.status,
               "message": trial_message(Path(out) / PROJECT / f"trial_{t.trial_id}", t)}
              for t in trials if t.status in ("FAILED", "INVALID")]
    return {"completed": rows, "failed": failed, "n_trials": len(trials),
            "unreadable": [str(u) for u in unreadable]}
