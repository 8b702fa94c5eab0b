"""Cross-validated Hyperband: keras-tuner's Hyperband oracle, with every trial trained
and scored on each fold of a patient-grouped split.

Stock keras-tuner keeps one checkpoint per trial; with K folds a promoted trial must
continue *each fold's* model. So each fold writes its own checkpoint and result, and a
promoted trial's fold k resumes from its parent's fold k. A killed search re-runs only
the fold in progress: finished folds are read back from their result files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
from keras_tuner.errors import FailedTrialError, FatalError

from lvseg_search import atomic
from lvseg_search.engine import hparams
from lvseg_search.engine.cv import CrossValidation
from lvseg_search.engine.disk_space import (
    ensure_space,
    fold_bytes,
    planned_trials,
    search_bytes,
    warn_if_short,
)
from lvseg_search.engine.final_stage import final_stage_done, screening_done, with_final_stage
from lvseg_search.engine.fold_monitor import FoldMonitor
from lvseg_search.engine.kt_compat import (
    HyperbandOracle,
    LeanBuildTuner,
    atomic_state,
    default_first,
    is_remote_oracle,
    maybe_distribute,
)
from lvseg_search.engine.memory import release_memory, rss_mib
from lvseg_search.engine.options import ORACLES
from lvseg_search.engine.run import (
    CHECKPOINT,
    FAILURE,
    RESULT,
    UnreadableRecord,
    fold_dir,
    read_fold_result,
    trial_message,
)
from lvseg_search.engine.trial_score import (
    UnscorableTrial,
    cv_score,
    hparams_metrics,
    last_metrics,
)
from lvseg_search.engine.validation import FoldValidation, traced_forward
from lvseg_search.errors import UserError, disk_full_message, is_disk_full, size_text
from lvseg_search.evaluate.scoring import score_predictions
from lvseg_search.model.schedule import rung_ends, scheduler

# A trial whose folds evaluate their model at least this often in total validates
# through one traced forward pass (on 2 cores at 128 px the trace costs 0.08-0.2 s and
# saves 0.03-0.1 s a pass); shorter trials validate eagerly.
TRACED_VALIDATION_FROM = 3


class DiskFullError(UserError, FatalError):
    """The disk filled during a trial: a user's problem (one line, exit code 2), and
    fatal to keras-tuner's loop, which passes it on without marking the trial failed."""


def weights_seed(seed: int, trial_id: str) -> int:
    """The seed of a trial's initial weights (its fold models' and the export's), within
    the 0 to 2**32 - 1 that NumPy takes."""
    return (seed * 100003 + int(trial_id)) % 2**32


