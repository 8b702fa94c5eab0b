"""Write outputs under a temporary name and rename into place, so a failure or a
kill never leaves a half-written file or folder behind.

Renames are made durable: the data is flushed to disk (``fsync``) before the rename and
the folder holding the new name after it, so a power loss cannot leave a renamed but
empty file. Replacing a folder exchanges the two names in one step where the system
can (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere, a swap that dies between its two
renames is rolled back by the next writer of that folder (the old folder is restored).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lvseg_search.errors import UserError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_OLD = ".old-"  # infix of a folder set aside by a two-step swap


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flushes a folder's entries (a rename or a new file in it) to disk."""
    with contextlib.suppress(OSError):  # not every system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace(src: Path, dst: Path) -> None:
    """Renames the finished file ``src`` over ``dst`` durably (its data, then the rename).

    Args:
        src: A closed file, written in full.
        dst: Its final name, in the same folder.
    """
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def write_text(path: Path, text: str) -> None:
    """Atomically and durably writes ``text`` to ``path``.

    Args:
        path: Destination file; its folder must exist.
        text: File contents.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; honour the umask instead
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths' names in one step; False where the system cannot.

    Written by hand: Python's standard library has no RENAME_EXCHANGE.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def recover(path: Path) -> None:
    """Rolls back a two-step folder swap that died between its renames: the folder set
    aside comes back where ``path`` is missing, set-aside copies of a folder that is in
    place are removed, and so are unfinished folders of writers that died."""
    path = Path(path)
    aside = sorted(path.parent.glob(f".{path.name}{_OLD}*"))
    if aside and not path.exists():
        os.replace(aside.pop(), path)
        fsync_dir(path.parent)
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)
    # Folders a dead writer never finished (their names carry its process id).
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name.removeprefix(f".{path.name}.").split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(tmp: Path, path: Path) -> None:
    """Puts the finished folder ``tmp`` at ``path``: ``path`` always names a complete
    folder, the old one or the new one."""
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now under tmp's name
    else:
        old = path.with_name(f".{path.name}{_OLD}{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)  # a death before this line is undone by recover()
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)


@contextlib.contextmanager
def output_dir(path: Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yields a temporary sibling folder that replaces ``path`` only on success.

    Args:
        path: The final output folder.
        overwrite: Replace an existing non-empty folder instead of refusing.
        option: The option name that chose ``path``, for error messages.

    Yields:
        The temporary folder to write into.

    Raises:
        UserError: ``path`` exists, is not empty and ``overwrite`` is false.
    """
    path = Path(path)
    if path.parent.is_dir():
        recover(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserError(
            f"{path}: output folder ({option}) already exists and is not empty; "
            "choose another folder or pass --overwrite"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, path)
