"""``lvseg-search demo``: the whole job on a synthetic phantom, no download needed:
synth -> prepare -> search -> report -> export -> predict."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lvseg_search.data.phantom import synth
from lvseg_search.export import export
from lvseg_search.predict import predict
from lvseg_search.prepare import prepare
from lvseg_search.report import write_report
from lvseg_search.search import run_search

# Sized to finish in a few minutes on 2 CPU cores (the README gives the time measured):
# Hyperband with max 12 epochs and factor 4 trains 11 networks (5 of them to 12 epochs)
# on each of 3 folds; 2 phases per patient, not 4, halve the search.
# The search as a user runs it (the default network in the race, then a final stage to
# twice the screening's epochs), with one finalist besides the default network to keep
# the demo to a few minutes, and Hyperband's whole schedule (11 trials; the quick space
# caps its own, longer one at 8).
DEMO = {"patients": 10, "phases": 2, "size": 128, "image_size": 64, "folds": 3,
        "test_patients": 2, "max_epochs": 12, "min_epochs": 3, "factor": 4, "finalists": 1,
        "final_epochs": 24, "max_trials": 11, "final_from": "screening"}


def run_demo(out: Path, *, seed: int = 0, overwrite: bool = False) -> int:
    """Runs synth -> prepare -> search (quick space) -> report -> export -> predict into
    ``out``; prints where everything went.

    Args:
        out: Demo folder (``phantom/``, ``data/``, ``search/``, ``model/`` and
            ``predictions/`` go inside).
        seed: Seed of the phantom, splits and search.
        overwrite: Replace the outputs of an earlier demo.

    Returns:
        Exit code 0.
    """
    start = time.perf_counter()
    took: dict[str, float] = {}

    def lap(step: str) -> None:
        took[step] = time.perf_counter() - start - sum(took.values())

    out = Path(out)
    phantom, data, search = out / "phantom", out / "data", out / "search"
    model, predictions = out / "model", out / "predictions"
    synth(phantom, DEMO["patients"], seed=seed, size=DEMO["size"], phases=DEMO["phases"],
          overwrite=overwrite)
    lap("synth")
    print(f"[1/6] synth: {DEMO['patients']}-patient cardiac MRI phantom (DICOM + contours) "
          f"-> {phantom}", flush=True)
    m = prepare(phantom, data, overwrite=overwrite)
    lap("prepare")
    print(f"[2/6] prepare: {m['n_slices']} labelled slices in {m['n_patients']} per-patient "
          f"shards -> {data}", flush=True)
    print("[3/6] search: cross-validated Hyperband over the 'quick' space, its default "
          "network in the race, then the finalists trained longer", flush=True)
    summary = run_search(data, search, "quick", overwrite=overwrite, seed=seed,
                         folds=DEMO["folds"], test_patients=DEMO["test_patients"],
                         max_epochs=DEMO["max_epochs"],
                         min_epochs=min(DEMO["min_epochs"], DEMO["max_epochs"]),
                         factor=DEMO["factor"],
                         finalists=DEMO["finalists"], final_epochs=DEMO["final_epochs"],
                         max_trials=DEMO["max_trials"], final_from=DEMO["final_from"],
                         image_size=DEMO["image_size"])
    lap("search")
    print("\n[4/6] report: ranking, plots, TensorBoard HParams", flush=True)
    write_report(search)
    lap("report")
    print("\n[5/6] export: retrain the best network, check every format", flush=True)
    # ONNX is optional (the onnx extra) and adds nothing the other formats do not show.
    card = export(search, model, onnx=False, overwrite=overwrite)
    lap("export")
    test_ids = json.loads((search / "splits.json").read_text())["test"]
    print(f"\n[6/6] predict: held-out patient {test_ids[0]}, straight from DICOM", flush=True)
    predict(model, phantom / "dicoms" / test_ids[0], predictions, overwrite=overwrite)
    lap("predict")
    best = summary["completed"][0] if summary["completed"] else None
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in took.items()) + ")")
    print(f"  phantom DICOM + contours: {phantom}")
    print(f"  shards + manifest.json:   {data}")
    print(f"  search (splits, trials):  {search}")
    print(f"  report:                   {search / 'report.html'}")
    print(f"  TensorBoard:              tensorboard --logdir {search / 'tensorboard'}")
    print(f"  model + model card:       {model}")
    print(f"  predictions:              {predictions}")
    if best:
        print(f"  best trial {best['trial_id']}: CV Dice {best['score']:.3f} (synthetic data)")
    if card.get("test"):
        print(f"  held-out test patients:   Dice {card['test']['dice']:.3f}")
    return 0
