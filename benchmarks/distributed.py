"""Wall time of the same small cross-validated search with 1 and with 2 workers on this
machine (chief + workers on loopback, keras-tuner's distributed mode).

    python benchmarks/distributed.py [--patients 6] [--max-epochs 3] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lvseg_search.data.phantom import synth
from lvseg_search.prepare import prepare


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(data: Path, out: Path, workers: int, args) -> tuple[float, dict[str, int]]:
    port = _free_port()
    base = [sys.executable, "-m", "lvseg_search", "search", "--out", str(out), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if workers > 1:
        # Each worker gets its share of the cores instead of all of them fighting.
        env["TF_NUM_INTRAOP_THREADS"] = str(max(1, (os.cpu_count() or 2) // workers))
    start = time.perf_counter()
    chief = subprocess.Popen(base + [
        "--data", str(data), "--space", "quick", "--folds", "3", "--max-epochs",
        str(args.max_epochs), "--factor", "3", "--image-size", str(args.image_size),
        "--chief", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen(base + ["--worker", f"127.0.0.1:{port}", "--tuner-id", f"w{i}",
                                      "--connect-timeout", "120"], env=env,
                              stdout=subprocess.DEVNULL) for i in range(workers)]
    for p in procs + [chief]:
        if p.wait() != 0:
            raise SystemExit(f"search process exited with {p.returncode}")
    wall = time.perf_counter() - start
    import json

    per_worker: dict[str, int] = {}
    for p in out.glob("tuner/trial_*/fold_0/result.json"):
        tid = json.loads(p.read_text())["tuner_id"]
        per_worker[tid] = per_worker.get(tid, 0) + 1
    return wall, per_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        synth(tmp / "phantom", args.patients, seed=0, size=128, progress=False)
        prepare(tmp / "phantom", tmp / "data", progress=False)
        print(f"{os.cpu_count()} cores; quick space, 3 folds, max {args.max_epochs} epochs, "
              f"{args.image_size}px, {args.patients}-patient phantom")
        walls = {}
        for n in (1, 2):
            walls[n], per_worker = run(tmp / "data", tmp / f"run{n}", n, args)
            print(f"{n} worker(s): wall {walls[n]:.1f} s, trials per worker {per_worker}")
        print(f"speed-up with 2 workers: {walls[1] / walls[2]:.2f}x")


if __name__ == "__main__":
    main()
