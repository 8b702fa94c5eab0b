"""How the finalists' ensemble should deliver its members: as their fold models, or each
member retrained on every non-test patient? Scored where it can be: on held-out test
patients, which no search or selection saw.

On synthetic phantom patients (the real subset's three are all needed for its folds):
one search as a user runs it (the default network in the race, finalists trained on),
then four exports of the same run, all with the decision's test-time augmentation and
post-processing:

- ``ensemble_folds``: the finalists' ensemble, each member's fold models (weighted);
- ``ensemble_retrained``: the same members and weights, each retrained on all non-test
  patients;
- ``single_retrained``: the best finalist retrained (what ``--deliver single`` gives);
- ``single_folds``: the best finalist's fold models averaged (``--ensemble``).

Prints, per export, the test patients' Dice, APD and good contours (the masks as
delivered), the networks in the graph and one image's latency through the SavedModel
and TFLite (median; run it with ``TF_NUM_INTRAOP_THREADS=1`` and nothing else on the CPU
for the figures of ``benchmarks/export_predict.py``).

    python benchmarks/ensemble_members.py --out DIR [--seed 0] [--patients 14]
        [--test-patients 4] [--size 128] [--search-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

EXPORTS = {
    "ensemble_folds": {"deliver": "ensemble", "members": "folds"},
    "ensemble_retrained": {"deliver": "ensemble", "members": "retrained"},
    "single_retrained": {"deliver": "single"},
    "single_folds": {"ensemble": True},
}


def median_ms(run, image, spacing, repeats: int) -> float:
    """One image's median time (ms) through a format, after warm-up calls."""
    for _ in range(3):
        run(image, spacing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(image, spacing)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients", type=int, default=14)
    parser.add_argument("--test-patients", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=12)
    parser.add_argument("--min-epochs", type=int, default=3)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--finalists", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=24)
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the latency figures (something else is on the CPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--search-only", action="store_true",
                        help="run (or resume) the search and stop: export later, with "
                             "nothing else on the CPU, for the latency figures")
    args = parser.parse_args()

    from lvseg_search.data.phantom import synth
    from lvseg_search.export import export
    from lvseg_search.prepare import prepare
    from lvseg_search.search import run_search

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "prepared" / "manifest.json").is_file():
        synth(out / "phantom", args.patients, seed=args.seed, size=args.size, progress=False,
              overwrite=True)
        prepare(out / "phantom", out / "prepared", progress=False)
    start = time.perf_counter()
    run_search(out / "prepared", out / "search", "quick", seed=args.seed, folds=3,
               test_patients=args.test_patients, max_epochs=args.max_epochs,
               min_epochs=args.min_epochs, factor=args.factor, finalists=args.finalists,
               final_epochs=args.final_epochs, image_size=64, verbose=False)
    print(f"search: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    if args.search_only:
        return

    from lvseg_search.engine.run import load_run
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.model.formats import saved_model_runner, tflite_runner

    run = load_run(out / "search")
    probe = load_patient_images(run.data, run.splits["test"][:1])[0]
    image = probe.images[:1]
    spacing = probe.spacing_mm[:1].astype("float32")
    rows = {}
    for name, options in EXPORTS.items():
        card_path = out / name / "model_card.json"
        if not card_path.is_file():
            start = time.perf_counter()
            export(out / "search", out / name, onnx=False, verbose=False, overwrite=True,
                   **options)
            print(f"{name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
        card = json.loads(card_path.read_text())
        training = card["training"]
        rows[name] = {
            "test_dice": card["test"]["dice"], "apd_mm": card["test"]["apd_mm"],
            "good_pct": card["test"]["good_contours_pct"],
            "networks": training.get("models", 1),
            "members": [m["trial"] for m in training.get("members", [])],
            "savedmodel_ms": None, "tflite_ms": None}
        if not args.no_latency:
            rows[name]["savedmodel_ms"] = median_ms(
                saved_model_runner(out / name / "saved_model"), image, spacing, args.repeats)
            rows[name]["tflite_ms"] = median_ms(
                tflite_runner(out / name / "model.tflite"), image, spacing, args.repeats)
    ensemble = json.loads((out / "ensemble_folds" / "model_card.json").read_text())[
        "finalist_ensemble"]
    lines = [f"phantom: {args.patients} patients ({args.test_patients} held out), seed "
             f"{args.seed}; out-of-fold CV Dice: ensemble "
             f"{ensemble['ensemble']['cv_dice']:.4f}, best finalist "
             f"{ensemble['single']['cv_dice']:.4f}", "",
             "| export | networks | test Dice | APD mm | good % | SavedModel ms | TFLite ms |",
             "|---|---|---|---|---|---|---|"]

    def ms(value):
        return "-" if value is None else f"{value:.0f}"

    for name, r in rows.items():
        lines.append(f"| {name} | {r['networks']} | {r['test_dice']:.4f} | {r['apd_mm']:.2f} "
                     f"| {r['good_pct']:.0f} | {ms(r['savedmodel_ms'])} | "
                     f"{ms(r['tflite_ms'])} |")
    text = "\n".join(lines)
    (out / "ensemble_members.md").write_text(text + "\n")
    (out / "ensemble_members.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
