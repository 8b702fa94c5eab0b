"""The one-line faults: a full disk told from other write errors, and stop signals."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from lvseg_search.errors import (
    Stopped,
    disk_full_message,
    disk_full_reported,
    is_disk_full,
    stop_on_signals,
)


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("writing the checkpoint failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("exc, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (_raised_from(OSError(errno.ENOSPC, "No space left on device")), True),
    # Libraries that wrap the system's error keep its words (h5py, TensorFlow).
    (RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error "
                  "message = 'No space left on device')"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (_raised_from(ValueError("bad value")), False),
])
def test_a_full_disk_is_told_from_other_errors(exc, full):
    assert is_disk_full(exc) is full


def test_the_disk_full_line_names_the_folder_the_space_left_and_what_to_do(tmp_path):
    line = disk_full_message(tmp_path / "model", 3_500_000, "run the command again")
    assert line.startswith(f"{tmp_path / 'model'}: disk full")
    assert " free" in line and "needs about 3.5 MB" in line
    assert line.endswith("free space and run the command again")
    with pytest.raises(Exception, match="disk full") as caught, \
            disk_full_reported(tmp_path, "retry", lambda: 1000):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert type(caught.value).__name__ == "UserError" and "1 KB" in str(caught.value)
    with pytest.raises(OSError, match="Permission"), disk_full_reported(tmp_path, "retry"):
        raise OSError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_unwinds_the_command_and_the_handlers_come_back(sig):
    before = signal.getsignal(sig)
    unwound = []
    with pytest.raises(Stopped) as caught, stop_on_signals():
        try:
            os.kill(os.getpid(), sig)
            signal.pause()  # the handler raises before this returns
        finally:
            unwound.append(True)
    assert unwound and caught.value.signum == sig
    assert caught.value.exit_code == 128 + sig and caught.value.name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before
