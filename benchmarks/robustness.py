"""Robustness to other scanners' pixel sizes and matrices, from a finished search.

For the best trial's fold models, each held-out (validation) patient's mean per-image
Dice on the masks as delivered: at its native grid, with the image resampled so that
the anatomy looks x0.6, x0.75, x1.5 and x2 larger on the same matrix (what another
scanner's pixel size gives; the model is told the new spacing), and cut to a
non-square matrix (256 x 200 from 256 x 256, same spacing), and translated so that the
LV's centre lies 20 and 40 mm from the image centre (a heart off the centre of the
image, as planners often leave it). Each condition is run with the network's field of
view cut around the image centre (``roi = centre``) and cut around the patient's LV
(``localized``: the median of the LV centres that a first pass of the same model finds
in the patient's images, as ``predict`` does for a study). Every image of a patient is
moved the same way: the offset of the mean expert LV centre of its images
(``--per-image``: each image's LV found on its own instead). ``--tta`` and
``--convex-hull`` score the test-time augmentation and post-processing that ``export``
chose for the run (its model card's ``postprocessing``), so that the figures are those of
the model a user deploys; by default, the search's own setting (neither).

The test images are made with SciPy (``ndimage.affine_transform``), apart from the
package's own resampling: images bilinear, after a Gaussian prefilter when the anatomy
shrinks (a coarser acquisition); masks as one-hot maps, then arg-max.

    python benchmarks/robustness.py results/real [--scales 0.6 0.75 1.5 2] [--shifts 20 40]
        [--tta none|flips|dihedral] [--convex-hull] [--per-image]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def rescale(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask zoomed by ``factor`` about the image centre, same matrix.

    An output pixel ``p`` samples the input at ``c + (p - c) / factor`` (pixel-centre
    coordinates, ``c`` the centre); outside the input is 0 (air) and background.
    """
    shape = np.array(image.shape, dtype=np.float64)
    centre = shape / 2 - 0.5
    matrix = np.full(2, 1.0 / factor)
    offset = centre - centre / factor
    source = image.astype(np.float64)
    if factor < 1:  # a coarser acquisition: blur to the new pixel size first
        source = ndimage.gaussian_filter(source, 0.5 * np.sqrt(1 / factor ** 2 - 1))
    out = ndimage.affine_transform(source, matrix, offset, order=1, mode="constant", cval=0.0)
    classes = int(mask.max()) + 1
    onehot = [ndimage.affine_transform((mask == c).astype(np.float64), matrix, offset, order=1,
                                       mode="constant", cval=1.0 if c == 0 else 0.0)
              for c in range(classes)]
    return (np.clip(np.round(out), np.iinfo(np.int16).min, np.iinfo(np.int16).max)
            .astype(np.int16), np.argmax(np.stack(onehot), axis=0).astype(np.uint8))


def patient_move_mm(masks, spacing, distance_mm: float) -> np.ndarray:
    """The one translation (row, column mm) of all a patient's images that puts the mean
    of their expert LV centres ``distance_mm`` from the image centre, further along the
    way it already lies from it (along the diagonal when it sits at the centre): a heart
    off the centre of the image lies off it in every image of the study."""
    away = np.mean([(np.array(ndimage.center_of_mass(m == 1))
                     - (np.array(m.shape, dtype=np.float64) / 2 - 0.5)) * sp
                    for m, sp in zip(masks, spacing, strict=True)], axis=0)
    norm = np.linalg.norm(away)
    direction = away / norm if norm > 1e-6 else np.array([1.0, 1.0]) / np.sqrt(2)
    return direction * distance_mm - away


