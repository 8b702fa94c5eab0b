"""Kill soak: a small search on the phantom, stopped at random moments (SIGKILL to its
process group, or SIGTERM to the command as a batch scheduler sends it, alternating) and
resumed each time, against an uninterrupted run of the same command; then a 2-worker
distributed search whose worker is killed in the middle of a trial, against an
uninterrupted 2-worker search.

Per kill it prints what the search was doing (the last line it printed: training an
epoch, between trials, a fresh recycled child starting ...), the fold models in progress
(trained again after the resume: what was lost), and whether any finished fold was
trained again. At the end: every trial completed once, every record readable (each
JSON parses, each checkpoint opens as HDF5), stray temporary files, and the final
ranking against the uninterrupted run's.

For each SIGTERM: the exit code (143), the one line the command printed and how long it
took to stop. For the worker kill: the chief's line, trials completed, the folds trained
again, and each trial's score against the same configuration's in the undisturbed run.

    python benchmarks/kill_soak.py [--kills 10] [--seed 0] [--recycle-every 3] [--keep DIR]
                                   [--signals kill,term] [--no-workers]
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


def run_until_killed(cmd: list[str], delay: float, how: str = "kill"
                     ) -> tuple[bool, str, float, float, dict]:
    """Runs the search and, after ``delay`` seconds, SIGKILLs its whole process group
    (``kill``) or sends SIGTERM to the command alone (``term``).

    Returns:
        Whether it finished by itself first, its last printed line, the seconds run,
        when it started (epoch seconds), and for ``term`` the exit code, the stop line
        and the seconds it took to stop.
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
    stop: dict = {}
    try:
        proc.wait(timeout=delay)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
        if how == "term":
            said = last[0]
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=5)
            stop = {"code": proc.returncode, "seconds": time.monotonic() - sent,
                    "line": last[0] if last[0] != said else ""}
            # A stopped search leaves no process of its own behind (multiprocessing's
            # resource tracker ends a moment after its parent: 5 s allowed).
            stop["left_processes"] = True
            for _ in range(50):
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    stop["left_processes"] = False
                    break
                time.sleep(0.1)
            if stop["left_processes"]:
                os.killpg(proc.pid, signal.SIGKILL)
            last[0] = said
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    return finished, last[0], time.monotonic() - start, began, stop


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
    parser.add_argument("--signals", default="kill,term",
                        help="how each stop is made, in turn: kill (SIGKILL to the process "
                             "group), term (SIGTERM to the command)")
    parser.add_argument("--no-workers", action="store_true",
                        help="skip the distributed search with a worker killed")
    args = parser.parse_args()
    hows = args.signals.split(",")
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
        terms: list[dict] = []
        while kills < args.kills:
            before, _ = fold_state(out) if out.exists() else ({}, [])
            # Random moments over the whole run: a restart costs a few seconds of start-up,
            # so the search still advances between kills.
            how = hows[kills % len(hows)]
            finished, line, ran, began, stop = run_until_killed(
                cmd, rng.uniform(7.0, 16.0), how)
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
            if stop:
                terms.append(stop)
            print(f"{how:4s} {kills:2d} after {ran:5.1f} s, {doing(line)}: {len(done)} folds "
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
        if terms:
            codes = sorted({t["code"] for t in terms})
            print(f"SIGTERM stops: {len(terms)}, exit codes {codes} (target [143]), "
                  f"stopped in {max(t['seconds'] for t in terms):.1f} s at most, "
                  f"processes left behind: {sum(t['left_processes'] for t in terms)} "
                  "(target 0)")
            print(f"  the line: {terms[-1]['line']}")
        if not args.no_workers:
            worker_kill(tmp, space, args.seed)


def distributed(data: Path, out: Path, space: Path, seed: int, kill_after: bool = False
                ) -> dict:
    """A chief and two workers on loopback; with ``kill_after``, worker w1 is killed
    (SIGKILL) once a trial of its has finished its first fold but not its second."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, "-m", "lvseg_search", "search", "--out", str(out), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1"}
    start = time.monotonic()
    chief = subprocess.Popen(base + [
        "--data", str(data), "--space", str(space), "--folds", "3", "--max-epochs", "4",
        "--factor", "2", "--image-size", "32", "--batch-size", "4", "--steps-per-epoch",
        "4", "--iterations", "2", "--seed", str(seed), "--chief", f"127.0.0.1:{port}",
        "--worker-timeout",
        "10"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = {name: subprocess.Popen(
        base + ["--worker", f"127.0.0.1:{port}", "--tuner-id", name, "--connect-timeout",
                "120"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in ("w0", "w1")}
    held = None
    if kill_after:
        while held is None and workers["w1"].poll() is None:
            for first in out.glob("tuner/trial_*/fold_0/result.json"):
                by = json.loads(first.read_text()).get("tuner_id")
                if by == "w1" and not (first.parent.parent / "fold_1" / "result.json").exists():
                    held = first.parent.parent
                    break
            time.sleep(0.02)
        workers["w1"].kill()
    kept = ({p: p.stat().st_mtime_ns for p in held.glob("fold_*/result.json")}
            if held else {})
    for w in workers.values():
        w.wait()
    log = chief.communicate()[0]
    trials = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/trial.json")]
    retrained = sum(p.stat().st_mtime_ns != stamp for p, stamp in kept.items())
    return {"code": chief.returncode, "seconds": time.monotonic() - start, "log": log,
            "held": held.name if held else None, "retrained": retrained,
            "trials": {config(t): t["score"] for t in trials if t["status"] == "COMPLETED"},
            "completed": sum(t["status"] == "COMPLETED" for t in trials),
            "all": len(trials)}


def config(trial: dict) -> str:
    """A trial's id, configuration and budget. Its weights' seed follows its id, and two
    distributed runs may hand out the same configuration under different ids (the order
    in which workers ask decides): only a trial with the same id and values in both runs
    is expected to score the same."""
    return json.dumps([trial["trial_id"], trial["hyperparameters"]["values"]], sort_keys=True)


def worker_kill(tmp: Path, space: Path, seed: int) -> None:
    ref = distributed(tmp / "data", tmp / "dist-reference", space, seed)
    hit = distributed(tmp / "data", tmp / "dist-killed", space, seed, kill_after=True)
    said = [line for line in hit["log"].splitlines() if "sent no heartbeat" in line]
    common = set(ref["trials"]) & set(hit["trials"])
    gap = max((abs(ref["trials"][c] - hit["trials"][c]) for c in common), default=0.0)
    print(f"\n2 workers, uninterrupted: {ref['completed']} of {ref['all']} trials "
          f"completed in {ref['seconds']:.0f} s (chief exit {ref['code']})")
    print(f"2 workers, w1 killed in {hit['held']}'s second fold: {hit['completed']} of "
          f"{hit['all']} trials completed in {hit['seconds']:.0f} s (chief exit "
          f"{hit['code']}); finished folds of that trial trained again: {hit['retrained']} "
          "(target 0)")
    print(f"  the chief: {said[0] if said else '(no line: the worker held no trial?)'}")
    print(f"  trials with the same id and configuration in both runs: {len(common)} of "
          f"{len(ref['trials'])}; largest score difference between them {gap:.2e} (target 0)")


if __name__ == "__main__":
    main()
