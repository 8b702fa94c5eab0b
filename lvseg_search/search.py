"""``lvseg-search search``: a cross-validated Hyperband search into ``results/NAME``
(the run folder's layout: ``engine.run``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lvseg_search.data import manifest
from lvseg_search.engine import options as options_mod
from lvseg_search.engine import run as run_mod
from lvseg_search.engine import run_setup
from lvseg_search.engine.lock import run_lock
from lvseg_search.engine.trial_score import scored_epoch
from lvseg_search.engine.worker_watch import BEAT_S, DEFAULT_TIMEOUT_S, MIN_TIMEOUT_S
from lvseg_search.errors import Stopped, UserError
from lvseg_search.model.describe import network_brief
from lvseg_search.model.schedule import FINAL
from lvseg_search.model.space import load_space


def run_search(data: Path | None, out: Path, space: str = "quick", *, overwrite: bool = False,
               splits_file: Path | None = None, verbose: bool = True,
               chief: str | None = None, worker: str | None = None,
               tuner_id: str | None = None, gpu: str | None = None,
               strategy: str | None = None, connect_timeout: float = 30.0,
               recycle_every: int | None = None, worker_timeout: float | None = None,
               **given: Any) -> dict[str, Any]:
    """Runs (or resumes) a cross-validated Hyperband search.

    Args:
        data: Prepared data folder (workers read it from the run folder when None).
        out: Run folder (``results/NAME``), shared by the chief and its workers.
        space: Search space name or ``.toml`` path.
        overwrite: Start afresh even if ``out`` holds a search.
        splits_file: Use these splits instead of making new ones.
        verbose: Print progress.
        chief: ``HOST:PORT`` to serve the oracle on (this process runs no trial).
        worker: ``HOST:PORT`` of the chief to take trials from.
        tuner_id: This worker's id (default: host name and process id).
        gpu: Pin this process to these GPU(s) (``CUDA_VISIBLE_DEVICES``).
        strategy: ``mirrored`` to train each fold model over all visible GPUs.
        connect_timeout: Seconds a worker waits for its chief.
        worker_timeout: Seconds of a worker's silence after which the chief gives its
            trial to another worker (None: ``worker_watch.DEFAULT_TIMEOUT_S``).
        recycle_every: Run the trials in a fresh child process every this many trials
            (None: all in this process). TensorFlow keeps every trained model's graphs
            for the life of the process; a new process resumes the search from disk
            and starts with none.
        **given: Search options (see ``SearchOptions``); None means "not given".

    Returns:
        A summary: trials (completed, failed), wall and batch seconds, per-trial log.

    Raises:
        UserError: Bad data, options or run folder, or an unreachable chief.
    """
    from lvseg_search.engine import distribute

    start = time.perf_counter()
    out = Path(out)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if chief and worker:
        raise UserError("--chief and --worker: a process is one or the other")
    if chief:
        host, port = distribute.parse_address(chief, "--chief", distribute.LOOPBACK)
        distribute.check_port_free(host, port)
        distribute.configure("chief", host, port)
    elif worker:
        host, port = distribute.parse_address(worker, "--worker")
        distribute.configure("worker", host, port, tuner_id)
    role = distribute.role_from_environment()
    if worker_timeout is not None:
        if role != "chief":
            raise UserError("--worker-timeout: a chief's option (it watches its workers); "
                            "add --chief or drop it")
        if worker_timeout < MIN_TIMEOUT_S:
            raise UserError(f"--worker-timeout: {worker_timeout:g} s is too short (workers "
                            f"beat every {BEAT_S:g} s); give at least {MIN_TIMEOUT_S:g}")
    if recycle_every is not None and recycle_every < 1:
        raise UserError(f"--recycle-every: {recycle_every} must be at least 1 (or 0: never)")
    child = None
    if recycle_every and role is None:
        from lvseg_search.engine.recycle import SearchProcess

        child = SearchProcess()  # loads TensorFlow while this process prepares the run
    try:
        with contextlib.ExitStack() as held:
            summary, n_folds = _prepare_and_search(
                held, child, role, data, out, space, overwrite, splits_file, verbose,
                strategy, recycle_every, connect_timeout,
                worker_timeout or DEFAULT_TIMEOUT_S, given)
    except Stopped as exc:
        exc.where = stopped_where(out)
        raise
    summary["wall_seconds"] = time.perf_counter() - start
    if role != "worker":
        print_top(summary, n_folds)
        _refuse_all_failed(out, summary)
    return summary


def _prepare_and_search(held: contextlib.ExitStack, child, role: str | None,
                        data: Path | None, out: Path, space: str, overwrite: bool,
                        splits_file: Path | None, verbose: bool, strategy: str | None,
                        recycle_every: int | None, connect_timeout: float,
                        worker_timeout: float,
                        given: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Prepares (or attaches to) the run folder, holding its lock in ``held`` unless this
    process is a worker, and runs the search; returns its summary and fold count."""
    from lvseg_search.engine import distribute

    try:
        if role == "worker":
            distribute.wait_for_chief(os.environ[distribute.ENV_IP],
                                      int(os.environ[distribute.ENV_PORT]), connect_timeout)
            options, sp, split, prepared = run_setup.load_worker_run(out, data)
        else:
            sp = load_space(space)
            if data is None:
                raise UserError("--data: required (only workers read it from the run folder)")
            if splits_file is not None:
                clash = [f"--{k.replace('_', '-')}" for k in options_mod.SPLIT_OPTIONS
                         if given.get(k)]
                if clash:
                    raise UserError(f"--splits: {splits_file} fixes the folds and the test "
                                    f"patients; drop {' and '.join(clash)}")
            options = options_mod.resolve_options(sp, data, **given)
            prepared = manifest.open_data(options.data)
            # Every shard read to its end now, not inside the first trial.
            prepared.verify()
            # Before the lock: a folder of something else gets no lock file in it.
            run_setup.check_out_folder(out, overwrite)
            created, locked = not out.exists(), False
            try:
                held.enter_context(run_lock(out, "search", "search in it"))
                locked = True
                options, split = run_setup.prepare_run(
                    out, options, prepared, overwrite, splits_file, sp,
                    frozenset(k for k, v in given.items() if v is not None))
            except BaseException:
                # Only a folder this command made and locked: a refused second search
                # must not remove the folder that the first one is preparing.
                if created and locked and not (out / run_mod.SEARCH_FILE).exists():
                    shutil.rmtree(out, ignore_errors=True)
                raise
    except BaseException:
        if child is not None:
            child.cancel()
        raise
    if role == "chief":
        host = os.environ[distribute.ENV_IP]
        print(f"chief: serving the oracle on {host}:{os.environ[distribute.ENV_PORT]}"
              + (" (loopback only: pass --chief 0.0.0.0:PORT to accept other machines)"
                 if host.startswith("127.") or host == "localhost" else ""), flush=True)
    if child is not None:
        from lvseg_search.engine.recycle import search_recycled

        summary = search_recycled(child, recycle_every, verbose, out=out, sp=sp,
                                  options=options, split=split, data=prepared,
                                  strategy=strategy)
    else:
        from lvseg_search.engine.in_process import search_in_process

        summary = search_in_process(out, sp, options, split, prepared, verbose=verbose,
                                    strategy=strategy, role=role,
                                    worker_timeout=worker_timeout)
    return summary, len(split["folds"])


