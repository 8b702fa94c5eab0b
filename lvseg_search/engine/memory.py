"""A search process's memory: what it holds now, and handing a finished trial's back."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from pathlib import Path

import keras


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (peak RSS where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_memory() -> None:
    """Frees a finished trial's model and graphs, and hands freed heap back to the OS.

    Without the trim, glibc keeps the fragments of every trial's graphs and RSS creeps
    up trial after trial even though nothing is referenced any more.
    """
    try:
        keras.backend.clear_session(free_memory=False)  # one collection below, not two
    except TypeError:  # Keras before 3.4 has no free_memory and always collects
        keras.backend.clear_session()
    gc.collect()
    _malloc_trim()
