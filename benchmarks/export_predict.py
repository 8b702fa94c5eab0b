"""Exported-model figures on the real Sunnybrook subset, from a finished search:
parity of every format with the Keras model, single-image latency (median ms, one CPU
thread) for the SavedModel, TFLite and ``model.predict``, and the ejection fraction of
SCD0000101 (predicted on its whole short-axis stack, and from the expert contours).

    lvseg-search prepare ../shared/data/sunnybrook-subset --out DATA
    lvseg-search search --data DATA --space quick --out results/real --folds 3
    python benchmarks/export_predict.py results/real [--model MODEL_DIR] [--repeats 100]
        [--deliver auto|single|ensemble] [--members retrained|folds]

With ``--deliver ensemble`` on a search with finalists, the figures are the finalists'
ensemble's (its members retrained, or with ``--members folds`` every member's fold
models, in one graph); run it with ``single`` too to put them side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-subset"
STUDY = "SCD0000101"


def median_ms(fn, inputs: tuple, repeats: int) -> float:
    for _ in range(5):  # warm-up: first calls trace, allocate and pick kernels
        fn(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def manual_ef(data_dir: Path) -> dict:
    """EDV, ESV and EF of SCD0000101 from its expert contours (contoured slices only)."""
    from lvseg_search.data.dicom_io import normal_position_mm
    from lvseg_search.data.manifest import open_data
    from lvseg_search.data.shards import read_shard
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.evaluate.volumes import stack_volumes

    [patient] = load_patient_images(open_data(data_dir), [STUDY])
    records = read_shard(data_dir / f"{STUDY}.tfrecord")
    positions = [normal_position_mm(r["slice_position_mm"], r["image_orientation"])
                 for r in records]
    rows = [{"slice_index": int(s), "phase_index": int(p),
             "area_mm2": float((m == 1).sum() * sp[0] * sp[1])}
            for s, p, m, sp in zip(patient.slice_index, patient.phase_index, patient.masks,
                                   patient.spacing_mm, strict=True)]
    return stack_volumes(rows, positions)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished search on the real subset")
    parser.add_argument("--model", type=Path, help="an exported model (default: export now)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Sunnybrook subset")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--deliver", default="auto", choices=("auto", "single", "ensemble"),
                        help="export's --deliver (without --model)")
    parser.add_argument("--members", default=None, choices=("retrained", "folds"),
                        help="export's --members (with --deliver ensemble)")
    args = parser.parse_args()

    import tensorflow as tf

    # One CPU thread for every runtime, as on a small deployment box.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from lvseg_search.data.dicom_io import read_image
    from lvseg_search.engine.run import load_run
    from lvseg_search.export import export
    from lvseg_search.model.formats import saved_model_runner, tflite_runner, write_formats
    from lvseg_search.predict import predict

    tmp = Path(tempfile.mkdtemp(prefix="lvseg-bench-"))
    model_dir = args.model
    if model_dir is None:
        model_dir = tmp / "model"
        export(args.run, model_dir, deliver=args.deliver, members=args.members)
    card = json.loads((model_dir / "model_card.json").read_text())
    training = card["training"]
    print(f"\ndelivered: {training['mode']}"
          + (", " + ", ".join(f"trial {m['trial']} x {m['weight']:.3f}"
                              for m in training["members"])
             + f" ({training['models']} networks: "
             f"{training.get('members_from', 'folds')})" if "members" in training else ""))
    print("\nparity with the Keras model (max |probability difference|, mask pixels differing):")
    for name, r in card["parity_max_abs_diff"].items():
        print(f"  {name:12s} {r['max_abs_diff']:.2e}  {r['mask_mismatch_pixels']}")
    if card.get("test"):
        t = card["test"]
        print(f"held-out test patients: Dice {t['dice']:.3f}, APD {t['apd_mm']:.2f} mm, "
              f"Hausdorff {t['hausdorff_mm']:.2f} mm, good contours {t['good_contours_pct']:.0f}%")

    dicom = read_image(args.data / "dicoms" / STUDY / "1.dcm")
    image = dicom.pixels[None]
    spacing = np.asarray([dicom.pixel_spacing_mm], np.float32)
    inputs = {"raw": image, "pixel_spacing_mm": spacing}
    serve = saved_model_runner(model_dir / "saved_model")
    lite = tflite_runner(model_dir / "model.tflite")
    import lvseg_search.model.serving  # noqa: F401 - registers the layers the file names

    model = keras.models.load_model(model_dir / "model.keras", safe_mode=True)
    h, w = image.shape[1:]
    print(f"\nsingle-image latency, {h}x{w} int16 in, 1 CPU thread, median of {args.repeats}:")
    runs = [("SavedModel", serve, (image, spacing)), ("TFLite", lite, (image, spacing)),
            ("model.predict", lambda x: model.predict(x, verbose=0), (inputs,)),
            ("Keras call", lambda x: model(x), (inputs,))]
    if serve.at_centre:  # the signature predict segments a localized study through
        centre = np.zeros((1, 2), np.float32)
        runs += [("SavedModel, serve_at_centre", serve, (image, spacing, centre)),
                 ("TFLite, serve_at_centre", lite, (image, spacing, centre))]
    for name, fn, given in runs:
        print(f"  {name:28s} {median_ms(fn, given, args.repeats):8.2f} ms")

    print(f"\nejection fraction of {STUDY}:")
    start = time.perf_counter()
    studies = predict(model_dir, args.data / "dicoms" / STUDY, tmp / "pred", overlays=False,
                      verbose=False)
    seconds = time.perf_counter() - start
    s = studies[STUDY]
    print(f"  ({s['images']} images predicted in {seconds:.1f} s, field of view "
          f"{card['postprocessing']['roi']}"
          + (", found once per study" if card["postprocessing"]["roi"] == "localized" else "")
          + ")")
    print(f"  predicted by the exported model, whole stack ({s['slices']} slices x "
          f"{s['phases']} phases, "
          f"{s['slice_spacing_mm']:.2f} mm apart): EDV {s['edv_ml']:.1f} ml, ESV "
          f"{s['esv_ml']:.1f} ml, EF {100 * s['ejection_fraction']:.1f}%")
    run = load_run(args.run)
    if run.splits["test"] != [STUDY]:
        # The exported model trained on SCD0000101 unless it was held out; the fold model
        # that validated on it never saw it, so it gives the honest estimate.
        from lvseg_search.engine.run import best_trial
        from lvseg_search.model.serving import build_serving_model

        trial = best_trial(run)
        k = next(i for i, f in enumerate(run.splits["folds"]) if STUDY in f["val"])
        o = run.options
        # With the exported model's settings, through the same files predict reads.
        post = card["postprocessing"]
        settings = {key: post[key] for key in ("roi", "tta", "largest_region", "convex_hull")}
        network = [run.fold_network(trial.trial_id, k)]
        fold_model = build_serving_model(network, o.image_size, o.normalization,
                                         o.spacing_mm or None, **settings)
        at_centre = (build_serving_model(network, o.image_size, o.normalization,
                                         o.spacing_mm, **settings, at_centre=True)
                     if o.spacing_mm else None)
        held_out = tmp / "fold_model"
        held_out.mkdir()
        write_formats(fold_model, held_out, onnx=False, at_centre=at_centre)
        (held_out / "model_card.json").write_text(json.dumps({"postprocessing": post}))
        s = predict(held_out, args.data / "dicoms" / STUDY, tmp / "pred_fold", overlays=False,
                    verbose=False)[STUDY]
        print(f"  predicted by trial {trial.trial_id}'s fold {k} model (never saw {STUDY}): "
              f"EDV {s['edv_ml']:.1f} ml, ESV {s['esv_ml']:.1f} ml, "
              f"EF {100 * s['ejection_fraction']:.1f}%")
    manual = manual_ef(run.data_dir)
    print(f"  expert contours ({manual['slices']} contoured slices x {manual['phases']} phases): "
          f"EDV {manual['edv_ml']:.1f} ml, ESV {manual['esv_ml']:.1f} ml, "
          f"EF {100 * manual['ejection_fraction']:.1f}%")
    print(f"\nmodel: {model_dir}; predictions: {tmp / 'pred'}")


if __name__ == "__main__":
    main()
