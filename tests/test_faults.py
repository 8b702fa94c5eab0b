"""Faults of a real machine, made real: a file system that fills (a small tmpfs), stop
signals sent to a running search, as a user, a batch scheduler or ``docker stop`` send
them. Each checks the one line a user sees, the exit code, that nothing half-written is
left, and that the next run completes with nothing lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvseg_search.engine.run import RESULT

SPACE = Path(__file__).parent / "spaces" / "tiny.toml"
# A small search: tiny_run's options (conftest).
TINY_RUN_OPTIONS = ["--space", str(SPACE), "--folds", "2", "--test-patients", "1",
                    "--max-epochs", "2", "--factor", "2", "--image-size", "32",
                    "--batch-size", "4", "--seed", "3", "--steps-per-epoch", "3", "--quiet"]
TF_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log", "To enable the following")


def _said(stderr: str) -> list[str]:
    """What the command said on stderr, without TensorFlow's start-up log lines."""
    return [line for line in stderr.splitlines() if line and not line.startswith(TF_NOISE)
            and "cpu_feature_guard" not in line and "cuda" not in line.lower()]


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of a given size mounted in ``tmp_path`` (root only: skipped, with the
    reason, where the machine does not allow it); unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / "fs"
        where.mkdir(exist_ok=True)
        if mounted:
            run = ["mount", "-o", f"remount,size={size}", str(where)]
        else:
            run = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
        done = subprocess.run(run, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); "
                        "the full-disk tests need root or a user mount")
        mounted.append(where)
        return where

    yield mount
    for where in mounted[:1]:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _half_written(folder: Path) -> list[Path]:
    """Temporary files of an unfinished write (the lock file is not one)."""
    return [p for p in folder.rglob(".*") if p.is_file() and p.name != ".lock"]


def _stop(cmd: list[str], out: Path, sig: int) -> tuple[subprocess.Popen, str, set[int]]:
    """Runs the search and sends ``sig`` once its second trial has finished a fold;
    returns the ended process, its stderr and the child processes it had."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "tuner" / "trial_0001" / "fold_0" / RESULT
    deadline = time.monotonic() + 300
    children: set[int] = set()
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        children |= _children(proc.pid)
        time.sleep(0.05)
    assert marker.exists() and children, "the search never trained its second trial"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc, stderr, children


def _check_stopped(proc: subprocess.Popen, stderr: str, children: set[int], out: Path,
                   sig: int) -> None:
    """The stop's one line and exit code; nothing left running, locked or half-written."""
    from lvseg_search.engine.lock import is_locked

    said = _said(stderr)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert len(said) == 1, said
    name = signal.Signals(sig).name
    assert said[0].startswith(f"lvseg-search: stopped by {name}; {out}: "), said
    assert "trial(s) complete" in said[0] and "run the same command to resume" in said[0]
    assert "leaked" not in stderr and "Traceback" not in stderr
    assert not is_locked(out)
    # multiprocessing's resource tracker ends a moment after its parent.
    deadline = time.monotonic() + 5
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)], "a child process outlived the stop"
    assert not _half_written(out)


def test_stopped_by_sigterm_then_out_of_disk_a_search_resumes_losing_nothing(
        tiny_data, small_fs):
    """SIGTERM (a batch scheduler, docker stop), then a full disk (a 1 MB tmpfs) as the
    search resumes, then space freed: each stop says what happened in one line and keeps
    every finished fold, and the search ends with every trial of its schedule complete.
    (That the scores then equal an undisturbed run's is checked by
    benchmarks/kill_soak.py, which runs both.)"""
    fs = small_fs("1m")
    out = fs / "run"
    cmd = [sys.executable, "-m", "lvseg_search", "search", "--data", str(tiny_data),
           "--out", str(out), *TINY_RUN_OPTIONS]
    _check_stopped(*_stop(cmd, out, signal.SIGTERM), out, signal.SIGTERM)
    kept = {p: p.stat().st_mtime_ns for p in out.glob(f"tuner/trial_*/fold_*/{RESULT}")}

    full = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    said = _said(full.stderr)
    assert full.returncode == 2, full.stderr[-3000:]
    assert len(said) == 1 and "Traceback" not in full.stderr, said
    line = said[0]
    assert line.startswith(f"lvseg-search: error: {out}: disk full"), line
    assert " free" in line and "needs about" in line and "run the same command to resume" in line
    # The warning before the first fold said so too.
    assert "lvseg-search: warning:" in full.stdout and "needs about" in full.stdout
    assert not _half_written(out)
    # No trial was marked failed for the disk's sake.
    assert not [p for p in out.glob("tuner/trial_*/trial.json")
                if json.loads(p.read_text())["status"] in ("FAILED", "INVALID")]
    for path, stamp in kept.items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was trained again"
    kept = {p: p.stat().st_mtime_ns for p in out.glob(f"tuner/trial_*/fold_*/{RESULT}")}

    small_fs("16m")  # space freed
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for path, stamp in kept.items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was trained again"
    trials = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/trial.json")]
    assert len(trials) == 5 and all(t["status"] == "COMPLETED" for t in trials)
    assert len(list(out.glob(f"tuner/trial_*/fold_*/{RESULT}"))) == 2 * 5


def _children(pid: int) -> set[int]:
    """The process's child processes (Linux)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the task ended meanwhile
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent's wait is missing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_export_and_prepare_on_a_full_disk_say_so_in_one_line_and_write_nothing(
        tiny_run, small_phantom, small_fs, capsys):
    from lvseg_search.cli import main

    fs = small_fs("256k")
    assert main(["export", str(tiny_run), "--out", str(fs / "model"), "--ensemble",
                 "--no-onnx"]) == 2
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.startswith("lvseg-search")]
    assert len(said) == 1 and said[0].startswith(f"lvseg-search: error: {fs / 'model'}: "
                                                 "disk full"), said
    assert "needs about" in said[0] and "run the command again" in said[0]
    assert "lvseg-search: warning:" in captured.out  # said before it wrote
    assert not list(fs.iterdir())  # no model folder, whole or partial

    small_fs("100k")
    assert main(["prepare", str(small_phantom), "--out", str(fs / "data")]) == 2
    said = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("lvseg-search")]
    assert len(said) == 1 and f"{fs / 'data'}: disk full" in said[0], said
    assert not list(fs.iterdir())
