"""TensorBoard HParams logs of a search: ``results/NAME/tensorboard``.

The log dir holds one ``hparams_config`` (every hyperparameter of the space with its
domain, and the metrics) and one session per trial, ``trial_<id>/``, with its
hyperparameter values and cross-validation scores; each fold's training curves go to
``trial_<id>/fold_<k>/``. ``tensorboard --logdir results/NAME/tensorboard`` shows them
in the HParams tab (table, parallel coordinates, scatter plots).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from lvseg_search._tf import tf
from lvseg_search.model.schedule import FINAL
from lvseg_search.model.space import SearchSpace

DIRNAME = "tensorboard"
EPOCHS = "epochs"  # Hyperband's epoch budget of the trial (keras-tuner's tuner/epochs)
STAGE = "stage"  # screening, or the final stage (engine.final_stage)
# (tag, display name, description) of the trial-level metrics.
TRIAL_METRICS = (
    ("cv_dice", "CV Dice", "mean validation Dice over the folds, last epoch, masks as delivered"),
    ("cv_dice_std", "CV Dice std", "standard deviation of the folds' validation Dice"),
    ("apd_mm", "APD (mm)", "average perpendicular distance, validation, last epoch"),
    ("hausdorff_mm", "Hausdorff (mm)", "Hausdorff distance, validation, last epoch"),
    ("good_contours_pct", "good contours %", "validation contours with APD < 5 mm"),
    ("scored_epoch", "epoch", "epochs trained: every figure is at the last epoch"),
    ("parameters", "parameters", "trainable and other weights of the network"),
)
# Each contour's figures, declared where the data has a myocardium.
CONTOUR_METRICS = (
    ("endo_dice", "endo Dice", "endocardial contour (blood pool) Dice, validation"),
    ("epi_dice", "epi Dice", "epicardial contour (blood pool + myocardium) Dice, validation "
                             "images with an o-contour"),
    ("myo_dice", "myo Dice", "myocardium Dice, validation images with an o-contour"),
    ("epi_apd_mm", "epi APD (mm)", "epicardial average perpendicular distance"),
    ("epi_good_contours_pct", "epi good contours %", "epicardial contours with APD < 5 mm"),
)


def _domain(param):
    from tensorboard.plugins.hparams import api as hp

    if param.values:
        return hp.Discrete(list(param.values))
    if param.kind == "int":
        return hp.IntInterval(int(param.min), int(param.max))
    return hp.RealInterval(float(param.min), float(param.max))


def write_config(logdir: Path, space: SearchSpace, n_folds: int, max_epochs: int,
                 contours: bool = False) -> None:
    """Declares the space's varying hyperparameters and the search's metrics.

    Args:
        logdir: The run's TensorBoard folder.
        space: The search space.
        n_folds: Number of cross-validation folds (one Dice metric each).
        max_epochs: Hyperband's largest epoch budget.
        contours: Declare each contour's figures too (data with a myocardium).
    """
    from tensorboard.plugins.hparams import api as hp

    t = tf()
    # A hyperparameter the space fixes is the same in every session: left out of the
    # experiment's declared columns (the sessions still record it), so the HParams table
    # opens on what varies.
    hparams = [hp.HParam(p.name, _domain(p)) for p in space.params.values() if not p.fixed]
    hparams.append(hp.HParam(EPOCHS, hp.IntInterval(1, int(max_epochs)),
                             description="epoch budget of the trial (Hyperband's rung, or "
                                         "the final stage's)"))
    hparams.append(hp.HParam(STAGE, hp.Discrete(["screening", "final"]),
                             description="screening, or the final stage: the top "
                                         "configurations trained again, longer"))
    metrics = [hp.Metric(tag, display_name=name, description=text)
               for tag, name, text in TRIAL_METRICS + (CONTOUR_METRICS if contours else ())]
    metrics += [hp.Metric(f"dice_fold_{k}", display_name=f"Dice fold {k}",
                          description=f"validation Dice of fold {k} at the last epoch")
                for k in range(n_folds)]
    Path(logdir).mkdir(parents=True, exist_ok=True)
    writer = t.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def session_values(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameter values as the HParams session records them."""
    values = {k: v for k, v in hyperparameters.items() if not k.startswith("tuner/")}
    if "tuner/epochs" in hyperparameters:
        values[EPOCHS] = int(hyperparameters["tuner/epochs"])
    values[STAGE] = "final" if hyperparameters.get(FINAL) else "screening"
    return values


def write_trial(logdir: Path, trial_id: str, hyperparameters: dict[str, Any],
                metrics: dict[str, float], fold_results: list[dict[str, Any]]) -> None:
    """Writes (or rewrites) one trial's session: values, scores and fold curves.

    Args:
        logdir: The run's TensorBoard folder.
        trial_id: keras-tuner's trial id.
        hyperparameters: The trial's values (``tuner/*`` bookkeeping is dropped, its
            epoch budget kept as ``epochs``).
        metrics: Trial metrics by tag (``TRIAL_METRICS`` and ``dice_fold_<k>``); NaN
            values are left out.
        fold_results: The folds' ``result.json`` contents (for their curves).
    """
    from tensorboard.plugins.hparams import api as hp

    t = tf()
    session = Path(logdir) / f"trial_{trial_id}"
    # A resumed trial writes its session again: one event file per session.
    shutil.rmtree(session, ignore_errors=True)
    step = int(metrics.get("scored_epoch", metrics.get("best_epoch")) or 0)
    writer = t.summary.create_file_writer(str(session))
    with writer.as_default():
        hp.hparams(session_values(hyperparameters), trial_id=f"trial_{trial_id}")
        for tag, value in metrics.items():
            if value is not None and not math.isnan(value):
                t.summary.scalar(tag, float(value), step=step)
    writer.close()
    for result in fold_results:
        writer = t.summary.create_file_writer(str(session / f"fold_{result['fold']}"))
        with writer.as_default():
            for name, values in result["history"].items():
                for i, value in enumerate(values):
                    t.summary.scalar(f"epoch_{name}", value,
                                     step=result["initial_epoch"] + i + 1)
        writer.close()


def read_logs(logdir: Path) -> tuple[Any, dict[str, Any], dict[str, dict[str, list]]]:
    """Reads a log dir back with TensorBoard's own event reader and HParams parsers.

    Args:
        logdir: A run's TensorBoard folder.

    Returns:
        The HParams experiment (``None`` without a config), each session's start info
        by run name (``trial_<id>``), and each run's scalars as ``{tag: [(step,
        value), ...]}`` (sessions and their ``trial_<id>/fold_<k>`` curves).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    experiment, sessions, scalars = None, {}, {}
    for run_dir in sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
        acc.Reload()
        name = run_dir.relative_to(logdir).as_posix()
        try:
            content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        except KeyError:  # a fold's curves: scalars only
            content = {}
        for tag, data in content.items():
            if tag == metadata.EXPERIMENT_TAG:
                experiment = metadata.parse_experiment_plugin_data(data)
            elif tag == metadata.SESSION_START_INFO_TAG:
                sessions[name] = metadata.parse_session_start_info_plugin_data(data)
        scalars[name] = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                               for e in acc.Tensors(tag)]
                         for tag in acc.Tags()["tensors"] if not tag.startswith("_hparams_")}
    return experiment, sessions, scalars
