"""One search session in this process: the folds' data, the HyperModel and the
cross-validated Hyperband tuner over a prepared run folder, and keras-tuner's own
search loop run to the end of the schedule (or of a share of its trials, for a
recycled child process)."""

from __future__ import annotations

import contextlib
import gc
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvseg_search.data import splits
from lvseg_search.data.manifest import PreparedData
from lvseg_search.engine.distribute import ENV_ID
from lvseg_search.engine.options import SearchOptions
from lvseg_search.engine.run import PROJECT, summarize_trials
from lvseg_search.engine.worker_watch import DEFAULT_TIMEOUT_S, Heartbeat, WorkerWatch
from lvseg_search.errors import UserError, disk_full_reported
from lvseg_search.model.space import SearchSpace


def search_in_process(out: Path, sp: SearchSpace, options: SearchOptions, split: dict[str, Any],
                      data: PreparedData, *, verbose: bool, strategy: str | None,
                      role: str | None, trial_budget: int | None = None, header: bool = True,
                      on_share_ending: Callable[[], None] | None = None,
                      worker_timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Runs a prepared search (or a share of its trials) in this process.

    Args:
        out: The run folder (``run.prepare_run`` or ``run.load_worker_run``).
        sp: Its search space.
        options: Its options.
        split: Its folds and held-out test patients.
        data: The prepared data folder the options name.
        verbose: Print progress.
        strategy: ``mirrored`` to train each fold model over all visible GPUs.
        role: ``chief``, ``worker`` or None (one process).
        trial_budget: Stop after this many trials (a recycled child's share).
        header: Print the search's first lines (the first child only).
        on_share_ending: Called as the last trial of the share begins.
        worker_timeout: The chief's seconds of a worker's silence before its trial goes
            to another (``engine.worker_watch``).

    Returns:
        The run's summary (``run.summarize_trials``) with this session's batch seconds, trial
        log, replicas and whether trials remain (``recycle``).

    Raises:
        UserError: Too many trials in a row failed.
    """
    import keras

    from lvseg_search.engine import final_stage, hparams
    from lvseg_search.engine.cv import CrossValidation
    from lvseg_search.engine.distribute import make_strategy
    from lvseg_search.engine.kt_compat import is_remote_oracle
    from lvseg_search.engine.tuner import CVTuner, make_oracle
    from lvseg_search.model.hypermodel import SegmentationHyperModel

    # The hypermodel sets Keras's process-wide dtype policy (--precision) at each build,
    # keras-tuner's first one included; the caller's is put back at the end for code that
    # goes on building models in this process.
    previous_policy = keras.mixed_precision.dtype_policy()
    dist = make_strategy(strategy)
    replicas = dist.num_replicas_in_sync if dist is not None else 1
    if replicas > 1:
        print(f"mirrored strategy over {replicas} devices: batch size {options.batch_size} "
              f"per replica, {options.batch_size * replicas} per step", flush=True)
    config = options.pipeline(options.batch_size * replicas)
    cv = CrossValidation(data, split, config, replicas=replicas,
                         steps_per_epoch=options.steps_per_epoch)
    classes = data.classes
    hypermodel = SegmentationHyperModel(sp, options.image_size, num_classes=classes.count,
                                        jit_compile=options.jit, precision=options.precision,
                                        ignore=classes.ignore, blood_pool=classes.blood_pool)
    # keras-tuner announces a resume with a bare print; ours below says more.
    with contextlib.redirect_stdout(io.StringIO()):
        oracle = make_oracle(options.oracle, seed=options.seed, max_epochs=options.max_epochs,
                             factor=options.factor, min_epochs=options.min_epochs,
                             hyperband_iterations=options.hyperband_iterations,
                             max_trials=options.max_trials, default=sp.default,
                             include_default=options.include_default)
        tuner = CVTuner(cv, oracle, options.max_epochs, lr_per_rung=options.lr_per_rung,
                        seed=options.seed, verbose=verbose, objective=options.objective,
                        hypermodel=hypermodel, distribution_strategy=dist, directory=str(out),
                        project_name=PROJECT, tensorboard_dir=out / hparams.DIRNAME,
                        trial_budget=trial_budget, on_share_ending=on_share_ending)
    is_chief = role == "chief"
    logdir = out / hparams.DIRNAME
    if role != "worker" and not any(logdir.glob("events.out.tfevents.*")):
        hparams.write_config(logdir, sp, cv.n_folds,
                             max(options.max_epochs, options.final_epochs or 0),
                             contours=classes.has_myocardium)
    if is_chief or not is_remote_oracle(tuner.oracle):
        # A cap on Hyperband's own schedule (or the other oracles' budget), for a fixed
        # budget: a resumed oracle took it from its saved state, and the run's options may
        # have changed it since, to extend or cap the search.
        if options.oracle == "fixed":
            tuner.oracle.max_trials = options.max_trials
        else:
            final_stage.configure(tuner.oracle, max_trials=options.max_trials,
                                  finalists=options.finalists,
                                  final_epochs=options.final_epochs,
                                  final_from=options.final_from,
                                  max_epochs=options.max_epochs, default=sp.default)
        if options.oracle == "hyperband":
            # Likewise its iterations, to extend a finished schedule.
            tuner.oracle.hyperband_iterations = options.hyperband_iterations
    if verbose and not is_chief and header:
        plan = options.plan_text()
        print(f"search: space {sp.name}, {cv.n_folds} patient-grouped folds, "
              f"{len(split['test'])} held-out test patient(s), {plan}; network input: "
              f"{options.grid_text()} -> {out}", flush=True)
        print(splits.format_balance(split, data.slice_counts), flush=True)
        done = len(list((out / PROJECT).glob("trial_*/trial.json")))
        if done:
            budget = (f", {options.max_trials} in all (--max-trials)" if options.max_trials
                      else "")
            print(f"resuming: {done} trial(s) already in {out / PROJECT}{budget}", flush=True)
    # Python's automatic collector stalls training for 0.3 to 1 s at a time, walking the
    # ~0.5 million objects of TensorFlow and Keras. Those live as long as the process,
    # so they are set aside (freeze), and cycles are collected once per trial instead
    # (memory.release_memory), where each pass sees only that trial's objects.
    automatic = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    # A chief watches its workers' heartbeats; a worker sends them.
    if is_chief:
        watch = WorkerWatch(tuner.oracle, out, worker_timeout)
    elif role == "worker":
        watch = Heartbeat(out, os.environ[ENV_ID])
    else:
        watch = None
    try:
        # A full disk anywhere in keras-tuner's loop: its state files, the trial records,
        # TensorBoard.
        with disk_full_reported(out, "run the same command to resume",
                                lambda: tuner.disk_needs):
            tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        raise UserError(f"{out}: too many trials in a row failed; check the data and the "
                        f"space (last error: {str(exc).strip().splitlines()[-1]})") from None
    finally:
        if watch is not None:
            watch.stop()
        keras.mixed_precision.set_dtype_policy(previous_policy)
        if automatic:
            gc.enable()
        gc.unfreeze()
    summary = summarize_trials(out)
    summary["batch_seconds"] = tuner.batch_seconds
    summary["trial_log"] = tuner.trial_log
    summary["replicas"] = replicas
    summary["recycle"] = tuner.recycle
    return summary
