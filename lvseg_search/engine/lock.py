"""One writer per run folder: an OS file lock (``flock``) on ``<run>/.lock`` that a search
(or an export) holds while it works.

The kernel releases the lock when the holding process ends, however it ends, so a killed
search never leaves a stale lock. The file itself stays (deleting it would let a second
process lock a new file while a first still holds the old one); it records who holds
the lock, for the message the next writer gets. Distributed workers do not lock: they
attach to their chief's run by design, and the chief holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lvseg_search.errors import UserError

LOCK_FILE = ".lock"


def holder(folder: Path) -> tuple[str, str]:
    """What holds (or last held) a run folder's lock and who, in words:
    (``search``, ``pid 12 on host, started ...``)."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
        return (str(info["command"]),
                f"pid {info['pid']} on {info['host']}, started {info['started']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another command", "its process is unknown"


@contextlib.contextmanager
def run_lock(folder: Path, command: str, what: str = "write to it",
             create: bool = True) -> Iterator[None]:
    """Holds the run folder's lock for the ``with`` block.

    Args:
        folder: The run folder.
        command: What this process is doing (``search``, ``export``), for the holder's
            record.
        what: What the refused process wanted to do, for its message.
        create: Create the folder if missing; if False, a missing folder is not locked
            (there is nothing in it to protect; the caller reports it).

    Raises:
        UserError: Another process holds the lock (names it: pid, host, start time).
    """
    import fcntl

    folder = Path(folder)
    if not create and not folder.is_dir():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running, who = holder(folder)
            raise UserError(f"{folder}: {running} is running in it ({who}); wait for it to "
                            f"end or stop it before you {what}") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": command}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_locked(folder: Path) -> bool:
    """Whether a process holds the run folder's lock now (``report`` reads on anyway)."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
