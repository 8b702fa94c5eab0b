"""``lvseg-search export results/NAME --out MODEL_DIR``: the best configuration of a
search as a deployable model.

The best trial is retrained on every non-test patient for as many epochs as it was scored at (or its
fold models are averaged, ``--ensemble``), or, where the search trained finalists and
their out-of-fold ensemble beats the best of them (``engine.finalist_ensemble``), the
ensemble's members, each retrained so (or as its fold models, ``--members folds``), are
averaged with its weights; with the test-time
augmentation and
largest-region post-processing that its out-of-fold predictions favour
(``evaluate.decision``), scored on the held-out test patients, and
written as a SavedModel with a serving signature, a ``.keras`` file, a TFLite model
(unless not asked for) and ONNX (when tf2onnx is installed), each checked against the
Keras model on the same inputs, plus ``model_card.json``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from lvseg_search import atomic
from lvseg_search.engine.disk_space import export_bytes, warn_if_short
from lvseg_search.engine.lock import run_lock
from lvseg_search.engine.model_card import CARD, model_card
from lvseg_search.engine.retrain import retrain
from lvseg_search.engine.run import SEARCH_FILE, Run, best_trial, find_trial, load_run
from lvseg_search.engine.trial_score import last_metrics, scored_epoch
from lvseg_search.errors import UserError, disk_full_reported
from lvseg_search.model.contract import AT_CENTRE
from lvseg_search.model.formats import graph_runner, write_formats
from lvseg_search.model.parity import check_parity, probe_inputs


def export(run_dir: Path, out: Path, *, ensemble: bool = False, epochs: int | None = None,
           trial_id: str | None = None, onnx: bool = True, tflite: bool = True,
           overwrite: bool = False,
           verbose: bool = True, data: Path | None = None, tta: str | None = None,
           largest_region: bool | None = None, roi: str | None = None,
           convex_hull: bool | None = None, deliver: str = "auto",
           max_members: int | None = None, members: str | None = None) -> dict[str, Any]:
    """Exports the best (or a chosen) trial of a search.

    Args:
        run_dir: The search's run folder.
        out: The model folder to write.
        ensemble: Average the trial's fold models instead of retraining.
        epochs: Retrain for this many epochs (default: the epochs the trial was scored at).
        trial_id: Export this trial instead of the best.
        onnx: Also write ONNX when tf2onnx is installed.
        tflite: Also write TFLite.
        overwrite: Replace an existing model folder.
        verbose: Print progress.
        data: The prepared data folder, if it moved since the search.
        tta: Test-time augmentation (``tta.TTA_MODES``); None: the one of the best
            out-of-fold CV Dice.
        largest_region: Keep only each mask's largest region; None: decided by the
            out-of-fold CV Dice.
        roi: Cut the field of view around the image ``centre`` or the ``localized`` LV
            (``contract.ROI_MODES``); None: decided by the out-of-fold CV Dice.
        convex_hull: Fill the largest region to its convex hull; None: decided by the
            out-of-fold CV Dice.
        deliver: ``auto``: the finalists' out-of-fold ensemble when it beats the best
            finalist by more than the decision's tie margin, else the best trial;
            ``single``: the best trial; ``ensemble``: the finalists' ensemble.
        max_members: The finalists' ensemble's distinct members at most (None: any).
        members: How the finalists' ensemble delivers each member: ``retrained``
            (None: the default), one network retrained on every non-test patient, as a
            single trial is; ``folds``, its fold models (the networks the out-of-fold
            selection scored; a fold count times more networks to run). On held-out
            phantom patients both scored alike (docs/benchmarks.md).

    Returns:
        The model card.

    Raises:
        UserError: No completed trial, an unknown trial, a bad option, a data folder not
            found, no finalists' ensemble to deliver, or an exported format that
            disagrees with the Keras model.
    """
    # A folder that holds no search gets no lock file: load_run refuses it below.
    holds_search = (Path(run_dir) / SEARCH_FILE).is_file()
    with (run_lock(run_dir, "export", "export from it", create=False) if holds_search
          else contextlib.nullcontext()):
        return _export(run_dir, out, ensemble=ensemble, epochs=epochs, trial_id=trial_id,
                       onnx=onnx, tflite=tflite, overwrite=overwrite, verbose=verbose,
                       data=data, tta=tta,
                       largest_region=largest_region, roi=roi, convex_hull=convex_hull,
                       deliver=deliver, max_members=max_members, members=members)


DELIVER = ("auto", "single", "ensemble")
MEMBERS = ("retrained", "folds")


def _check_delivery(run: Run, deliver: str, max_members: int | None,
                    members: str | None, explicit: list[str]) -> bool:
    """Whether the finalists' ensemble is a candidate, after checking the options that
    choose it.

    Raises:
        UserError: An unknown ``deliver`` or ``members``, ``max_members`` below 1, an
            ensemble option (``deliver`` ensemble, ``max_members``, ``members``) given
            together with options that choose one trial (``explicit``, ``deliver``
            single), or given for a search without two completed finalists of two
            classes.
    """
    from lvseg_search.engine.finalist_ensemble import MIN_FINALISTS, finalists

    if deliver not in DELIVER:
        raise UserError(f"--deliver: {deliver!r} is not one of {', '.join(DELIVER)}")
    if members is not None and members not in MEMBERS:
        raise UserError(f"--members: {members!r} is not one of {', '.join(MEMBERS)}")
    if max_members is not None and max_members < 1:
        raise UserError(f"--max-members: {max_members} must be at least 1 (1 delivers the "
                        "best finalist alone)")
    for_ensemble = [option for option, given in (
        ("--deliver ensemble", deliver == "ensemble"),
        ("--max-members", max_members is not None),
        (f"--members {members}", members is not None)) if given]
    if for_ensemble and (explicit or deliver == "single"):
        others = " and ".join(explicit or ["--deliver single"])
        raise UserError(f"{for_ensemble[0]}: is for the finalists' ensemble, and "
                        f"{others} export(s) one trial instead; drop one of them")
    if deliver == "single" or explicit:
        return False
    n = len(finalists(run))
    if n >= MIN_FINALISTS and run.data.num_classes <= 2:
        return True
    if for_ensemble:
        option = for_ensemble[0]
        why = (f"{n} completed finalist(s), and an ensemble needs {MIN_FINALISTS}; search "
               "again with --finalists 2 or more to add them"
               if n < MIN_FINALISTS else "more than two classes, which it does not "
               "average yet")
        raise UserError(f"{option}: {run.path} has {why}")
    return False


def _export(run_dir: Path, out: Path, *, ensemble: bool, epochs: int | None,
            trial_id: str | None, onnx: bool, tflite: bool, overwrite: bool,
            verbose: bool,
            data: Path | None, tta: str | None,
            largest_region: bool | None, roi: str | None,
            convex_hull: bool | None, deliver: str,
            max_members: int | None, members: str | None) -> dict[str, Any]:
    import keras

    from lvseg_search.evaluate.decision import table_text
    from lvseg_search.evaluate.scoring import load_patient_images, score_patients
    from lvseg_search.model.contract import RAW, ROI_CENTRE, ROI_MODES, SPACING
    from lvseg_search.model.formats import check_centre, check_inputs
    from lvseg_search.model.serving import build_serving_model
    from lvseg_search.model.tta import TTA_MODES

    start = time.perf_counter()
    run = load_run(run_dir, data)
    if trial_id is not None:
        trial = find_trial(run, str(trial_id))
        if trial is None or trial.status != "COMPLETED":
            raise UserError(f"--trial: {trial_id} is not a completed trial of {run.path}; "
                            "report.md lists them")
    else:
        trial = best_trial(run)
    metrics = last_metrics(trial)
    epoch = scored_epoch(metrics) or 1
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs: {epochs} must be at least 1")
    if ensemble and epochs is not None:
        raise UserError("--epochs and --ensemble: the fold models are used as trained; "
                        "choose one")
    if tta is not None and tta not in TTA_MODES:
        raise UserError(f"--tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    o = run.options
    if roi is not None and roi not in ROI_MODES:
        raise UserError(f"--roi: {roi!r} is not one of {', '.join(ROI_MODES)}")
    if roi == "localized" and not o.physical:
        raise UserError(f"--roi localized: {run.path} trained on whole images resized "
                        "(--spacing none), which have no field of view to move; leave "
                        "--roi out")
    if convex_hull and largest_region is False:
        raise UserError("--convex-hull: fills the largest region's hull, which "
                        "--no-largest-region turns off; drop one of them")
    explicit = [name for name, given in (("--trial", trial_id is not None),
                                         ("--ensemble", ensemble),
                                         ("--epochs", epochs is not None)) if given]
    candidate = _check_delivery(run, deliver, max_members, members, explicit)
    members = members or MEMBERS[0]
    from lvseg_search.engine.finalist_ensemble import MIN_FINALISTS, finalists

    if (verbose and not candidate and not explicit and deliver == "auto"
            and run.data.num_classes > 2 and len(finalists(run)) >= MIN_FINALISTS):
        print("export: the finalists' ensemble averages blood-pool models only so far; "
              "delivering the best finalist", flush=True)
    keras.mixed_precision.set_dtype_policy("float32")  # exported formats are float32
    needs: list[int] = []  # the model folder's size, once its networks are known
    with (disk_full_reported(Path(out), "run the command again (nothing was written)",
                             lambda: needs[0] if needs else None),
          atomic.output_dir(out, overwrite=overwrite) as tmp):
        decision = _decide(run, trial.trial_id, tta, largest_region, roi, convex_hull)
        if verbose:
            print(f"export: test-time augmentation and post-processing, out-of-fold CV Dice "
                  f"of trial {trial.trial_id}:\n{table_text(decision['out_of_fold'], decision)}",
                  flush=True)
        finalists = (_finalists(run, decision, max_members, deliver, verbose) if candidate
                     else None)
        weights = None
        if finalists is not None and finalists["delivered"]:
            networks, weights, training = _ensemble_networks(run, finalists, members,
                                                             verbose)
            trained_on = sorted({p for f in run.splits["folds"] for p in f["train"]})
            if verbose:
                names = ", ".join(f"trial {m['trial']} x {m['weight']:.3f}"
                                  for m in training["members"])
                what = ("fold models" if members == "folds"
                        else "networks retrained on all non-test patients")
                print(f"export: the finalists' ensemble, {names}: their "
                      f"{len(networks)} {what} averaged", flush=True)
        elif ensemble:
            networks = [run.fold_network(trial.trial_id, k) for k in range(run.n_folds)]
            trained_on = sorted({p for f in run.splits["folds"] for p in f["train"]})
            training = {"mode": "ensemble", "models": run.n_folds,
                        "epochs": scored_epoch(metrics)}
            if verbose:
                print(f"export: ensemble of trial {trial.trial_id}'s {run.n_folds} fold models",
                      flush=True)
        else:
            n = epochs or epoch
            if verbose:
                print(f"export: retraining trial {trial.trial_id} on all non-test patients "
                      f"for {n} epochs", flush=True)
            keras.backend.clear_session()
            network, trained_on, steps, ends = retrain(run, trial, n, verbose)
            networks = [network]
            training = {"mode": "retrain", "epochs": n, "steps_per_epoch": steps,
                        "schedule_ends": ends}
        training["patients"] = trained_on
        parameters = sum(int(n.count_params()) for n in networks)
        needs.append(export_bytes(parameters))
        warn_if_short(Path(out).parent, needs[0],
                      f"this model folder ({len(networks)} network(s), {parameters:,} "
                      "parameters, in every format)",
                      "run the command again; nothing is written until it is whole")
        settings = {"tta": decision["tta"], "largest_region": decision["largest_region"],
                    "roi": decision["roi"], "convex_hull": decision["convex_hull"]}
        classes = run.data.classes
        labels = classes if classes.count > 2 else None
        model = build_serving_model(networks, o.image_size, o.normalization,
                                    o.spacing_mm or None, **settings, weights=weights,
                                    classes=labels)
        # The same layers, taking where to cut each view: predict centres a study's views
        # on its LV through it (evaluate.study_roi).
        at_centre = (build_serving_model(networks, o.image_size, o.normalization,
                                         o.spacing_mm, **settings, at_centre=True,
                                         weights=weights, classes=labels)
                     if o.physical else None)

        # The reference of the test scores and of every format's parity: the Keras
        # model, traced once (the .keras file's own check runs it as a user would).
        reference = graph_runner(model)
        reference_at_centre = graph_runner(at_centre) if at_centre is not None else None

        def keras_run(raw, pixel_spacing, roi_centre_mm=None):
            raw, spacing = check_inputs(raw, pixel_spacing)
            if roi_centre_mm is None:
                out = reference({RAW: raw, SPACING: spacing})
            else:
                out = reference_at_centre({RAW: raw, SPACING: spacing,
                                           ROI_CENTRE: check_centre(roi_centre_mm,
                                                                    len(raw))})
            return {k: np.asarray(v) for k, v in out.items()}

        test = None
        if run.splits["test"]:
            test_patients = load_patient_images(run.data, run.splits["test"])
            rows, summary = score_patients(keras_run, test_patients,
                                           largest_region=decision["largest_region"],
                                           study_roi=decision["roi"] == "localized",
                                           objective=o.objective)
            per_patient = {p: float(np.mean([r["dice"] for r in rows if r["patient_id"] == p]))
                           for p in run.splits["test"]}
            test = {"patients": run.splits["test"], **summary, "dice_per_patient": per_patient}
            probe_patients = test_patients
            if verbose:
                print(f"export: test patients {', '.join(run.splits['test'])}: Dice "
                      f"{summary['dice']:.3f}, APD {summary['apd_mm']:.2f} mm, good contours "
                      f"{summary['good_contours_pct']:.0f}%", flush=True)
        else:
            probe_patients = load_patient_images(run.data, run.splits["folds"][0]["val"][:1])

        candidates, onnx_status = write_formats(
            model, tmp, onnx, at_centre, tflite=tflite,
            traced={"serve": reference, AT_CENTRE: reference_at_centre})
        parity = check_parity(keras_run, candidates,
                              probe_inputs(probe_patients, at_centre is not None),
                              classes=int(networks[0].output_shape[-1]))
        if verbose:
            for name, r in parity.items():
                print(f"export: {name}: max |probability difference| {r['max_abs_diff']:.2e}, "
                      f"{r['mask_mismatch_pixels']} mask pixel(s) differ"
                      + (f" ({r['mask_tie_pixels']} more at ties of classes)"
                         if r["mask_tie_pixels"] else ""), flush=True)
        latency = _latency(candidates, probe_patients)
        if verbose:
            print("export: one image, " + ", ".join(
                f"{name} {ms:.0f} ms" for name, ms in latency["single_image_ms"].items())
                + f" (median of {LATENCY_RUNS}, this machine's CPU)", flush=True)
        card = model_card(run, trial, metrics, training, test, parity, onnx_status, tmp,
                          decision, finalists=finalists, latency=latency)
        atomic.write_json(tmp / CARD, card)
    if verbose:
        print(f"export: done in {time.perf_counter() - start:.0f} s -> {out}")
    return card


LATENCY_RUNS = 5


def _latency(candidates: dict[str, Any], patients: list[Any]) -> dict[str, Any]:
    """Each format's time for one image of a probe patient (median of
    :data:`LATENCY_RUNS` after one warm-up run), as ``predict`` calls it."""
    import os

    p = patients[0]
    raw = p.images[:1] if p.images.dtype != object else p.images[0][None]
    spacing = p.spacing_mm[:1].astype(np.float32)
    out = {}
    for name in ("saved_model", "tflite", "onnx"):
        if name not in candidates:
            continue
        candidates[name](raw, spacing)
        runs = []
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            candidates[name](raw, spacing)
            runs.append(time.perf_counter() - start)
        out[name] = round(1000 * float(np.median(runs)), 1)
    return {"single_image_ms": out, "image_shape": list(np.shape(raw)[1:]),
            "runs": LATENCY_RUNS, "cpu_count": os.cpu_count(),
            "measured_on": "the exporting machine's CPU"}


def _finalists(run: Run, decision: dict[str, Any], max_members: int | None, deliver: str,
               verbose: bool) -> dict[str, Any]:
    """The finalists' out-of-fold ensemble with the exported setting, and whether it is
    delivered."""
    from lvseg_search.engine.finalist_ensemble import finalist_ensemble
    from lvseg_search.evaluate.scoring import load_patient_images
    from lvseg_search.reporting.best_trial import ensemble_section

    validation = [load_patient_images(run.data, f["val"]) for f in run.splits["folds"]]
    setting = {k: decision[k] for k in ("roi", "tta", "largest_region", "convex_hull")}
    result = finalist_ensemble(run, validation, max_members, setting)
    delivered = deliver == "ensemble" or result["delivers"] == "ensemble"
    if verbose:
        title, _, frame = ensemble_section(result)
        frame = frame.assign(delivered=["" if delivered else "yes",
                                        "yes" if delivered else ""])
        print(f"export: {title.lower()}:\n{frame.to_string(index=False)}", flush=True)
    return {**result, "max_members": max_members, "delivered": delivered,
            "delivered_by": ("--deliver ensemble" if deliver == "ensemble" else
                             "out-of-fold CV Dice: the ensemble beats the best finalist "
                             "by more than the decision's tie margin"
                             if delivered else "out-of-fold CV Dice: the ensemble does "
                             "not beat the best finalist by more than the decision's tie "
                             "margin")}


def _ensemble_networks(run: Run, finalists: dict[str, Any], members: str, verbose: bool
                       ) -> tuple[list[Any], list[float], dict[str, Any]]:
    """The ensemble's networks and their weights: each member's fold models, each
    weighted by its member's share over the folds (exactly the networks whose
    out-of-fold predictions chose the members and weights), or each member retrained on
    every non-test patient for the epochs it was scored at, weighted by its share."""
    from lvseg_search.model.describe import network_words

    counts = finalists["ensemble"]["weights"]
    total = sum(counts.values())
    networks, weights, described = [], [], []
    for trial_id, count in counts.items():
        trial = find_trial(run, trial_id)
        share = count / total
        epochs = scored_epoch(last_metrics(trial))
        described.append({"trial": trial_id, "weight": share, "epochs": epochs,
                          "network": network_words(
                              {k: v for k, v in trial.hyperparameters.values.items()
                               if not k.startswith("tuner/")})})
        if members == "folds":
            for k in range(run.n_folds):
                networks.append(run.fold_network(trial_id, k))
                weights.append(share / run.n_folds)
            continue
        if verbose:
            print(f"export: retraining member trial {trial_id} on all non-test patients "
                  f"for {epochs} epochs", flush=True)
        network, _, steps, ends = retrain(run, trial, epochs, verbose)
        described[-1].update(steps_per_epoch=steps, schedule_ends=ends)
        networks.append(network)
        weights.append(share)
    training = {"mode": "finalist_ensemble", "members_from": members,
                "models": len(networks), "members": described}
    return networks, weights, training


def _decide(run: Run, trial_id: str, tta: str | None, largest_region: bool | None,
            roi: str | None, convex_hull: bool | None) -> dict[str, Any]:
    """The field of view, test-time augmentation and post-processing to export,
    from the trial's out-of-fold predictions (each fold model on the patients it never
    saw).

    Returns:
        The chosen ``roi``, ``tta``, ``largest_region`` and ``convex_hull``, its ``cv_dice``,
        ``decided_by`` and the whole ``out_of_fold`` table.
    """
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import TIE, choose

    table = out_of_fold_decisions(run, trial_id)
    chosen = choose(table, tta, largest_region, roi, convex_hull)
    forced = [name for name, value in (("--roi", roi), ("--tta", tta),
                                       ("--no-largest-region", largest_region),
                                       ("--convex-hull" if convex_hull else "--no-convex-hull",
                                        convex_hull))
              if value is not None]
    return {"roi": chosen["roi"], "tta": chosen["tta"],
            "largest_region": chosen["largest_region"], "convex_hull": chosen["convex_hull"],
            "cv_dice": chosen["cv_dice"],
            "decided_by": (" and ".join(forced) + " (the rest by " if forced else "")
            + f"out-of-fold CV Dice, highest wins, gains under {TIE:g} are ties that go "
              "to the cheaper setting, or to the localized field of view"
            + (")" if forced else ""),
            "out_of_fold": table}