def shift_lv(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray,
             move_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask translated by ``move_mm`` (row, column); outside the input is 0
    and background."""
    move = np.asarray(move_mm) / spacing  # pixels
    out = ndimage.shift(image.astype(np.float64), move, order=1, mode="constant", cval=0.0)
    classes = int(mask.max()) + 1
    onehot = [ndimage.shift((mask == c).astype(np.float64), move, order=1, mode="constant",
                            cval=1.0 if c == 0 else 0.0) for c in range(classes)]
    return (np.round(out).astype(np.int16),
            np.argmax(np.stack(onehot), axis=0).astype(np.uint8))


def crop_columns(image: np.ndarray, width: int) -> np.ndarray:
    """The central ``width`` columns."""
    start = (image.shape[1] - width) // 2
    return image[:, start:start + width]


def conditions(scales: list[float], crop: tuple[int, int], shifts: list[float] = ()):
    """(name, function of a patient's images, masks and spacings -> its changed
    (image, mask, spacing) triples) per condition."""

    def per_image(change):
        return lambda ims, ms, sps: [change(im, m, sp)
                                     for im, m, sp in zip(ims, ms, sps, strict=True)]

    out = [("native", per_image(lambda im, m, sp: (im, m, sp)))]
    for f in scales:
        out.append((f"anatomy x{f:g}",
                    per_image(lambda im, m, sp, f=f: (*rescale(im, m, f), sp / f))))
    rows, cols = crop

    def cropped(im, m, sp):
        if im.shape[0] < rows or im.shape[1] < cols:
            return im, m, sp
        r0 = (im.shape[0] - rows) // 2
        return (crop_columns(im[r0:r0 + rows], cols), crop_columns(m[r0:r0 + rows], cols), sp)

    out.append((f"{rows} x {cols} crop", per_image(cropped)))

    def shifted(ims, ms, sps, d):
        move = patient_move_mm(ms, sps, d)
        return [(*shift_lv(im, m, sp, move), sp) for im, m, sp in zip(ims, ms, sps, strict=True)]

    for d in shifts:
        out.append((f"LV {d:g} mm off centre",
                    lambda ims, ms, sps, d=d: shifted(ims, ms, sps, d)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished search (real subset)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.6, 0.75, 1.5, 2.0])
    parser.add_argument("--crop", type=int, nargs=2, default=[256, 200], metavar=("ROWS", "COLS"))
    parser.add_argument("--shifts", type=float, nargs="*", default=[20.0, 40.0],
                        help="distances (mm) of the LV centre from the image centre")
    parser.add_argument("--roi", nargs="+", default=["centre", "localized"],
                        choices=["centre", "localized"])
    parser.add_argument("--trial", help="trial id (default: the best)")
    parser.add_argument("--tta", default="none", choices=["none", "flips", "dihedral"],
                        help="test-time augmentation (as export's --tta)")
    parser.add_argument("--convex-hull", action="store_true",
                        help="fill each largest region to its convex hull (as export's)")
    parser.add_argument("--per-image", action="store_true",
                        help="localized: find the LV in each image on its own (as the "
                             "serving_default signature called directly does), not once "
                             "per patient (as predict does)")
    args = parser.parse_args()

    from lvseg_search.engine.run import best_trial, find_trial, load_run
    from lvseg_search.evaluate.measures import dice
    from lvseg_search.evaluate.scoring import load_patient_images, segment
    from lvseg_search.model.postprocess import fill_convex_hulls
    from lvseg_search.model.serving import make_predictor

    start = time.perf_counter()
    run = load_run(args.run)
    o = run.options
    trial = find_trial(run, args.trial) if args.trial else best_trial(run)
    tests = conditions(args.scales, tuple(args.crop), args.shifts)
    rois = args.roi if o.spacing_mm else ["centre"]
    scores = {(roi, name): {} for roi in rois for name, _ in tests}
    for k in range(run.n_folds):
        network = run.fold_network(trial.trial_id, k)
        predictors = {roi: make_predictor([network], o.image_size, o.normalization,
                                          o.spacing_mm or None, tta=args.tta, roi=roi)
                      for roi in rois}
        for patient in load_patient_images(run.data, run.splits["folds"][k]["val"]):
            for name, change in tests:
                changed = change(patient.images, patient.masks, patient.spacing_mm)
                images = [c[0] for c in changed]
                spacing = [c[2] for c in changed]
                for roi, predict in predictors.items():
                    _, pred = segment(predict, images, spacing,
                                      study_roi=roi == "localized" and not args.per_image)
                    if args.convex_hull:
                        pred = fill_convex_hulls(pred)
                    scores[roi, name][patient.patient_id] = [
                        dice(p.astype(bool), c[1] == 1)
                        for p, c in zip(pred, changed, strict=True)]
    patients = list(next(iter(scores.values())))
    print(f"\n{run.path.name}: trial {trial.trial_id}, network input {o.grid_text()}, "
          f"tta {args.tta}, convex hull {'yes' if args.convex_hull else 'no'}, localized "
          f"per {'image' if args.per_image else 'patient'}")
    print("mean per-image Dice of each held-out patient (its fold's model), delivered masks")
    for roi in rois:
        print(f"\nroi = {roi}")
        print(f"{'condition':>20} {'mean':>6} {'vs native':>9}  "
              + "  ".join(f"{p:>10}" for p in patients))
        native = np.mean([np.mean(v) for v in scores[roi, "native"].values()])
        for name, _ in tests:
            per = [np.mean(scores[roi, name][p]) for p in patients]
            mean = float(np.mean(per))
            print(f"{name:>20} {mean:6.3f} {mean - native:+9.3f}  "
                  + "  ".join(f"{v:10.3f}" for v in per))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
