"""Lost workers of a distributed search: each worker touches a heartbeat file in the
shared run folder (``workers/<tuner id>``) every few seconds; the chief watches them, and
a worker silent for ``--worker-timeout`` seconds is taken as lost: its trial goes back
to the oracle's queue for the next worker that asks (its finished folds are kept, so the
fold in progress is all that is trained again), and the chief stops waiting for it.

keras-tuner has no such mechanism: a trial whose worker died stays RUNNING, and the
chief waits for it forever before it exits. A restarted worker with the same
``--tuner-id`` before the time-out gets its trial back (keras-tuner's own rule); after
it, it joins as a new worker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIRNAME = "workers"
DEFAULT_TIMEOUT_S = 120.0
BEAT_S = 1.0  # a worker's heartbeat period (a touch of one file)
MIN_TIMEOUT_S = 5 * BEAT_S  # a late beat or two is not a lost worker


def heartbeat_file(out: Path, tuner_id: str) -> Path:
    """The worker's heartbeat file in the run folder."""
    return Path(out) / DIRNAME / tuner_id


class Heartbeat:
    """A worker's heartbeat: touches its file now and every ``every`` seconds, from a
    daemon thread, until :meth:`stop`."""

    def __init__(self, out: Path, tuner_id: str, every: float = BEAT_S):
        self.path = heartbeat_file(out, tuner_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True,
                                        name="lvseg-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(OSError):  # a full disk must not stop the trial
            self.path.touch()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self._beat()

    def stop(self) -> None:
        """Stops beating (the worker is done: the chief forgets it as keras-tuner does)."""
        self._stop.set()
        self._thread.join()


class WorkerWatch:
    """The chief's watch over its workers' heartbeats, in a daemon thread.

    Args:
        oracle: The chief's oracle.
        out: The run folder.
        timeout: Seconds of silence after which a worker is lost.
        say: Prints a line (the chief's log).
    """

    def __init__(self, oracle: Any, out: Path, timeout: float,
                 say: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.oracle, self.out, self.timeout, self.say = oracle, Path(out), timeout, say
        self.first_seen: dict[str, float] = {}
        self.lost: list[tuple[str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lvseg-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            self.check()

    def check(self, now: float | None = None) -> list[tuple[str, str | None]]:
        """Puts back the trials of workers silent for longer than the time-out.

        Returns:
            The (worker, trial or None) lost in this check.
        """
        from lvseg_search.engine.kt_compat import requeue_lost_worker

        now = time.time() if now is None else now
        lost = []
        workers = set(self.oracle.tuner_ids) | set(self.oracle.ongoing_trials)
        for tuner_id in sorted(workers):
            try:
                last = heartbeat_file(self.out, tuner_id).stat().st_mtime
            except OSError:  # no beat yet: counted from when the chief first saw it
                last = self.first_seen.setdefault(tuner_id, now)
            silent = now - last
            if silent <= self.timeout:
                continue
            trial_id = requeue_lost_worker(self.oracle, tuner_id)
            lost.append((tuner_id, trial_id))
            self.say(f"chief: worker {tuner_id} sent no heartbeat for {silent:.0f} s (more "
                     f"than --worker-timeout {self.timeout:g}); "
                     + (f"its trial {trial_id} goes to the next worker that asks, which "
                        "keeps its finished folds" if trial_id else "it held no trial")
                     + "; the search goes on without it")
        self.lost += lost
        return lost

    def stop(self) -> None:
        """Ends the watch."""
        self._stop.set()
        self._thread.join()
