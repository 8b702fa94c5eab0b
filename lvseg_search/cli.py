"""The ``lvseg-search`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lvseg_search import __version__
from lvseg_search._tf import exit_without_teardown
from lvseg_search.errors import (
    Stopped,
    UserError,
    disk_full_message,
    is_disk_full,
    stop_on_signals,
)

# model.tta.TTA_MODES, spelled out: importing it would load Keras for every command.
TTA_CHOICES = ("none", "flips", "dihedral")

log = logging.getLogger("lvseg_search")


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line and exit code 2, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return n


def _seed(value: str) -> int:
    # numpy, scikit-learn and keras-tuner take seeds of 0 to 2**32 - 1.
    n = int(value)
    if not 0 <= n < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {2**32 - 2}")
    return n


def _cmd_prepare(args: argparse.Namespace) -> int:
    from lvseg_search.prepare import prepare

    m = prepare(args.input, args.out, layout=args.layout, images=args.images,
                myocardium=args.myocardium, pseudonymize=args.pseudonymize,
                salt=args.salt or os.environ.get("LVSEG_SALT"),
                allow_mixed_sizes=args.allow_mixed_sizes,
                accept_image_level_split=args.accept_image_level_split,
                skip_bad_contours=args.skip_bad_contours, classes=args.classes,
                overwrite=args.overwrite, progress=not args.quiet)
    print(f"prepared {m['n_patients']} patients, {m['n_slices']} labelled slices "
          f"({m['source_layout']} layout) -> {args.out}")
    for p in m["patients"]:
        print(f"  {p['patient_id']}: {p['slices']} slices"
              + (f", {p['unlabelled_images_skipped']} unlabelled images skipped"
                 if p["unlabelled_images_skipped"] else "")
              + (f", {p['partially_labelled_slices']} with the blood pool only (no "
                 "o-contour)" if p.get("partially_labelled_slices") else "")
              + (f", {p['bad_contour_frames_skipped']} left out for bad contours"
                 if p.get("bad_contour_frames_skipped") else ""))
    if m["leakage_prone"]:
        print("warning: no patient ids in this data; any split is image-level and its "
              "scores are leakage-prone")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from lvseg_search.data.phantom import synth

    ids = synth(args.out, args.patients, seed=args.seed, size=args.size, phases=args.phases,
                overwrite=args.overwrite, progress=not args.quiet, o_contours=args.o_contours,
                format=args.format)
    layout = {"linkcsv": "link.csv", "nifti": "ACDC NIfTI", "nnunet": "nnU-Net"}[args.format]
    print(f"wrote a {len(ids)}-patient phantom ({layout} layout) -> {args.out}")
    return 0


def _stratify(args: argparse.Namespace) -> str | None:
    """``--stratify``, where ``--groups FILE`` alone means ``group``."""
    if args.groups is not None and args.stratify == "slices":
        raise UserError("--groups: a groups file stratifies by group; drop --stratify slices")
    return "group" if args.groups is not None else args.stratify


def _cmd_split(args: argparse.Namespace) -> int:
    from lvseg_search.data import manifest, splits
    from lvseg_search.data.groups import patient_groups

    data = manifest.open_data(args.data)
    groups = (patient_groups(data, args.groups, args.group_column or "group")
              if _stratify(args) == "group" else None)
    test_ids = [s for s in args.test_ids.split(",") if s] if args.test_ids else None
    result = splits.make_splits(data.slice_counts, args.folds,
                                test_patients=args.test_patients, test_ids=test_ids,
                                seed=args.seed, test_seed=args.test_seed or 0, groups=groups)
    out = args.out or Path(args.data) / splits.FILENAME
    splits.save(out, result)
    print(f"{len(result['folds'])} patient-grouped folds (balanced by "
          f"{'group, then slices' if groups else 'slices'}), {len(result['test'])} test "
          f"patient(s) -> {out}")
    print(splits.format_balance(result))
    for k, fold in enumerate(result["folds"]):
        print(f"  fold {k}: val {', '.join(fold['val'])}")
    if result["test"]:
        print(f"  test: {', '.join(result['test'])} (--test-seed {result['test_seed']})")
    return 0


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-seed", type=_seed, metavar="SEED",
                   help="seed of the held-out test draw, apart from --seed so that the "
                        "test set stays put across seeds (default 0)")
    p.add_argument("--stratify", choices=["slices", "group"],
                   help="balance folds by slices (default) or by patient group, then "
                        "slices: the Sunnybrook cohort of each case id, or --groups")
    p.add_argument("--groups", type=Path, metavar="FILE",
                   help="CSV with columns patient_id and group (implies --stratify group)")
    p.add_argument("--group-column", metavar="NAME",
                   help="the group's column in --groups (default group)")


def _cmd_search(args: argparse.Namespace) -> int:
    from lvseg_search.engine.options import given_options
    from lvseg_search.search import run_search

    # The search's options by their schema's names (engine.options): a new option needs
    # its flag below and its field there, nothing here.
    given = given_options({**vars(args), "stratify": _stratify(args)})
    run_search(args.data, args.out, args.space, overwrite=args.overwrite,
               splits_file=args.splits, verbose=not args.quiet, chief=args.chief,
               worker=args.worker, tuner_id=args.tuner_id, gpu=args.gpu,
               strategy=args.strategy, connect_timeout=args.connect_timeout,
               worker_timeout=args.worker_timeout,
               recycle_every=args.recycle_every or None, **given)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lvseg_search.demo import run_demo

    return run_demo(args.out, seed=args.seed, overwrite=args.overwrite)


def _cmd_report(args: argparse.Namespace) -> int:
    from lvseg_search.report import write_report

    write_report(args.run, args.out, overlays=not args.no_overlays, data=args.data)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lvseg_search.export import export

    export(args.run, args.out, ensemble=args.ensemble, epochs=args.epochs,
           trial_id=args.trial, onnx=not args.no_onnx, tflite=not args.no_tflite,
           overwrite=args.overwrite,
           data=args.data, tta=args.tta,
           largest_region=False if args.no_largest_region else None, roi=args.roi,
           convex_hull=args.convex_hull, deliver=args.deliver, max_members=args.max_members,
           members=args.members)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from lvseg_search.predict import predict

    predict(args.model, args.dicom, args.out, overlays=not args.no_overlays,
            overwrite=args.overwrite, pixel_spacing=args.pixel_spacing,
            outputs=args.outputs, pseudonymize=args.pseudonymize,
            salt=args.salt or os.environ.get("LVSEG_SALT"))
    return 0


MOVED_DATA = ("the prepared data folder, if it moved since the search (default: where "
              "the search read it)")


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with all sub-commands."""
    parser = _Parser(prog="lvseg-search", description=(
        "Find the best left-ventricle segmentation network for cardiac MRI: prepare "
        "DICOM + contours, split patients, run a cross-validated Hyperband search. "
        "Start with 'lvseg-search demo'."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prepare", help="DICOM + contours -> per-patient TFRecord shards")
    p.add_argument("input", type=Path, help="data folder (or a lab .tfrecords file)")
    p.add_argument("--out", type=Path, required=True, help="output data folder")
    p.add_argument("--layout", choices=["linkcsv", "challenge", "lab", "acdc", "nnunet"],
                   help="input layout (default: detected)")
    p.add_argument("--classes", metavar="lv=ID,myo=ID",
                   help="NIfTI data sets: the label values of the LV blood pool and the "
                        "myocardium (default: from the labels' names)")
    p.add_argument("--images", type=Path,
                   help="images root of the 2009 challenge layout (default: INPUT)")
    p.add_argument("--myocardium", action="store_true",
                   help="add class 2 (myocardium) from o-contours; a frame with an "
                        "i-contour only keeps its blood pool, the rest of it unlabelled")
    p.add_argument("--skip-bad-contours", action="store_true",
                   help="leave out (and count) frames whose o-contour lies inside or "
                        "crosses the i-contour, instead of stopping")
    p.add_argument("--pseudonymize", action="store_true",
                   help="replace patient ids by salted hashes")
    p.add_argument("--salt", help="salt for --pseudonymize (or $LVSEG_SALT; default random)")
    p.add_argument("--allow-mixed-sizes", action="store_true",
                   help="accept images of different sizes (the physical grid takes any; "
                        "with --spacing none, search resizes them to --image-size)")
    p.add_argument("--accept-image-level-split", action="store_true",
                   help="accept lab TFRecords without patient ids (leakage-prone)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("synth", help="write a synthetic cardiac MRI phantom (DICOM + contours)")
    p.add_argument("--patients", type=_positive, default=6)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--size", type=int, default=256, help="image rows and columns")
    p.add_argument("--phases", type=int, default=2, help="cardiac phases per slice (>= 2)")
    p.add_argument("--format", choices=["linkcsv", "nifti", "nnunet"], default="linkcsv",
                   help="DICOM with Sunnybrook contours (default), or NIfTI volumes with "
                        "label maps in ACDC's layout, or in nnU-Net's")
    p.add_argument("--o-contours", choices=["all", "ed"], default="all",
                   help="o-contours (epicardium) on every frame, or at end-diastole only "
                        "as the Sunnybrook experts mostly drew them (default all)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("split", help="patient-grouped K-fold splits -> splits.json")
    p.add_argument("data", type=Path, help="prepared data folder")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--test-patients", type=int, default=0,
                   help="hold out this many random patients for the final test")
    p.add_argument("--test-ids", help="comma-separated patient ids to hold out instead")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the fold assignment")
    _split_options(p)
    p.add_argument("--out", type=Path, help="splits file (default: DATA/splits.json)")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("search", help="cross-validated Hyperband search over a space")
    p.add_argument("--data", type=Path,
                   help="prepared data folder (workers: default from the run folder)")
    p.add_argument("--space", default="quick",
                   help="search space: quick, default, lab or a .toml file (default quick)")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. results/NAME")
    p.add_argument("--folds", type=int, help="cross-validation folds (space default or 3)")
    p.add_argument("--test-patients", type=int, default=0,
                   help="hold out this many random patients; they never enter the search")
    p.add_argument("--test-ids", help="comma-separated patient ids to hold out instead")
    _split_options(p)
    p.add_argument("--splits", type=Path, help="use this splits.json instead")
    p.add_argument("--oracle", choices=["hyperband", "random", "bayesian", "fixed"],
                   help="keras-tuner's oracle that samples the trials (default hyperband); "
                        "random and bayesian train every trial --max-epochs epochs, "
                        "--max-trials trials (default 10); fixed trains the space's "
                        "[default] network only, as a baseline")
    p.add_argument("--include-default", action="store_true", default=None,
                   help="the space's [default] network as the search's first trial (the "
                        "default whenever the space has one); a baseline the search's "
                        "best must beat")
    p.add_argument("--no-default", action="store_true", default=None,
                   help="leave the space's [default] network out of the search")
    p.add_argument("--finalists", type=int, metavar="K",
                   help="after screening, train the top K distinct configurations (and "
                        "the default network) on, with the same folds, to "
                        "--final-epochs (default 3; 0: no final stage); re-run with more "
                        "to extend a search")
    p.add_argument("--final-epochs", type=int,
                   help="the epoch each finalist trains to (default: the space's "
                        "final_epochs, else twice --max-epochs)")
    p.add_argument("--final-from", choices=["screening", "scratch"],
                   help="where a finalist starts: its configuration's longest screening "
                        "trial, continued with the learning rate restarted, or a new "
                        "initialization with one decay to --final-epochs (default: the "
                        "space's final_from, else screening)")
    p.add_argument("--objective", choices=["endo", "epi", "mean"],
                   help="with a myocardium in the data: rank trials by the endocardial "
                        "contour's Dice, the epicardial's, or their mean (default mean)")
    p.add_argument("--max-epochs", type=int,
                   help="epochs of the longest trial (Hyperband's largest budget)")
    p.add_argument("--min-epochs", type=int,
                   help="epochs of Hyperband's shortest trials, its first rung (space "
                        "default, or --max-epochs / --factor**2, rounded down: the three "
                        "least aggressive brackets); brackets whose first rung would be "
                        "shorter are left out")
    p.add_argument("--factor", type=int, help="Hyperband's reduction factor")
    p.add_argument("--iterations", type=int,
                   help="Hyperband iterations; re-run with more to extend a search")
    p.add_argument("--max-trials", type=int,
                   help="stop after this many trials (default: Hyperband's full schedule); "
                   "re-run with more to extend a search")
    p.add_argument("--spacing", metavar="MM|none",
                   help="pixel size of the network's grid, mm (default: the median of the "
                        "training images'); 'none' resizes whole images to --image-size "
                        "whatever their pixel size")
    p.add_argument("--field-of-view", type=float, metavar="MM",
                   help="side of the square field of view cut around each image's centre "
                        "(default: holds every labelled LV of the training data, with a "
                        "margin)")
    p.add_argument("--image-size", type=int,
                   help="the network's SIZE x SIZE input (default: field of view over "
                        "spacing; with --spacing none, the space's or 128)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="training batches per epoch (space default or 0: one pass over "
                        "each fold's training slices); more steps per epoch help small "
                        "data sets")
    p.add_argument("--normalization", choices=["zscore", "minmax", "percentile"])
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--jit", action="store_true", help="compile train steps with XLA")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh instead of resuming the search in --out")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--recycle-every", type=int, default=10, metavar="N",
                   help="run trials in a fresh process every N trials, which keeps memory "
                        "flat (default 10; 0: one process)")
    g = p.add_argument_group("distributed search (keras-tuner chief/worker mode)")
    g.add_argument("--chief", metavar="HOST:PORT",
                   help="serve the oracle here; workers run the trials (':PORT' = loopback)")
    g.add_argument("--worker", metavar="HOST:PORT", help="take trials from this chief")
    g.add_argument("--tuner-id", help="this worker's id; reuse it to resume its trial")
    g.add_argument("--gpu", help="pin this process to GPU(s), e.g. 0 or 0,1")
    g.add_argument("--strategy", choices=["none", "mirrored"],
                   help="mirrored: train each fold model over all visible GPUs")
    g.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds a worker waits for its chief (default 30)")
    g.add_argument("--worker-timeout", type=float, metavar="S",
                   help="chief: seconds a worker may stay silent (workers beat every second) "
                        "before its trial goes to another worker, keeping its finished "
                        "folds (default 120)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("report", help="rank a search's trials: CSV, Markdown, HTML, HParams")
    p.add_argument("run", type=Path, help="the search's run folder (results/NAME)")
    p.add_argument("--out", type=Path, help="folder for the report files (default: RUN)")
    p.add_argument("--no-overlays", action="store_true",
                   help="skip the contour overlays (they rebuild the best trial's models)")
    p.add_argument("--data", type=Path, help=MOVED_DATA)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="best trial -> SavedModel, .keras, TFLite, model card")
    p.add_argument("run", type=Path, help="the search's run folder (results/NAME)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--ensemble", action="store_true",
                   help="average the trial's fold models instead of retraining")
    p.add_argument("--epochs", type=int,
                   help="retrain for this many epochs (default: the epochs the trial was "
                        "scored at)")
    p.add_argument("--trial", help="export this trial id instead of the best")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX even if tf2onnx is here")
    p.add_argument("--no-tflite", action="store_true",
                   help="skip TFLite (its conversion is the slowest format after ONNX)")
    p.add_argument("--tta", choices=TTA_CHOICES,
                   help="test-time augmentation inside the model (default: the one with "
                        "the best out-of-fold CV Dice)")
    p.add_argument("--roi", choices=("centre", "localized"),
                   help="cut the network's field of view around the image centre or around "
                        "the LV a first pass finds (once per study in predict; default: by "
                        "out-of-fold CV Dice; localized on a tie)")
    p.add_argument("--no-largest-region", action="store_true",
                   help="deliver the arg-max mask as it is (default: keep only the largest "
                        "region when that raises the out-of-fold CV Dice)")
    p.add_argument("--convex-hull", action=argparse.BooleanOptionalAction, default=None,
                   help="fill the largest region to its convex hull, closing the notches "
                        "papillary muscles leave (default: when that raises the "
                        "out-of-fold CV Dice)")
    p.add_argument("--deliver", choices=("auto", "single", "ensemble"), default="auto",
                   help="auto (default): the finalists' out-of-fold ensemble (weighted; "
                        "--members) when it beats the best finalist by more than the "
                        "decision's tie margin, else the best trial retrained; single: "
                        "the best trial; ensemble: the finalists' ensemble")
    p.add_argument("--max-members", type=int, metavar="N",
                   help="at most N distinct finalists in the ensemble, for latency "
                        "(default: as many as the selection picks)")
    p.add_argument("--members", choices=("retrained", "folds"),
                   help="the finalists' ensemble's networks: each member retrained on all "
                        "non-test patients (default, as a single trial is) or each "
                        "member's fold models (the networks its out-of-fold figure "
                        "scored; a fold count times more to run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--data", type=Path, help=MOVED_DATA)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="segment DICOM images: masks, areas, volumes, EF")
    p.add_argument("model", type=Path, help="model folder written by 'lvseg-search export'")
    p.add_argument("dicom", type=Path, metavar="input",
                   help="a DICOM file, or a folder (one study per folder); or a NIfTI stack "
                        "or cine, or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    p.add_argument("--outputs", metavar="LIST",
                   help="which files to write, of masks (.npy), overlays (.png), nifti "
                        "(label maps) and seg (DICOM SEG, from DICOM input): comma-separated "
                        "(default all); the CSV and JSON always")
    p.add_argument("--pseudonymize", action="store_true",
                   help="salted hashes for study names in every output, and for the "
                        "patient's name and id in the DICOM SEG")
    p.add_argument("--salt", help="salt for --pseudonymize (or $LVSEG_SALT; default random)")
    p.add_argument("--pixel-spacing", metavar="R,C",
                   help="pixel size (row, column) in mm for images whose DICOM has no valid "
                        "PixelSpacing (never overrides one that has)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="the whole job on a synthetic phantom")
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 for user errors)."""
    # Ours at INFO; libraries (TensorFlow's asset messages and the like) only warnings.
    logging.basicConfig(level=logging.WARNING, format="lvseg-search: %(message)s")
    log.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            return args.func(args)
    except UserError as exc:
        print(f"lvseg-search: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"lvseg-search: stopped by {exc.name}; "
              + (exc.where or "nothing half-written was left; run the command again"),
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lvseg-search: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        print(f"lvseg-search: error: {_disk_full_line(args)}", file=sys.stderr)
        return 2


def _disk_full_line(args: argparse.Namespace) -> str:
    """A full disk outside the steps that estimate their own needs: the folder written
    to, and what to do."""
    folder = getattr(args, "out", None) or getattr(args, "run", None) or Path.cwd()
    then = ("run the same command to resume" if args.func is _cmd_search
            else "run the command again (nothing half-written was left)")
    return disk_full_message(Path(folder), None, then)


def entry() -> None:
    """The ``lvseg-search`` program: runs :func:`main` and exits with its code, without
    TensorFlow's slow teardown (every output is closed by then)."""
    code = main()
    exit_without_teardown(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
