"""Kill soak: a small search on the phantom, killed with SIGKILL at random moments and
resumed each time, against an uninterrupted run of the same command.

Per kill it prints what the search was doing (the last line it printed: training an
epoch, between trials, a fresh recycled child starting ...), the fold models in progress
(trained again after the resume: what was lost), and whether any finished fold was
trained again. At the end: every trial completed once, every record readable (each
JSON parses, each checkpoint opens as HDF5), stray temporary files, and the final
ranking against the uninterrupted run's.

    python benchmarks/kill_soak.py [--kills 10] [--seed 0] [--recycle-every 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from search_overhead import TINY_SPACE  # the same tiny networks as that benchmark's

from lvseg_search.data.phantom import synth
from lvseg_search.prepare import prepare


def command(data: Path, out: Path, space: Path, seed: int, recycle: int) -> list[str]:
    return [sys.executable, "-m", "lvseg_search", "search", "--data", str(data),
            "--space", str(space), "--out", str(out), "--folds", "3", "--max-epochs", "4",
            "--factor", "2", "--iterations", "2", "--image-size", "32", "--batch-size", "4",
            "--steps-per-epoch", "4", "--seed", str(seed), "--recycle-every", str(recycle)]


def fold_state(out: Path) -> tuple[dict[Path, int], list[Path]]:
    """Finished folds (result file -> mtime) and fold folders still in progress."""
    done = {p: p.stat().st_mtime_ns for p in out.glob("tuner/trial_*/fold_*/result.json")}
    running = [f for f in out.glob("tuner/trial_*/fold_*") if not (f / "result.json").exists()]
    return done, running


def ranking(out: Path) -> list[tuple[str, float]]:
    trials = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/trial.json")]
    done = [(t["trial_id"], t["score"]) for t in trials if t["status"] == "COMPLETED"]
    return sorted(done, key=lambda t: -t[1])


def audit(out: Path) -> dict[str, list[str]]:
    """Unreadable records and stray temporary files in a run folder."""
    import h5py

    corrupt, stray = [], []
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        if path.name.startswith(".") and path.name != ".lock":
            stray.append(str(path.relative_to(out)))
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                corrupt.append(str(path.relative_to(out)))
        elif path.suffix == ".h5":
            try:
                with h5py.File(path, "r"):
                    pass
            except OSError:
                corrupt.append(str(path.relative_to(out)))
    return {"corrupt": corrupt, "stray": stray}


def run_until_killed(cmd: list[str], delay: float) -> tuple[bool, str, float, float]:
    """Runs the search and SIGKILLs its whole process group after ``delay`` seconds.

    Returns:
        Whether it finished by itself first, its last printed line, the seconds run, and
        when it started (epoch seconds).
    """
    began = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    last = [""]

    def follow():
        for line in proc.stdout:
            # TensorFlow's start-up log lines say nothing of the search's progress.
            if line.strip() and line[:5] not in ("I0000", "W0000", "E0000") \
                    and "absl::InitializeLog" not in line:
                last[0] = line.strip()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    start = time.monotonic()
    try:
        proc.wait(timeout=delay)
        finished = True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = False
    reader.join(timeout=5)
    return finished, last[0], time.monotonic() - start, began


def training_started(line: str, fold: Path) -> bool:
    """Whether the last line printed says this run was training ``fold``."""
    trial = fold.parent.name.removeprefix("trial_")
    k = int(fold.name.removeprefix("fold_"))
    return line.startswith((f"trial {trial} fold {k + 1}/", f"trial {trial}: epochs"))


def doing(line: str) -> str:
    if not line:
        return "starting up (loading TensorFlow)"
    if "epoch" in line and "fold" in line:
        return "training an epoch (or validating it, or writing its checkpoint)"
    if "done: CV Dice" in line:
        return "between trials"
    if line.startswith("trial ") and "epochs" in line:
        return "building a trial's model"
    if "fresh search process" in line:
        return "starting a recycled child"
    if line.startswith("search:") or line.startswith("fold "):
        return "preparing the run"
    return f"other ({line[:60]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recycle-every", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.keep:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=False)
        synth(tmp / "phantom", 5, seed=3, size=32, progress=False)
        prepare(tmp / "phantom", tmp / "data", progress=False)
        space = tmp / "soak.toml"
        space.write_text(TINY_SPACE)

        start = time.monotonic()
        ref = subprocess.run(command(tmp / "data", tmp / "reference", space, args.seed,
                                     args.recycle_every), capture_output=True, text=True)
        if ref.returncode != 0:
            sys.exit(f"reference search failed:\n{ref.stdout[-3000:]}")
        wall = time.monotonic() - start
        reference = ranking(tmp / "reference")
        print(f"uninterrupted: {len(reference)} trials in {wall:.0f} s")

        out = tmp / "soak"
        cmd = command(tmp / "data", out, space, args.seed, args.recycle_every)
        lost_total, retrained_total = 0, 0
        kills = 0
        while kills < args.kills:
            before, _ = fold_state(out) if out.exists() else ({}, [])
            # Random moments over the whole run: a restart costs a few seconds of start-up,
            # so the search still advances between kills.
            finished, line, ran, began = run_until_killed(
                cmd, rng.uniform(7.0, 16.0))
            if finished:
                print(f"(the search finished before kill {kills + 1}; {ran:.0f} s)")
                break
            kills += 1
            done, running = fold_state(out)
            retrained = [p for p, stamp in before.items() if done.get(p) != stamp]
            # A fold is lost by this kill if this run had begun it (made its folder, or
            # printed its epochs); a fold left by an earlier kill and not begun again is
            # not lost twice.
            running = [r for r in running
                       if r.stat().st_mtime >= began or training_started(line, r)]
            lost_total += len(running)
            retrained_total += len(retrained)
            print(f"kill {kills:2d} after {ran:5.1f} s, {doing(line)}: {len(done)} folds "
                  f"finished, {len(running)} in progress lost "
                  f"({', '.join(str(r.relative_to(out / 'tuner')) for r in running) or '-'}), "
                  f"{len(retrained)} finished fold(s) trained again")
        final = subprocess.run(cmd, capture_output=True, text=True)
        if final.returncode != 0:
            sys.exit(f"the resumed search failed:\n{final.stdout[-3000:]}")
        soak = ranking(out)
        trial_ids = [json.loads(p.read_text())["trial_id"]
                     for p in out.glob("tuner/trial_*/trial.json")]
        found = audit(out)
        same_trials = [t for t, _ in soak] == [t for t, _ in reference]
        score_gap = max((abs(a - b) for (_, a), (_, b) in zip(soak, reference, strict=False)),
                        default=0.0)
        print(f"\n{kills} kills: at most {lost_total} fold(s) in progress lost in all "
              f"(target: at most 1 per kill), {retrained_total} finished fold(s) trained "
              "again (target 0)")
        print(f"trials: {len(soak)} completed of {len(trial_ids)} "
              f"({len(set(trial_ids))} distinct ids; uninterrupted: {len(reference)})")
        print(f"corrupt files: {len(found['corrupt'])} {found['corrupt'] or ''} (target 0); "
              f"stray temporary files: {len(found['stray'])} {found['stray'][:5] or ''}")
        print(f"final ranking equals the uninterrupted run's: {same_trials} "
              f"(largest score difference {score_gap:.2e})")


if __name__ == "__main__":
    main()
