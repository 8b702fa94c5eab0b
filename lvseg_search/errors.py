"""The exceptions that reach users as one line: :class:`UserError` (exit code 2) and
:class:`Stopped` (a stop signal, exit code 128 + its number), and how a full disk is
told from other write errors."""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or options.

    The CLI prints ``str(error)`` on one line and exits with code 2, without a
    traceback. Messages name the file or option, what is wrong and what to do.
    """


class Stopped(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt, not an error
    """A stop signal (SIGTERM, SIGINT) arrived. A ``BaseException`` like
    ``KeyboardInterrupt``: handlers of ``Exception`` (keras-tuner's, which would mark the
    trial failed) let it pass, and ``finally`` blocks release what they hold.

    Args:
        signum: The signal's number.
    """

    def __init__(self, signum: int, where: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.where = where  # where the command stopped and what to do, for its one line

    @property
    def name(self) -> str:
        """The signal's name (``SIGTERM``)."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 128 + its number."""
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside, SIGTERM (a batch scheduler, ``docker stop``) and SIGINT (Ctrl-C) raise
    :class:`Stopped` in the main thread, so the command unwinds: ``finally`` blocks and
    context managers release locks, stop children and remove unfinished output. Further
    stop signals are ignored while it unwinds. Outside the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Libraries that wrap the system's error (h5py, TensorFlow's file system) keep its words.
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, is a full disk or
    an exceeded quota (``ENOSPC``, ``EDQUOT``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if any(words in str(exc) for words in _DISK_FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def size_text(n: float) -> str:
    """Bytes in words: ``512 KB``, ``3.1 MB``, ``2.0 GB``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{max(n, 0) / 1e3:.0f} KB"


def free_bytes(folder: Path) -> int | None:
    """Free space for this user on the file system that holds ``folder`` (or would: its
    nearest existing parent); None where it cannot be told."""
    folder = Path(folder).absolute()
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def disk_full_message(folder: Path, needs: int | None, then: str) -> str:
    """The one line a full disk gives: the folder, the free space left, roughly what the
    step needs and what to do.

    Args:
        folder: Where the command writes.
        needs: Roughly what the step needs in bytes (None: not known).
        then: What to do once space is freed.
    """
    free = free_bytes(folder)
    left = "free space unknown" if free is None else f"{size_text(free)} free"
    need = "" if needs is None else f", this step needs about {size_text(needs)}"
    return f"{folder}: disk full (no space left on device; {left}{need}); free space and {then}"


@contextlib.contextmanager
def disk_full_reported(folder: Path, then: str,
                       needs: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """Inside, a full disk becomes a :class:`UserError` with :func:`disk_full_message`.

    Args:
        folder: Where the step writes.
        then: What to do once space is freed.
        needs: Gives the step's estimated size when the disk fills (None: unknown).
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, UserError) or not is_disk_full(exc):
            raise
        raise UserError(disk_full_message(folder, needs(), then)) from None
