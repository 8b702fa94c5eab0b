"""Retraining a trial's configuration on every non-test patient for export: the same
pipeline, augmentation, initial weights and learning-rate schedule (through its rungs) as
the trial's fold models, with the epochs it was scored at."""

from __future__ import annotations

from typing import Any

from lvseg_search.engine.run import Run


def retrain(run: Run, trial: Any, epochs: int, verbose: bool = True) -> tuple[Any, ...]:
    """Trains a trial's configuration on all non-test patients (training augmentation,
    the search's seed).

    Args:
        run: The run folder.
        trial: The keras-tuner trial.
        epochs: Epochs to train.
        verbose: Print one line per epoch.

    Returns:
        The network, the patients it trained on, its training batches per epoch and the
        epochs its learning-rate schedule ended a decay at.
    """
    import keras

    from lvseg_search.data.pipeline import (
        batches_per_epoch,
        make_dataset,
        patient_files,
    )
    from lvseg_search.engine.tuner import weights_seed
    from lvseg_search.model.deep_supervision import inference_network
    from lvseg_search.model.schedule import retrained_ends, rung_ends, scheduler

    patients = sorted({p for fold in run.splits["folds"] for p in fold["train"] + fold["val"]})
    o = run.options
    config = o.pipeline().training()
    n = run.data.slices(patients)
    data = make_dataset(patient_files(run.data, patients, config), config, n, repeat=True)
    keras.utils.set_random_seed(weights_seed(o.seed, trial.trial_id))
    model = run.build_network(trial.trial_id)

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if verbose:
                print(f"export: retrain epoch {epoch + 1}/{epochs}  loss "
                      f"{logs['loss']:.4f}  dice {logs['dice']:.3f}", flush=True)

    # The trial's learning-rate schedule through its rungs (one: the search's horizon),
    # so that the epoch count chosen in the search is trained with the same rates.
    values = trial.hyperparameters.values
    ends = rung_ends(values, lambda t: run.trials[t].hyperparameters.values, o.max_epochs,
                     o.lr_per_rung)
    ends = retrained_ends(ends, epochs) if o.lr_per_rung else ends
    callbacks = [_Progress(), *scheduler(values, ends)]
    # A search with a fixed number of steps per epoch chose its epoch count in steps: the
    # retraining takes as many (each over all the patients).
    steps = o.steps_per_epoch or batches_per_epoch(n, config)
    model.fit(data, steps_per_epoch=steps, epochs=epochs,
              callbacks=callbacks, shuffle=False, verbose=0)
    # Deep supervision's auxiliary outputs served training only.
    return inference_network(model), patients, steps, ends
