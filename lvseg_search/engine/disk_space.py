"""What a search or an export will write, roughly, and the warning given before it
starts when the run's file system has less free space than that.

The figures are estimates from the network's parameter count and the files kept: every
fold of every trial keeps its weights (``checkpoint.weights.h5``: 4 bytes a parameter
plus the HDF5 layout, measured 90-140 KB on small networks) and its records (result,
TensorBoard events: about 8 KB a fold, 16 KB a trial); an export writes each network
about five times (``.keras``, SavedModel, two TFLite files, ONNX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lvseg_search.errors import free_bytes, size_text

CHECKPOINT_LAYOUT = 160_000  # HDF5 metadata of a weights file, bytes (upper end measured)
FOLD_RECORDS = 8_000
TRIAL_RECORDS = 16_000
EXPORT_COPIES = 5
EXPORT_FIXED = 2_000_000  # graphs, card, variables' index files of a model folder


def fold_bytes(parameters: int) -> int:
    """One fold's files: its checkpoint and records."""
    return 4 * int(parameters) + CHECKPOINT_LAYOUT + FOLD_RECORDS


def search_bytes(parameters: int, folds: int, trials: int) -> int:
    """``trials`` more trials of ``folds`` folds of a network of ``parameters``."""
    return max(0, trials) * (folds * fold_bytes(parameters) + TRIAL_RECORDS)


def export_bytes(parameters: int) -> int:
    """A model folder whose networks have ``parameters`` in all."""
    return EXPORT_COPIES * 4 * int(parameters) + EXPORT_FIXED


def planned_trials(oracle: Any) -> int | None:
    """The trials a local oracle's schedule gives in all, final stage included (None:
    not known, as for a distributed worker's client)."""
    from lvseg_search.engine.kt_compat import hyperband_planned_trials, is_remote_oracle

    if is_remote_oracle(oracle):
        return None
    screening = getattr(oracle, "screening_trials", None)
    if screening is None:
        if hasattr(oracle, "hyperband_iterations"):
            screening = hyperband_planned_trials(oracle)
        else:
            screening = oracle.max_trials
    if screening is None:
        return None
    finalists = getattr(oracle, "finalists", 0)
    return int(screening) + (int(finalists) + 1 if finalists else 0)


def ensure_space(folder: Path, needs: int) -> None:
    """Refuses, as the system would, a write of about ``needs`` bytes that ``folder``'s
    file system has no room for.

    HDF5 (the checkpoints' format) does not fail cleanly on a full disk: its writes fail
    one by one, and freeing the half-written file's objects can crash the process. This
    check before each checkpoint turns the common case into an ordinary ``ENOSPC``.

    Raises:
        OSError: ``ENOSPC``, with the folder, when less than ``needs`` is free.
    """
    import errno

    free = free_bytes(folder)
    if free is not None and free < needs:
        raise OSError(errno.ENOSPC, f"No space left on device ({size_text(free)} free, "
                                    f"about {size_text(needs)} to write)", str(folder))


def warn_if_short(folder: Path, needs: int, what: str, then: str) -> bool:
    """Prints one warning line when ``folder``'s file system has less than ``needs``
    bytes free; returns whether it did.

    Args:
        folder: Where the step writes.
        needs: Roughly what it will write, in bytes.
        what: The step and how the estimate was made, in words.
        then: What the user does if the disk fills anyway.
    """
    free = free_bytes(folder)
    if free is None or free >= needs:
        return False
    print(f"lvseg-search: warning: {folder}: {size_text(free)} free, and {what} needs about "
          f"{size_text(needs)}; free space first, or it stops when the disk fills (then "
          f"{then})", flush=True)
    return True
