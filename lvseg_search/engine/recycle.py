"""Recycled search processes: a search's trials run in fresh child processes, a fixed
number per process, until Hyperband is done.

TensorFlow keeps every trained model's graphs for the life of a process, so a long
search in one process grows trial after trial. Here each child runs keras-tuner's own
loop for its share of trials and exits; the run folder carries the oracle's state to the
next child (the same resume as after a kill).

A child imports TensorFlow, Keras and keras-tuner as soon as it starts (about 5 s on 2
cores) and only then waits for its share of the search. The parent starts the first one
before it prepares the run (making the splits imports scikit-learn, reading the manifest
and the space), so both happen at once on different cores; and it starts each later one
as the running child begins the last trial of its share, so that the next child loads
while that trial trains instead of after it.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import sys
import time
from collections.abc import Callable
from typing import Any

from lvseg_search._tf import exit_without_teardown
from lvseg_search.errors import (
    STOP_SIGNALS,
    Stopped,
    UserError,
    disk_full_message,
    disk_full_reported,
    free_bytes,
    stop_on_signals,
)

# The message a child sends as it starts the last trial of its share.
SHARE_ENDING = {"share_ending": True}
# Seconds a stopped child gets to leave its fold (it stops at its next batch) before it
# is killed; a kill loses no more (the fold in progress is abandoned either way).
STOP_GRACE_S = 30.0
# Free space below which a child that died without a word is taken to have met a full
# disk (a checkpoint takes at least this much).
DISK_LOW = 1_000_000


class SearchProcess:
    """A child process that loads the tuner at once, then runs the share of a search it
    is sent (:meth:`run`); :meth:`cancel` ends it when there is none to send.

    It is a daemon process: should the parent end without sending it work, it ends too.
    """

    def __init__(self):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, no inherited graphs
        self._jobs = ctx.SimpleQueue()
        self._reports = ctx.Queue()
        self._proc = ctx.Process(target=_child_main, args=(self._jobs, self._reports,
                                                           os.getpid()), daemon=True)
        self._proc.start()
        self.started = time.monotonic()

    def run(self, on_share_ending: Callable[[], None] | None = None,
            **job: Any) -> dict[str, Any]:
        """Sends the child its share of the search (``session.search_in_process``'s arguments) and
        waits for its summary.

        Args:
            on_share_ending: Called (here, in the parent) when the child starts the last
                trial of its share and more trials follow.
            **job: ``session.search_in_process``'s keyword arguments but ``role``.

        Raises:
            UserError: The search stopped on bad input, or the child died (killed, out of
                memory) without reporting.
            RuntimeError: The search failed in the child (its traceback is the message).
        """
        self._jobs.put(job)
        message = None
        try:
            while message is None:
                try:
                    message = self._reports.get(timeout=0.5)
                except queue_mod.Empty:
                    if not self._proc.is_alive() and self._reports.empty():
                        break
                if message == SHARE_ENDING:
                    if on_share_ending is not None:
                        on_share_ending()
                    message = None
        except Stopped:
            self.stop()
            raise
        self._proc.join()
        self._close()
        if message is None:
            free = free_bytes(job["out"])
            if free is not None and free < DISK_LOW:
                # A library that crashed the process on a full disk (HDF5 can).
                raise UserError(disk_full_message(job["out"], None,
                                                  "run the same command to resume"))
            raise UserError(f"{job['out']}: the search process stopped (exit code "
                            f"{self._proc.exitcode}, out of memory?); re-run the same command "
                            "to resume")
        if "stopped" in message:  # the child had the signal first (Ctrl-C reaches both)
            raise Stopped(message["stopped"])
        if "user_error" in message:
            raise UserError(message["user_error"])
        if "error" in message:
            raise RuntimeError(f"search process failed:\n{message['error']}")
        return message

    def cancel(self) -> None:
        """Ends the child, which has nothing on disk yet (it was only loading)."""
        # Not a message: a child still starting needs this process's queues to exist.
        self._proc.terminate()
        self._proc.join(STOP_GRACE_S)
        if self._proc.is_alive():  # a library swallowed the signal's exception
            self._proc.kill()
            self._proc.join()
        self._close()

    def stop(self) -> None:
        """Stops a child at work as a stop signal stops a search: it abandons the fold
        in progress (what it has written is whole) and exits; killed after
        :data:`STOP_GRACE_S` seconds."""
        import signal

        if self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
        self._proc.join(STOP_GRACE_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._close()

    def _close(self) -> None:
        """Releases the queues (their semaphores) once the child is gone."""
        with contextlib.suppress(OSError, ValueError):
            self._jobs.close()
            self._reports.close()
            self._reports.join_thread()


def _child_main(jobs, reports, parent_pid: int) -> None:
    import signal
    import traceback

    _die_with_parent(parent_pid)
    # Until its work comes, a stop (a cancelled spare child) ends it at once: there is
    # nothing to leave in order, and an exception could be lost in a library's import.
    for s in STOP_SIGNALS:
        signal.signal(s, lambda signum, frame: os._exit(128 + signum))
    try:
        # The slow part of starting (TensorFlow, Keras, keras-tuner), done before the
        # parent has the work ready.
        from lvseg_search.engine import in_process, tuner  # noqa: F401
        job = jobs.get()
    except BaseException:  # noqa: BLE001 - reported by the parent, if it still waits
        jobs.get()
        reports.put({"error": traceback.format_exc()})
        _exit(reports, 1)
    with stop_on_signals():
        _child_work(job, reports)


def _child_work(job: dict[str, Any], reports) -> None:
    import traceback

    from lvseg_search.engine import in_process

    code = 0
    try:
        # A full disk before keras-tuner's loop too (the oracle's first state, HParams).
        with disk_full_reported(job["out"], "run the same command to resume"):
            summary = in_process.search_in_process(
                **job, role=None, on_share_ending=lambda: reports.put(SHARE_ENDING))
        # The summary goes back too: reading trials in the parent would import
        # TensorFlow there (keras-tuner) only to print the table.
        reports.put(summary)
    except Stopped as exc:
        reports.put({"stopped": exc.signum})
        code = exc.exit_code
    except UserError as exc:
        reports.put({"user_error": str(exc)})
    except BaseException:  # noqa: BLE001 - reported by the parent
        reports.put({"error": traceback.format_exc()})
    _exit(reports, code)


def _exit(reports, code: int) -> None:
    # Everything is on disk; once the message is sent, skip TensorFlow's teardown, which
    # the parent would wait for in join.
    reports.close()
    reports.join_thread()
    exit_without_teardown(code)
    sys.stdout.flush()  # TensorFlow was never loaded: nothing else to tear down
    sys.stderr.flush()
    os._exit(code)


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to kill this process when its parent dies (a killed ``search`` must
    not leave its trial running on); elsewhere a no-op."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def search_recycled(first: SearchProcess, every: int, verbose: bool,
                    **job: Any) -> dict[str, Any]:
    """Runs a search ``every`` trials per child process until Hyperband is done.

    Args:
        first: The first child, started early (see the module's docstring).
        every: Trials per child.
        verbose: Print progress (and a line at each new child).
        **job: ``session.search_in_process``'s keyword arguments but ``role``, ``trial_budget`` and
            ``header``.

    Returns:
        The last child's summary, with the batch seconds, trial log and process count
        of all of them.
    """
    total: dict[str, Any] = {"batch_seconds": 0.0, "trial_log": [], "replicas": 1,
                             "processes": 0, "process_times": []}
    proc, header = first, True
    spare: list[SearchProcess] = []  # the next child, started during the last trial

    def start_next() -> None:
        if not spare:
            spare.append(SearchProcess())

    try:
        while True:
            message = proc.run(**job, verbose=verbose, trial_budget=every, header=header,
                               on_share_ending=start_next)
            total["processes"] += 1
            total["process_times"].append({"started": proc.started,
                                           "finished": time.monotonic()})
            total["batch_seconds"] += message["batch_seconds"]
            total["trial_log"] += message["trial_log"]
            total["replicas"] = message["replicas"]
            if not message["recycle"]:
                summary = {k: v for k, v in message.items() if k not in total}
                break
            proc, header = spare.pop() if spare else SearchProcess(), False
            if verbose:
                print(f"(fresh search process after {every} trials: it frees the graphs "
                      "TensorFlow keeps of every trained model; resuming)", flush=True)
    finally:
        for p in spare:  # started for trials that turned out not to come
            p.cancel()
    summary.update(total)
    return summary
