"""TensorBoard for a finished or older search: the HParams config and the sessions that
are missing."""

from __future__ import annotations

from lvseg_search.engine import hparams
from lvseg_search.engine.run import Run, completed_trials
from lvseg_search.engine.trial_score import hparams_metrics, last_metrics


def sync_tensorboard(run: Run) -> int:
    """Writes the HParams config and the sessions of completed trials that have none
    (a search from an older version, or one whose worker died after scoring).

    Returns:
        Number of sessions written.
    """
    logdir = run.path / hparams.DIRNAME
    if not any(logdir.glob("events.out.tfevents.*")):
        hparams.write_config(logdir, run.space, run.n_folds, run.options.max_epochs,
                             contours=run.data.classes.has_myocardium)
    written = 0
    for t in completed_trials(run):
        if (logdir / f"trial_{t.trial_id}").is_dir():
            continue
        folds = [f for f in run.fold_results(t.trial_id) if f]
        hparams.write_trial(logdir, t.trial_id, t.hyperparameters.values,
                            hparams_metrics(last_metrics(t)), folds)
        written += 1
    return written