def make_oracle(kind: str, *, seed: int, max_epochs: int, factor: int,
                hyperband_iterations: int, max_trials: int | None, min_epochs: int = 1,
                default: dict[str, Any] | None = None,
                include_default: bool = False) -> keras_tuner.Oracle:
    """One of keras-tuner's own oracles for the search, maximizing ``val_dice``.

    Args:
        kind: ``hyperband`` (epochs by rung, ``factor`` and ``hyperband_iterations``),
            ``random`` or ``bayesian`` (every trial trains ``max_epochs`` epochs, up to
            ``max_trials`` trials), or ``fixed`` (one trial: ``default``).
        seed: The search's seed (keras-tuner takes 0 for none and draws a random one,
            so the oracle gets ``seed + 1``).
        max_epochs: Epochs of the longest trial.
        factor: Hyperband's reduction factor.
        min_epochs: Hyperband's shortest rung (:class:`HyperbandOracle`).
        hyperband_iterations: Hyperband's iterations.
        max_trials: Trials at most (Hyperband: a cap on its schedule; None: none).
        default: The space's default configuration, for ``fixed`` and
            ``include_default``.
        include_default: Make the default configuration the first trial (a baseline
            inside the search; ``hyperband``, ``random`` and ``bayesian``).

    Bayesian optimization draws its first :func:`initial_points` trials at random, then
    follows its Gaussian process.

    Raises:
        ValueError: An unknown kind, or ``include_default`` without a default.
    """
    objective = keras_tuner.Objective("val_dice", direction="max")
    common = {"objective": objective, "seed": seed + 1, "max_consecutive_failed_trials": 8}
    if include_default and kind != "fixed" and not default:
        raise ValueError("include_default: the space has no [default] configuration")
    classes = {"hyperband": HyperbandOracle,
               "random": keras_tuner.oracles.RandomSearchOracle,
               "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}
    if kind in classes:
        oracle_class = default_first(classes[kind]) if include_default else classes[kind]
        oracle_class = atomic_state(with_final_stage(oracle_class))
        if kind == "hyperband":
            oracle = oracle_class(max_epochs=max_epochs, factor=factor,
                                  min_epochs=min_epochs,
                                  hyperband_iterations=hyperband_iterations, **common)
        elif kind == "bayesian":
            oracle = oracle_class(max_trials=max_trials,
                                  num_initial_points=initial_points(max_trials), **common)
        else:
            oracle = oracle_class(max_trials=max_trials, **common)
        if include_default:
            oracle.first_values = dict(default or {})
        return oracle
    if kind == "fixed":
        # keras-tuner's own way to pin values: the space registers its hyperparameters
        # on these, and a registered Fixed value wins over the space's choice or range.
        fixed = keras_tuner.HyperParameters()
        for name, value in (default or {}).items():
            fixed.Fixed(name, value)
        return atomic_state(keras_tuner.oracles.RandomSearchOracle)(
            max_trials=1, hyperparameters=fixed, tune_new_entries=False, **common)
    raise ValueError(f"unknown oracle {kind!r}; choose one of {', '.join(ORACLES)}")


def initial_points(max_trials: int | None) -> int:
    """Random trials before Bayesian optimization fits its Gaussian process: a third of
    the trials, at least 3 (20 when the trials are not capped).

    keras-tuner's own default is three per hyperparameter registered, single-valued
    ones included: 39 for ``quick``, so a search of fewer trials never left random
    sampling and ``--oracle bayesian`` was random search under another name.
    """
    return max(3, math.ceil((max_trials or 60) / 3))


class CVTuner(LeanBuildTuner):
    """keras-tuner's Tuner with every trial scored by K-fold cross-validation, driven by
    any of its oracles (:func:`make_oracle`): Hyperband's trials train from their
    ``tuner/initial_epoch`` to ``tuner/epochs``, continuing their parent's fold
    checkpoints; the other oracles' trials train ``max_epochs`` from scratch.

    Args:
        cv: The folds (training and validation pipelines).
        oracle: The oracle.
        max_epochs: Epochs of the longest trial (learning-rate schedules span them).
        lr_per_rung: Restart each Hyperband trial's learning-rate schedule at its rung and
            decay it to the rung's end (``SearchOptions.lr_per_rung``).
        seed: Seed of the search: the fold models' initial weights (the oracle has its
            own, see :func:`make_oracle`).
        verbose: Print progress (trial, fold, epoch, best CV Dice so far).
        tensorboard_dir: Write each finished trial's HParams session and fold curves here.
        trial_budget: Stop after this many trials in this process (``recycle`` is then
            set), so that a fresh process can resume the search.
        on_share_ending: Called once, as this process starts the last trial of its
            ``trial_budget`` while more trials follow, so that the next process can load
            TensorFlow during that trial instead of after it.
        objective: Which contours' Dice ranks the trials where the data has a
            myocardium (``classes.OBJECTIVES``).
        **kwargs: Passed to ``keras_tuner.Tuner`` (hypermodel, directory, project_name,
            distribution_strategy, ...).
    """

    def __init__(self, cv: CrossValidation, oracle: keras_tuner.Oracle, max_epochs: int,
                 lr_per_rung: bool = False, seed: int = 0, verbose: bool = True,
                 tensorboard_dir: Path | None = None, trial_budget: int | None = None,
                 on_share_ending: Callable[[], None] | None = None,
                 objective: str = "mean", **kwargs):
        super().__init__(oracle=oracle, **kwargs)
        self.objective = objective
        # Learning-rate schedules run over the search's max_epochs; a worker's oracle is
        # a remote client without Hyperband's attributes, so the tuner keeps its own.
        self.max_epochs = int(max_epochs)
        self.lr_per_rung = lr_per_rung
        self.cv = cv
        self.seed = seed
        self.verbose = verbose
        self.tensorboard_dir = tensorboard_dir
        self.trial_budget = trial_budget
        self.on_share_ending = on_share_ending
        self.recycle = False  # stopped by the trial budget, not by the end of the search
        self.batch_seconds = 0.0  # time inside training batches, this process
        self.trial_log: list[dict[str, Any]] = []  # per finished trial: id, status, RSS
        self.disk_needs: int | None = None  # what the rest of the search will write

    def pre_create_trial(self):
        super().pre_create_trial()
        if self.trial_budget is None:
            return
        done = len(self.trial_log)
        if done >= self.trial_budget and not self._schedule_done():
            # Stop through the oracle's own limit: its next trial comes back STOPPED and
            # keras-tuner's loop ends; the oracle's state on disk is untouched.
            self.recycle = True
            self.oracle.max_trials = len(self.oracle.trials)
        elif (done == self.trial_budget - 1 and self.on_share_ending is not None
              and self._more_after_next()):
            self.on_share_ending()
            self.on_share_ending = None

    def _more_after_next(self) -> bool:
        """Whether trials may follow the one about to start (a search that ends on its
        own schedule right after it is not foreseen: the next process then only finds
        the search over)."""
        cap = self.oracle.max_trials
        return (cap is None or len(self.oracle.trials) + 1 < cap) and not self._schedule_done()

    def _schedule_done(self) -> bool:
        """Whether the oracle's next answer is STOPPED anyway (then no fresh process
        needs to start, only to find the search over)."""
        oracle = self.oracle
        if is_remote_oracle(oracle):
            # A worker's oracle is the chief's client, without the schedule's state: the
            # chief ends the search (and recycling runs in one process only).
            return False
        if oracle.max_trials is not None and len(oracle.trials) >= oracle.max_trials:
            return True
        return screening_done(oracle) and final_stage_done(oracle)

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        try:
            return self._run_trial(trial)
        except Exception as exc:
            # Not the trial's failure: keras-tuner would record it as failed (and write
            # that down, on the full disk). The trial stays unfinished, as after a kill,
            # and runs again when the search resumes.
            if is_disk_full(exc) and not isinstance(exc, UserError):
                raise DiskFullError(disk_full_message(
                    self.run_dir, self.disk_needs,
                    "run the same command to resume")) from None
            raise

    @property
    def run_dir(self) -> Path:
        """The search's run folder."""
        return Path(self.project_dir).parent

    def _check_space(self, trial, parameters: int) -> None:
        """Warns once per process, before its first fold trains, when the run's file
        system lacks the space the rest of the search will write."""
        planned = planned_trials(self.oracle)
        if planned is None:
            return
        left = max(1, planned - sum(t.status == "COMPLETED" for t in self.oracle.trials.values()))
        self.disk_needs = search_bytes(parameters, self.cv.n_folds, left)
        warn_if_short(self.run_dir, self.disk_needs,
                      f"this search ({left} more trial(s) of {self.cv.n_folds} folds, "
                      f"checkpoints of about {size_text(fold_bytes(parameters))} like "
                      f"trial {trial.trial_id}'s)", "run the same command to resume")

    def _run_trial(self, trial) -> dict[str, float]:
        hp = trial.hyperparameters
        # Hyperband says where a trial starts and ends; other oracles' trials train the
        # whole budget from scratch.
        epochs = int(hp.values.get("tuner/epochs", self.max_epochs))
        initial = int(hp.values.get("tuner/initial_epoch", 0))
        parent = hp.values.get("tuner/trial_id")
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        results: list[dict[str, Any]] = []
        model, initial_state, forward = None, None, None
        traced = (self.cv.replicas == 1
                  and self.cv.n_folds * (epochs - initial) >= TRACED_VALIDATION_FROM)
        try:
            for k in range(self.cv.n_folds):
                try:
                    done = read_fold_result(trial_dir, k)
                except UnreadableRecord as exc:
                    # Damaged on disk: said, and the fold trained again.
                    print(f"trial {trial.trial_id} fold {k + 1}: {exc}; training the fold "
                          "again", flush=True)
                    done = None
                if done is not None:
                    results.append(done)
                    continue
                if model is None:
                    keras.utils.set_random_seed(weights_seed(self.seed, trial.trial_id))
                    model = self.build_trial_model(hp)
                    if self.disk_needs is None:
                        self._check_space(trial, model.count_params())
                    with maybe_distribute(self.distribution_strategy):
                        model.optimizer.build(model.trainable_variables)
                    # Variables, not weights: the dropout layers' seed states too, so
                    # that every fold starts alike, whichever folds ran before it here.
                    initial_state = ([v.numpy() for v in model.variables],
                                     [v.numpy() for v in model.optimizer.variables])
                    forward = traced_forward(model) if traced else None
                else:
                    # One model per trial, reset per fold: building and tracing a model
                    # costs more than a small trial's training.
                    for v, value in zip(model.variables, initial_state[0], strict=True):
                        v.assign(value)
                    for v, value in zip(model.optimizer.variables, initial_state[1],
                                        strict=True):
                        v.assign(value)
                results.append(self._run_fold(trial, model, k, epochs, initial, parent,
                                              trial_dir, forward))
        finally:
            # Failed trials too: the next trial starts from a clean session.
            del model, initial_state, forward
            release_memory()
        try:
            return cv_score(results)
        except UnscorableTrial as exc:
            raise FailedTrialError(str(exc)) from None

    def _run_fold(self, trial, model, k: int, epochs: int, initial: int,
                  parent: str | None, trial_dir: Path,
                  forward: Callable[[np.ndarray], Any] | None = None) -> dict[str, Any]:
        out = fold_dir(trial_dir, k)
        out.mkdir(parents=True, exist_ok=True)
        # Temporary files of a process killed while it wrote this fold's checkpoint or
        # result: the fold starts again, so they are garbage.
        for stray in out.glob(".*"):
            if stray.is_file():
                stray.unlink(missing_ok=True)
        resumed_from = None
        if parent is not None:
            source = fold_dir(Path(self.get_trial_dir(parent)), k) / CHECKPOINT
            model.load_weights(str(source))
            resumed_from = f"trial_{parent}/fold_{k}/{CHECKPOINT}"

        def describe():
            return (f"trial {trial.trial_id} fold {k + 1}/{self.cv.n_folds}"
                    f" | best CV Dice {self._best_so_far()}")

        monitor = FoldMonitor(describe if self.verbose else None, epochs)
        validation = FoldValidation(self.cv.validation(k), forward=forward,
                                    objective=self.objective)
        start = time.perf_counter()
        try:
            # Validation first: the callbacks after it see val_dice in the epoch's logs.
            values = trial.hyperparameters.values
            # get_trial, not trials[]: a worker's oracle is a client of the chief's.
            ends = rung_ends(values, lambda t: self.oracle.get_trial(t).hyperparameters.values,
                             self.max_epochs, self.lr_per_rung)
            callbacks = [validation, monitor, *scheduler(values, ends)]
            fold = self.cv.fold(k)
            history = model.fit(**fold, epochs=epochs, initial_epoch=initial,
                                callbacks=callbacks, shuffle=False, verbose=0)
        except Exception as exc:  # noqa: BLE001 - classify, then re-raise
            # TensorFlow reports a full disk as ResourceExhausted too.
            if is_disk_full(exc):
                raise
            if isinstance(exc, MemoryError) or "ResourceExhausted" in type(exc).__name__:
                raise FailedTrialError(f"fold {k}: out of memory ({type(exc).__name__}); "
                                       "the search goes on with smaller models") from None
            raise
        finally:
            self.batch_seconds += monitor.batch_seconds
        if monitor.nan_epoch is not None:
            raise FailedTrialError(f"fold {k}: loss became NaN or infinite in epoch "
                                   f"{monitor.nan_epoch + 1}")
        fit_seconds = time.perf_counter() - start
        tmp = out / f".{os.getpid()}.{CHECKPOINT}"
        # Twice the file's size: HDF5 takes more while it writes than the file keeps.
        ensure_space(out, 2 * fold_bytes(model.count_params()))
        try:
            model.save_weights(str(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        atomic.replace(tmp, out / CHECKPOINT)
        # Full-resolution scores with physical units of the saved (last-epoch) model, from
        # the last validation's probabilities resized as the deployable model does.
        t_eval = time.perf_counter()
        _, evaluation = score_predictions(validation.masks(), validation.data.patients,
                                          self.objective)
        eval_seconds = time.perf_counter() - t_eval
        result = {
            "fold": k,
            "tuner_id": self.tuner_id,
            "initial_epoch": initial,
            "epochs": epochs,
            "steps_per_epoch": fold["steps_per_epoch"],
            "resumed_from": resumed_from,
            "train_patients": self.cv.patients(k, "train"),
            "val_patients": self.cv.patients(k, "val"),
            "history": {name: [float(v) for v in values]
                        for name, values in history.history.items()},
            "train_seconds": time.perf_counter() - start,
            "fit_seconds": fit_seconds,
            "batch_seconds": monitor.batch_seconds,
            "first_batch_seconds": monitor.first_batch_seconds or 0.0,
            "val_seconds": validation.seconds,
            "eval_seconds": eval_seconds,
            "parameters": int(model.count_params()),
            # How the fold model computed (--precision, --jit), as Keras resolved them.
            "dtype_policy": model.dtype_policy.name,
            "jit_compile": bool(model.jit_compile),
            "evaluation": evaluation,
        }
        # The result is written last: it marks the fold done for a resumed search.
        atomic.write_json(out / RESULT, result)
        return result

    def _best_so_far(self) -> str:
        best = self.oracle.get_best_trials(1)
        if not best or best[0].score is None:
            return "-"
        return f"{best[0].score:.3f} (trial {best[0].trial_id})"

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        if self.verbose:
            v = trial.hyperparameters.values
            shown = ", ".join(f"{k}={v[k]:.2g}" if isinstance(v[k], float) else f"{k}={v[k]}"
                              for k in v if not k.startswith("tuner/"))
            origin = (f", continues trial {v['tuner/trial_id']}" if "tuner/trial_id" in v
                      else "")
            where = (f" (bracket {v['tuner/bracket']}, round {v['tuner/round']}{origin})"
                     if "tuner/bracket" in v else "")
            print(f"trial {trial.trial_id}: epochs {v.get('tuner/initial_epoch', 0)}->"
                  f"{v.get('tuner/epochs', self.max_epochs)}{where} {shown}", flush=True)

    def on_trial_end(self, trial):
        if trial.status in ("FAILED", "INVALID") and trial.message:
            atomic.write_text(Path(self.get_trial_dir(trial.trial_id)) / FAILURE,
                              trial.message)
        super().on_trial_end(trial)
        self.trial_log.append({"trial_id": trial.trial_id, "status": trial.status,
                               "rss_mib": rss_mib(), "batch_seconds": self.batch_seconds,
                               "pid": os.getpid()})
        t = self.oracle.get_trial(trial.trial_id)
        if self.tensorboard_dir is not None and t.status == "COMPLETED":
            trial_dir = Path(self.get_trial_dir(t.trial_id))
            # Just written by this trial (atomically), so readable.
            folds = [read_fold_result(trial_dir, k) for k in range(self.cv.n_folds)]
            metrics = last_metrics(t)
            hparams.write_trial(self.tensorboard_dir, t.trial_id, t.hyperparameters.values,
                                hparams_metrics(metrics), [f for f in folds if f])
        if self.verbose:
            if t.status == "COMPLETED":
                m = t.metrics
                folds = " ".join(f"{m.get_last_value(f'val_dice_fold_{k}'):.3f}"
                                 for k in range(self.cv.n_folds))
                print(f"trial {t.trial_id} done: CV Dice {t.score:.3f} +- "
                      f"{m.get_last_value('val_dice_std'):.3f} (folds {folds}) | best "
                      f"{self._best_so_far()}", flush=True)
            else:
                reason = trial_message(self.get_trial_dir(t.trial_id), t).strip().splitlines()
                print(f"trial {t.trial_id} {t.status.lower()}: "
                      f"{reason[-1] if reason else 'no reason given'}", flush=True)
