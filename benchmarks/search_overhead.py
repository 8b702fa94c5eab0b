"""Search overhead and memory across trials.

1. A 10-trial cross-validated search on the real Sunnybrook shards: wall time over
   time spent inside training batches (target <= 1.3), and the fixed cost per fold
   model trained (wall minus batches, per fit). Two settings: "small", the smallest
   trials (batch 8, one pass over a fold's ~37 training slices per epoch, 5 batches;
   max 3 epochs, factor 3), where fixed costs weigh most; and "readme", the first 10
   trials of the real-subset search the README gives (batch 4, 30 batches per epoch,
   max 30 epochs, factor 10). With --stock, the small trials twice more, both timed
   inside this process once TensorFlow is loaded (no process start, no import): our
   search (the same command, in-process) and stock keras-tuner Hyperband (one
   train/val split, Keras's own validation), for comparison on the same footing.
2. Process RSS after trials 1, 10, 50 and 100 of a 100-trial search of tiny models
   (target: growth <= 5% from trial 10 to 100), as the command line runs it: a fresh
   process every --recycle-every trials (0: all in one process, to see the leak).

    python benchmarks/search_overhead.py [--data ../shared/data/sunnybrook-subset]
        [--trials 10] [--settings small,readme] [--memory-trials 100]
        [--recycle-every 10] [--stock]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lvseg_search.data.phantom import synth
from lvseg_search.prepare import prepare
from lvseg_search.search import run_search

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-subset"

TINY_SPACE = """
[hyperparameters]
architecture = { values = ["encoder_decoder"] }
depth = { values = [1, 2] }
base_filters = { values = [4, 8] }
kernel_size = { values = [3] }
convs_per_stage = { values = [1] }
downsampling = { values = ["max_pool", "strided_conv"] }
decoder = { values = ["unet", "transposed"] }
normalization = { values = ["batch"] }
dropout = { values = [0.0] }
activation = { values = ["relu"] }
loss = { values = ["crossentropy_dice"] }
optimizer = { values = ["adam"] }
learning_rate = { min = 1e-4, max = 1e-2, sampling = "log" }
"""


SETTINGS = {
    "small": ["--max-epochs", "3", "--factor", "3", "--iterations", "2", "--batch-size", "8"],
    "readme": ["--max-epochs", "30", "--factor", "10", "--batch-size", "4",
               "--steps-per-epoch", "30"],
}


def overhead(data_dir: Path, out: Path, trials: int, image_size: int,
             recycle: int | None, settings: str, in_process: bool = False) -> dict:
    """Times the search as users run it: the command line in its own process (one
    TensorFlow import, trials in a child process when recycling); with ``in_process``,
    the same command run inside this process, trials too, as stock keras-tuner is timed."""
    import contextlib
    import io
    import json
    import subprocess
    import sys

    args = ["search", "--data", str(data_dir), "--space", "quick", "--out", str(out),
            "--folds", "3", "--max-trials", str(trials), "--image-size", str(image_size),
            "--seed", "0", "--quiet", "--recycle-every", str(0 if in_process else recycle or 0),
            *SETTINGS[settings]]
    if in_process:
        import keras  # noqa: F401 - TensorFlow loaded before the clock starts

        from lvseg_search import cli

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            if cli.main(args) != 0:
                raise RuntimeError(f"search failed: {args}")
    else:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lvseg_search", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/fold_*/result.json")]
    trials_done = len(list(out.glob("tuner/trial_*/trial.json")))
    return {"wall_seconds": wall, "batch_seconds": sum(r["batch_seconds"] for r in results),
            "trials": trials_done, "fits": len(results)}


def figures(wall: float, batches: float, fits: int, unit: str) -> str:
    """Wall time, time inside training batches, their ratio and the fixed cost per fit."""
    return (f"wall {wall:.1f} s, inside training batches {batches:.1f} s, ratio "
            f"{wall / batches:.2f}; fixed cost {(wall - batches) / fits:.2f} s per {unit} "
            f"({fits} fits)")


def breakdown(run: Path, wall: float) -> str:
    """Sums the per-fold timings the tuner records; the rest of ``wall`` is spent outside
    the folds (process start-up, model builds, keras-tuner's bookkeeping, summaries).
    The first batch of each fit is part of the batches: for a trial's first fold it
    includes tracing the new model's train step."""
    import json

    totals = {"fit": 0.0, "batches": 0.0, "first batch of each fit": 0.0, "validation": 0.0,
              "rest of fit": 0.0,
              "full-size scoring": 0.0, "checkpoint+result": 0.0, "outside folds": wall}
    for p in run.glob("tuner/trial_*/fold_*/result.json"):
        r = json.loads(p.read_text())
        totals["fit"] += r["fit_seconds"]
        totals["batches"] += r["batch_seconds"]
        totals["first batch of each fit"] += r.get("first_batch_seconds", 0.0)
        totals["validation"] += r["val_seconds"]
        totals["full-size scoring"] += r.get("eval_seconds", 0.0)
        totals["rest of fit"] += r["fit_seconds"] - r["batch_seconds"] - r["val_seconds"]
        totals["checkpoint+result"] += (r["train_seconds"] - r["fit_seconds"]
                                        - r.get("eval_seconds", 0.0))
        totals["outside folds"] -= r["train_seconds"]
    return ", ".join(f"{k} {v:.1f} s" for k, v in totals.items())


def stock_overhead(data_dir: Path, tmp: Path, trials: int, image_size: int) -> tuple[float, float]:
    """The same budget through stock keras-tuner Hyperband on fold 0 only."""
    import keras
    import keras_tuner

    from lvseg_search.data import manifest, splits
    from lvseg_search.data.pipeline import (
        PipelineConfig,
        make_dataset,
        patient_files,
    )
    from lvseg_search.model.hypermodel import SegmentationHyperModel
    from lvseg_search.model.space import load_space

    data = manifest.open_data(data_dir)
    split = splits.make_splits(data.slice_counts, 3, seed=0)
    config = PipelineConfig(image_size=image_size, batch_size=8, seed=0)
    tr, va = split["folds"][0]["train"], split["folds"][0]["val"]
    train = make_dataset(patient_files(data, tr, config), config.training(),
                         data.slices(tr))
    val = make_dataset(patient_files(data, va, config), config, data.slices(va))

    class Timer(keras.callbacks.Callback):
        seconds = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            Timer.seconds += time.perf_counter() - self._t

    tuner = keras_tuner.Hyperband(
        SegmentationHyperModel(load_space("quick"), image_size), objective=keras_tuner.Objective(
            "val_dice", "max"), max_epochs=3, factor=3, hyperband_iterations=2,
        directory=str(tmp), project_name="stock", seed=1)  # our --seed 0 (0 is "none")
    tuner.oracle.max_trials = trials
    start = time.perf_counter()
    tuner.search(train, validation_data=val, callbacks=[Timer()], verbose=0)
    return time.perf_counter() - start, Timer.seconds


def memory(tmp: Path, trials: int, recycle: int | None) -> list[dict]:
    synth(tmp / "phantom", 4, seed=0, size=32, progress=False)
    prepare(tmp / "phantom", tmp / "tiny", progress=False)
    space = tmp / "tiny.toml"
    space.write_text(TINY_SPACE)
    summary = run_search(tmp / "tiny", tmp / "memory", str(space), folds=2, max_epochs=1,
                         factor=3, hyperband_iterations=trials, max_trials=trials,
                         image_size=32, batch_size=8, seed=0, verbose=False,
                         recycle_every=recycle)
    return summary["trial_log"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--memory-trials", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--settings", default="small,readme",
                        help="comma-separated: small (one-pass epochs), readme (the README's "
                        "real-subset settings)")
    parser.add_argument("--stock", action="store_true",
                        help="also time the small trials in this process, ours and stock "
                        "keras-tuner Hyperband's")
    parser.add_argument("--recycle-every", type=int, default=10,
                        help="fresh search process every N trials (0: one process)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    recycle = args.recycle_every or None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "real"
        prepare(args.data, data, progress=False)
        for name in [] if args.skip_overhead else args.settings.split(","):
            if name not in SETTINGS:
                parser.error(f"--settings: unknown {name!r}; choose {', '.join(SETTINGS)}")
            run = tmp / f"overhead-{name}"
            s = overhead(data, run, args.trials, args.image_size, recycle, name)
            print(f"[overhead] {name} ({' '.join(SETTINGS[name])}): {s['trials']} trials x 3 "
                  f"folds, real shards at {args.image_size}px: "
                  + figures(s["wall_seconds"], s["batch_seconds"], s["fits"], "fold model"))
            print(f"[overhead] {name}, where the time went: " + breakdown(run,
                                                                         s["wall_seconds"]))
        if args.stock:
            s = overhead(data, tmp / "in-process", args.trials, args.image_size, None,
                         "small", in_process=True)
            print(f"[overhead] ours, small trials, {s['trials']} trials x 3 folds in this "
                  "process: " + figures(s["wall_seconds"], s["batch_seconds"], s["fits"],
                                        "fold model"))
            wall, batches = stock_overhead(data, tmp, args.trials, args.image_size)
            print(f"[overhead] stock keras-tuner, small trials, {args.trials} trials on one "
                  "split in this process: " + figures(wall, batches, args.trials, "model"))
        if not args.skip_memory:
            log = memory(tmp, args.memory_trials, recycle)
            marks = [m for m in (1, 10, 50, 100) if m <= len(log)]
            rss = {m: log[m - 1]["rss_mib"] for m in marks}
            print("[memory] RSS after trial " + ", ".join(f"{m}: {rss[m]:.0f} MiB"
                                                         for m in marks))
            if 10 in rss and marks[-1] > 10:
                growth = (rss[marks[-1]] / rss[10] - 1) * 100
                print(f"[memory] growth from trial 10 to {marks[-1]}: {growth:+.1f}% "
                      f"({(rss[marks[-1]] - rss[10]) / (marks[-1] - 10):+.2f} MiB per trial)")
                peak = max(t["rss_mib"] for t in log[9:])
                print(f"[memory] highest RSS after any of trials 10..{marks[-1]}: {peak:.0f} "
                      f"MiB ({(peak / rss[10] - 1) * 100:+.1f}% over trial 10); "
                      f"{len({t['pid'] for t in log})} search process(es)")


if __name__ == "__main__":
    main()
