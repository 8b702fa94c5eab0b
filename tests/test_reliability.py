"""Every failure visible: one writer per run folder, data checked before the first
trial, a search whose every trial failed, unreadable records reported, durable swaps."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvseg_search.cli import main
from lvseg_search.engine.lock import is_locked
from lvseg_search.errors import UserError
from lvseg_search.search import run_search

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
QUICK = ["--space", str(TINY), "--folds", "2", "--max-epochs", "2", "--factor", "2",
         "--max-trials", "2", "--image-size", "32", "--batch-size", "4",
         "--steps-per-epoch", "1", "--recycle-every", "0", "--quiet"]


@pytest.fixture(scope="module")
def small_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-trial search (copy it before breaking it)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["search", "--data", str(tiny_data), "--out", str(out), *QUICK]) == 0
    return out


def _hold_lock(folder: Path) -> subprocess.Popen:
    """A second, real process that holds the run folder's lock until killed."""
    code = ("import time\nfrom lvseg_search.engine.lock import run_lock\n"
            f"with run_lock({str(folder)!r}, 'search'):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_run_folder(small_run, tiny_data, tmp_path, capsys):
    from lvseg_search.report import write_report

    out = tmp_path / "run"
    shutil.copytree(small_run, out)
    holder = _hold_lock(out)
    try:
        assert is_locked(out)
        capsys.readouterr()
        for argv in (["search", "--data", str(tiny_data), "--out", str(out), *QUICK],
                     ["search", "--data", str(tiny_data), "--out", str(out), *QUICK,
                      "--overwrite"],
                     ["export", str(out), "--out", str(tmp_path / "model")]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"search is running in it (pid {holder.pid} on " in err and "started" in err
        assert not (tmp_path / "model").exists()
        assert (out / "tuner").is_dir()  # --overwrite did not touch the running search
        # report may read a running search.
        assert write_report(out, tmp_path / "report", overlays=False, verbose=False)["files"]
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its process: the search resumes (and finds itself finished).
    assert not is_locked(out)
    assert main(["search", "--data", str(tiny_data), "--out", str(out), *QUICK]) == 0


def test_a_bad_shard_stops_the_search_before_any_trial(tiny_data, tmp_path, capsys):
    from lvseg_search.data.manifest import open_data

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shard = open_data(data).shard(open_data(data).patient_ids[-1])
    whole = shard.read_bytes()
    capsys.readouterr()
    # Cut inside a record, and cut at a record boundary (TensorFlow reads the latter
    # without complaint: only the count against the manifest shows the loss).
    for cut, needle in ((len(whole) // 2 - 10, "truncated"),
                        (len(whole) // 2, "where the manifest says 12")):
        shard.write_bytes(whole[:cut])
        assert main(["search", "--data", str(data), "--out", str(tmp_path / "run"),
                     *QUICK]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(shard) in err and needle in err, err
        assert not (tmp_path / "run").exists()
    # A shard that reads to its end but holds other examples than the manifest says.
    shard.write_bytes(whole)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["patients"][-1]["slices"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert main(["search", "--data", str(data), "--out", str(tmp_path / "run"), *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert "where the manifest says" in err and str(shard) in err
    assert not (tmp_path / "run").exists()


def test_a_search_whose_every_trial_failed_exits_with_the_reason(tiny_data, tmp_path):
    space = tmp_path / "nan.toml"
    diverging = (Path(__file__).parent / "spaces" / "diverging.toml").read_text()
    space.write_text(diverging.replace("[0.01, 1000.0]", "[1000.0]"))
    with pytest.raises(UserError, match="all 2 trial.s. failed, each for the same reason: "
                                        "fold 0: loss became NaN"):
        run_search(tiny_data, tmp_path / "run", str(space), folds=2, max_epochs=2, factor=2,
                   max_trials=2, image_size=32, batch_size=4, verbose=False)


def test_unreadable_records_are_reported_not_dropped(small_run, tmp_path, capsys):
    from lvseg_search.report import write_report

    out = tmp_path / "run"
    shutil.copytree(small_run, out)
    trials = sorted((out / "tuner").glob("trial_*/trial.json"))
    trials[0].write_text('{"trial_id": "00')  # cut short
    result = next(trials[1].parent.glob("fold_1/result.json"))
    result.write_text("not json")
    capsys.readouterr()
    report = write_report(out, overlays=False, verbose=True)
    printed = capsys.readouterr().out
    assert f"unreadable: {trials[0]}: unreadable (" in printed
    assert f"unreadable: {result}: unreadable (JSONDecodeError)" in printed
    assert "of 2 started" in printed and "2 record(s) unreadable" in printed
    assert "files are damaged" in printed  # nothing holds the folder's lock
    md = report["files"]["md"].read_text()
    html = report["files"]["html"].read_text()
    for text in (md, html):
        assert "Unreadable records" in text and str(trials[0]) in text and str(result) in text
    # The trial whose trial.json is cut is not ranked; the one with a damaged fold record
    # keeps the score its trial.json holds.
    assert list(report["table"]["trial"]) == [trials[1].parent.name.removeprefix("trial_")]


def test_a_folder_swap_that_dies_midway_leaves_a_complete_folder(tmp_path):
    code = f"""
import os, sys
from pathlib import Path
from lvseg_search import atomic
out = Path({str(tmp_path / "out")!r})
with atomic.output_dir(out) as tmp:
    (tmp / "a.txt").write_text("old")
atomic._exchange = lambda a, b: False  # a system without RENAME_EXCHANGE
real = os.replace
calls = []
def dying(src, dst):
    real(src, dst)
    calls.append(dst)
    if len(calls) == 1:
        os._exit(9)  # killed between the two renames
os.replace = dying
with atomic.output_dir(out, overwrite=True) as tmp:
    (tmp / "a.txt").write_text("new")
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert not (tmp_path / "out").exists()  # the old folder is set aside, the new not in
    from lvseg_search import atomic

    atomic.recover(tmp_path / "out")  # what the next writer of the folder does first
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert not list(tmp_path.glob(".out.old-*"))
    # Where the system exchanges names in one step, the new folder simply replaces it.
    with atomic.output_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_of_something_else_is_refused_and_left_as_it_was(tiny_data, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert main(["search", "--data", str(tiny_data), "--out", str(other), *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists and holds no search" in err
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]  # no lock file left
