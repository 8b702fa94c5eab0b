"""The myocardium on real data: what segmenting it costs the blood pool, how well each
contour is found, and the LV mass a model delivers against the experts'.

Prepares the data twice (blood pool only, and ``--myocardium``: frames with an i-contour
only keep their blood pool, the rest unlabelled), runs the README's real-data command
(``--oracle fixed``, 60 epochs of 30 batches) on both with the same seed, and prints the
delivered model's out-of-fold figures as ``export`` decides them (field of view,
test-time augmentation, post-processing per contour): the blood pool's CV Dice of both
runs, and the epicardial contour's, the myocardium's, APD and good contours.

Then the LV mass at end-diastole per patient: from the experts' contours (ring area of
every frame with both contours, times the slice spacing, times 1.05 g/mL), and from the
model on the patient's whole cine study, as ``predict`` computes it (the phase of largest
blood-pool volume), both over every slice the model segments and over the slices the
experts contoured. Each patient is predicted by the fold model that never trained on it
(out of fold, with the exported setting), and by the exported model, which trained on
every patient (in-sample: an upper bound, not an estimate).

    python benchmarks/myocardium.py --out DIR [--input RAW] [--seed 0]
        [--epochs 60] [--steps-per-epoch 30] [--batch-size 4] [--folds 3]

With ``--phantom`` it checks the LV mass against a known one instead: a 10-patient
phantom (256 x 256, o-contours at end-diastole only) with 3 held-out test patients,
searched with the same fixed command, exported (the fold models averaged), and each
test patient's study predicted by ``predict``; its LV mass at end-diastole next to the
phantom's own (``truth.json``, from the contour polygons).

    python benchmarks/myocardium.py --phantom --out DIR [--seed 0] [--epochs 60]

An interrupted run resumes (each search in its own folder under DIR).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "sunnybrook-subset"


def _prepare(raw: Path, out: Path, myocardium: bool) -> None:
    from lvseg_search.prepare import prepare

    if not (out / "manifest.json").is_file():
        prepare(raw, out, myocardium=myocardium, progress=False)


def _search(args: argparse.Namespace, data: Path, out: Path) -> float:
    """Runs the fixed command (resuming) and returns its wall time, s."""
    wall = out / "wall_seconds.txt"
    if wall.is_file() and (out / "search.json").is_file():
        return float(wall.read_text())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lvseg_search", "search", "--data", str(data),
                    "--space", "quick", "--oracle", "fixed", "--out", str(out),
                    "--folds", str(args.folds), "--max-epochs", str(args.epochs),
                    "--batch-size", str(args.batch_size),
                    "--steps-per-epoch", str(args.steps_per_epoch), "--seed", str(args.seed),
                    "--quiet"], check=True)
    seconds = time.perf_counter() - start
    wall.write_text(f"{seconds:.1f}\n")
    return seconds


def _decided(run) -> dict:
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.engine.run import best_trial
    from lvseg_search.evaluate.decision import choose

    trial = best_trial(run)
    return {"trial": trial.trial_id, **choose(out_of_fold_decisions(run, trial.trial_id))}


def _mass_of(patient, ignore: int) -> tuple[float, set[int]]:
    """The experts' myocardial area (mm^2) summed over every frame with both contours,
    and the slices they contoured there."""
    full = [i for i, m in enumerate(patient.masks) if not (m == ignore).any()]
    ring = sum(float((patient.masks[i] == 2).sum()) * float(np.prod(patient.spacing_mm[i]))
               for i in full)
    return ring, {int(patient.slice_index[i]) for i in full}


def _study_mass(serve, dicom_dir: Path, decision: dict, slices: set[int] | None) -> dict:
    """LV mass at end-diastole of a whole cine study, as ``predict`` computes it."""
    from lvseg_search.classes import MYOCARDIAL_DENSITY_G_PER_ML, Classes
    from lvseg_search.data.dicom_io import read_image
    from lvseg_search.data.ingest import index_frames
    from lvseg_search.evaluate.scoring import segment
    from lvseg_search.evaluate.volumes import stack_volumes

    files = sorted(dicom_dir.glob("*.dcm"), key=lambda p: int(p.stem))
    images = [read_image(f) for f in files]
    classes = Classes(("background", "lv_blood_pool", "myocardium"), myocardium=2)
    _, masks = segment(serve, [im.pixels for im in images],
                       [im.pixel_spacing_mm for im in images], 16,
                       decision["largest_region"], decision["roi"] == "localized", classes)
    indices = index_frames(images).indices
    rows = []
    for im, mask, (s, ph) in zip(images, masks, indices, strict=True):
        area = float(np.prod(im.pixel_spacing_mm))
        rows.append({"slice_index": s, "phase_index": ph,
                     "area_mm2": float((mask == 1).sum()) * area,
                     "myo_area_mm2": float((mask == 2).sum()) * area})
    positions = [im.normal_position_mm for im in images]
    _, summary = stack_volumes(rows, positions)
    out = {"ed_phase": summary.get("ed_phase"), "mass_g": summary.get("lv_mass_ed_g"),
           "ef": summary.get("ejection_fraction")}
    if slices is not None and summary.get("ed_phase") is not None:
        spacing = summary["slice_spacing_mm"]
        ring = sum(r["myo_area_mm2"] for r in rows
                   if r["phase_index"] == summary["ed_phase"] and r["slice_index"] in slices)
        out["mass_contoured_slices_g"] = ring * spacing / 1000 * MYOCARDIAL_DENSITY_G_PER_ML
    return out


def phantom_mass(args: argparse.Namespace) -> None:
    """The LV mass of held-out phantom patients, predicted against the known mass."""
    from lvseg_search.data.phantom import TRUTH, synth
    from lvseg_search.predict import predict

    phantom = args.out / "phantom"
    if not (phantom / TRUTH).is_file():
        synth(phantom, 10, seed=args.seed, size=args.phantom_size, phases=2, progress=False,
              o_contours="ed")
    data = args.out / "data"
    _prepare(phantom, data, True)
    run_dir = args.out / "run"
    wall = run_dir / "wall_seconds.txt"
    if not wall.is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lvseg_search", "search", "--data", str(data),
                        "--space", "quick", "--oracle", "fixed", "--out", str(run_dir),
                        "--folds", str(args.folds), "--test-patients", "3",
                        "--max-epochs", str(args.epochs), "--batch-size",
                        str(args.batch_size), "--steps-per-epoch", str(args.steps_per_epoch),
                        "--seed", str(args.seed), "--quiet"], check=True)
        wall.write_text(f"{time.perf_counter() - start:.1f}\n")
    model = args.out / "model"
    if not (model / "model_card.json").is_file():
        subprocess.run([sys.executable, "-m", "lvseg_search", "export", str(run_dir),
                        "--out", str(model), "--ensemble", "--no-onnx"], check=True,
                       stdout=subprocess.DEVNULL)
    card = json.loads((model / "model_card.json").read_text())
    truth = json.loads((phantom / TRUTH).read_text())["patients"]
    test = card["test"]
    print(f"\nphantom, --myocardium (o-contours at end-diastole only), --oracle fixed, "
          f"{args.epochs} epochs of {args.steps_per_epoch} batches, seed {args.seed}; "
          f"held-out test patients {', '.join(test['patients'])}: blood-pool Dice "
          f"{test['endo_dice']:.3f}, epicardial Dice {test['epi_dice']:.3f}, myocardium "
          f"Dice {test['myo_dice']:.3f}")
    print("patient   wall mm  known mass g  predicted g  error    known EF  predicted EF")
    errors = []
    for pid in test["patients"]:
        out = args.out / f"pred_{pid}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        summary = predict(model, phantom / "dicoms" / pid, out, overlays=False,
                          verbose=False)[pid]
        known = truth[pid]
        error = summary["lv_mass_ed_g"] / known["lv_mass_ed_g"] - 1
        errors.append(error)
        known_ef = 1 - known["esv_ml"] / known["edv_ml"]
        print(f"{pid}  {known['wall_mm']:7.1f}  {known['lv_mass_ed_g']:12.1f}  "
              f"{summary['lv_mass_ed_g']:11.1f}  {100 * error:+5.1f}%  {100 * known_ef:7.1f}%"
              f"  {100 * summary['ejection_fraction']:11.1f}%")
    print(f"largest mass error {100 * max(abs(e) for e in errors):.1f}% (target: within 5%)")
    print("the experts' own masks (rasterized contours) at end-diastole, against the known "
          "mass: " + ", ".join(f"{pid} {100 * e:+.1f}%" for pid, e in
                               _rasterized_errors(data, truth, test["patients"]).items()))


def _rasterized_errors(data: Path, truth: dict, patients: list[str]) -> dict[str, float]:
    """How far a perfect segmentation on the pixel grid is from the polygons' mass."""
    from lvseg_search.classes import MYOCARDIAL_DENSITY_G_PER_ML
    from lvseg_search.data.manifest import open_data
    from lvseg_search.data.phantom import SLICE_GAP_MM
    from lvseg_search.evaluate.scoring import load_patient_images

    out = {}
    for p in load_patient_images(open_data(data), patients):
        ed = p.phase_index == 0
        ring = sum(float((m == 2).sum()) for m in p.masks[ed]) * float(p.spacing_mm[0].prod())
        mass = ring * SLICE_GAP_MM / 1000 * MYOCARDIAL_DENSITY_G_PER_ML
        out[p.patient_id] = mass / truth[p.patient_id]["lv_mass_ed_g"] - 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--input", type=Path, default=REAL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--phantom", action="store_true",
                        help="the LV mass of held-out phantom patients against the known")
    parser.add_argument("--phantom-size", type=int, default=256,
                        help="the phantom's image rows and columns (256: 1.3-1.5 mm pixels, "
                             "as a scanner's; 128 doubles them, and a wall of 7 mm is then "
                             "under 3 pixels)")
    args = parser.parse_args()
    if args.phantom:
        args.out.mkdir(parents=True, exist_ok=True)
        phantom_mass(args)
        return

    from lvseg_search.classes import MYOCARDIAL_DENSITY_G_PER_ML
    from lvseg_search.engine.run import load_run
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.model.serving import make_predictor

    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, myocardium in (("blood_pool", False), ("myocardium", True)):
        data = args.out / f"data_{name}"
        _prepare(args.input, data, myocardium)
        seconds = _search(args, data, args.out / f"run_{name}")
        run = load_run(args.out / f"run_{name}")
        runs[name] = (run, _decided(run), seconds)

    print(f"\nreal subset, --oracle fixed, {args.epochs} epochs of {args.steps_per_epoch} "
          f"batches, seed {args.seed}; delivered out-of-fold figures as export decides:")
    print("run         wall    setting                 blood-pool Dice  APD mm  good %   "
          "epi Dice  epi APD mm  epi good %  myo Dice  objective")
    for name, (_, d, seconds) in runs.items():
        setting = (f"{d['roi']}/{d['tta']}/" + ("largest" if d["largest_region"] else "argmax")
                   + ("+hull" if d["convex_hull"] else ""))
        endo = d.get("endo_dice", d["cv_dice"])
        epi = (f"{d['epi_dice']:8.3f}  {d['epi_apd_mm']:10.2f}  "
               f"{d['epi_good_contours_pct']:9.0f}%  {d['myo_dice']:8.3f}  {d['cv_dice']:.3f}"
               if "epi_dice" in d else "       -           -           -         -  "
               f"{d['cv_dice']:.3f}")
        print(f"{name:<11} {seconds / 60:4.1f} m  {setting:<22} {endo:15.3f}  "
              f"{d['apd_mm']:6.2f}  {d['good_contours_pct']:5.0f}%  {epi}")
    gap = runs["myocardium"][1].get("endo_dice", math.nan) - runs["blood_pool"][1]["cv_dice"]
    print(f"blood-pool Dice, myocardium run minus blood-pool run: {gap:+.3f} "
          "(target: no lower than -0.01)")

    run, decision, _ = runs["myocardium"]
    o = run.options
    classes = run.data.classes
    print("\nLV mass at end-diastole, g (1.05 g/mL); model: the patient's whole cine study")
    print("patient      experts  out-of-fold (contoured slices)  exported, in-sample "
          "(contoured slices)")
    results = {}
    for k, fold in enumerate(run.splits["folds"]):
        network = run.fold_network(decision["trial"], k)
        fold_predict = make_predictor([network], o.image_size, o.normalization,
                                      o.spacing_mm or None, tta=decision["tta"],
                                      roi=decision["roi"], classes=classes)
        for patient in load_patient_images(run.data, fold["val"]):
            ring, slices = _mass_of(patient, classes.ignore)
            spacing = run.data.patient(patient.patient_id)["slice_spacing_mm"]
            expert = ring * spacing / 1000 * MYOCARDIAL_DENSITY_G_PER_ML
            oof = _study_mass(fold_predict, args.input / "dicoms" / patient.patient_id,
                              decision, slices)
            results[patient.patient_id] = {"expert_g": expert, "out_of_fold": oof}
    model_dir = args.out / "model_myocardium"
    if not (model_dir / "model_card.json").is_file():
        subprocess.run([sys.executable, "-m", "lvseg_search", "export",
                        str(args.out / "run_myocardium"), "--out", str(model_dir),
                        "--no-onnx"], check=True, stdout=subprocess.DEVNULL)
    from lvseg_search.predict import load_model

    serve = load_model(model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    exported = {"largest_region": card["postprocessing"]["largest_region"],
                "roi": card["postprocessing"]["roi"]}
    for pid, r in sorted(results.items()):
        patient = load_patient_images(run.data, [pid])[0]
        _, slices = _mass_of(patient, classes.ignore)
        r["exported"] = _study_mass(serve, args.input / "dicoms" / pid, exported, slices)
        oof, ex = r["out_of_fold"], r["exported"]
        print(f"{pid}  {r['expert_g']:7.1f}  {oof['mass_g']:7.1f} "
              f"({oof['mass_contoured_slices_g']:6.1f})               "
              f"{ex['mass_g']:7.1f} ({ex['mass_contoured_slices_g']:6.1f})")
    (args.out / "myocardium.json").write_text(json.dumps(
        {"seed": args.seed, "decisions": {k: v[1] for k, v in runs.items()},
         "walls_s": {k: v[2] for k, v in runs.items()}, "mass": results}, indent=2,
        default=float) + "\n")


if __name__ == "__main__":
    main()
