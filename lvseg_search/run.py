"""A search's run folder read back (finished, running or interrupted): its options,
splits, trials and fold results, and the networks of a trial (for report and export)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvseg_search import manifest as manifest_mod
from lvseg_search import splits as splits_mod
from lvseg_search.errors import UserError
from lvseg_search.search import (
    PROJECT,
    SearchOptions,
    read_options,
    relocate_data,
    run_space,
)
from lvseg_search.space import SearchSpace
from lvseg_search.tuner import CHECKPOINT, fold_dir, read_fold_result


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

    def trial_dir(self, trial_id: str) -> Path:
        """Folder of one trial."""
        return self.path / PROJECT / f"trial_{trial_id}"

    def fold_results(self, trial_id: str) -> list[dict[str, Any] | None]:
        """Each fold's saved result (None where the fold has not finished)."""
        return [read_fold_result(self.trial_dir(trial_id), k) for k in range(self.n_folds)]

    def full_history(self, trial_id: str, k: int) -> dict[str, list[float]]:
        """Fold ``k``'s training curves from epoch 1: a promoted trial's own epochs
        after those of the trials it continues."""
        result = read_fold_result(self.trial_dir(trial_id), k)
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

    @functools.cached_property
    def num_classes(self) -> int:
        """Classes (with background) of the prepared data (read once)."""
        return len(manifest_mod.load(self.data_dir)["classes"])

    def build_network(self, trial_id: str, precision: str = "float32"):
        """A freshly initialized, compiled network with a trial's hyperparameters.

        Args:
            trial_id: The trial.
            precision: Keras dtype policy to compute in.
        """
        from lvseg_search.hypermodel import SegmentationHyperModel

        hypermodel = SegmentationHyperModel(self.space, self.options.image_size,
                                            num_classes=self.num_classes, precision=precision)
        return hypermodel.build(self.trials[trial_id].hyperparameters.copy())

    def fold_network(self, trial_id: str, k: int):
        """A trial's fold-``k`` network with its saved weights (last epoch trained),
        computing in float32 whatever precision it trained in.

        Raises:
            UserError: The fold has no checkpoint.
        """
        path = fold_dir(self.trial_dir(trial_id), k) / CHECKPOINT
        if not path.is_file():
            raise UserError(f"{path}: missing; fold {k} of trial {trial_id} has not finished")
        # Loaded into the network as it trained: the checkpoint holds the optimizer's
        # state too (under mixed_float16, a loss-scaling optimizer's), which only a built
        # optimizer of the same kind takes without a warning.
        result = read_fold_result(self.trial_dir(trial_id), k) or {}
        precision = result.get("dtype_policy", self.options.precision)
        trained = self.build_network(trial_id, precision)
        trained.optimizer.build(trained.trainable_variables)
        trained.load_weights(str(path))
        if precision == "float32":
            return trained
        # Reports and exported models compute in float32; the weights are float32 in
        # every policy.
        model = self.build_network(trial_id)
        model.set_weights(trained.get_weights())
        return model


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
    from keras_tuner.engine.trial import Trial

    path = Path(path)
    options = read_options(path, "not a search run folder; pass the --out folder of "
                                 "'lvseg-search search'")
    split = splits_mod.load(path / splits_mod.FILENAME)
    if data is not None:
        options = relocate_data(path, options, data)
    trials = {}
    for p in sorted((path / PROJECT).glob("trial_*/trial.json"),
                    key=lambda p: p.parent.name.removeprefix("trial_").zfill(8)):
        try:
            t = Trial.load(str(p))
        except (ValueError, KeyError, json.JSONDecodeError):
            continue  # being written by a running search right now
        trials[t.trial_id] = t
    return Run(path=path, options=options, splits=split, trials=trials)


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