def stopped_where(out: Path) -> str:
    """Where a stopped search stands, and how to go on, in words (read from the run
    folder: keras-tuner's trial records and the folds' results). The records are read as
    JSON, not through ``run.load_trials``: that imports keras-tuner and TensorFlow, which
    a recycled search's parent never loads, seconds before a stopped command exits."""
    import json

    project = out / run_mod.PROJECT
    folds = len(list(project.glob(f"trial_*/fold_*/{run_mod.RESULT}")))
    complete = 0
    for path in project.glob("trial_*/trial.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            complete += json.loads(path.read_text(encoding="utf-8")).get("status") == "COMPLETED"
    return (f"{out}: {complete} trial(s) complete, {folds} fold(s) trained and kept, the "
            "fold in progress abandoned; run the same command to resume")


def _refuse_all_failed(out: Path, summary: dict[str, Any]) -> None:
    """A search none of whose trials completed is an error, with the reason.

    Raises:
        UserError: Every trial failed.
    """
    if summary["completed"] or not summary["failed"]:
        return
    # The last line of keras-tuner's traceback, without the exception's class.
    reasons = Counter(re.sub(r"^[\w.]+(Error|Exception): ", "",
                             (f["message"].strip().splitlines() or ["no reason given"])[-1])
                      for f in summary["failed"])
    reason, count = reasons.most_common(1)[0]
    which = ("each for the same reason" if count == len(summary["failed"])
             else f"{count} of them for this reason")
    raise UserError(f"{out}: all {len(summary['failed'])} trial(s) failed, {which}: {reason}")


def print_top(summary: dict[str, Any], n_folds: int, top: int = 5) -> None:
    """Prints the best trials as a table (and any record that could not be read)."""
    for line in summary.get("unreadable", []):
        print(f"unreadable: {line}")
    rows = summary["completed"][:top]
    print(f"\n{len(summary['completed'])} trials completed, {len(summary['failed'])} failed. "
          f"Top {len(rows)} by CV Dice:")
    print(f"{'trial':>6} {'stage':>9} {'CV Dice':>15} {'folds':>{6 * n_folds}} {'epochs':>6}"
          "  network")
    for r in rows:
        m, hp = r["metrics"], r["hyperparameters"]
        folds = " ".join(f"{m.get(f'val_dice_fold_{k}', float('nan')):.3f}"
                         for k in range(n_folds))
        net = network_brief(hp)
        stage = "final" if hp.get(FINAL) else "screening"
        print(f"{r['trial_id']:>6} {stage:>9} {r['score']:>7.3f} +- "
              f"{m.get('val_dice_std', 0):.3f} "
              f"{folds:>{6 * n_folds}} {scored_epoch(m):>6}  {net}")
