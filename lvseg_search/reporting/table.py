"""The report's tables: one row per completed trial, what is not complete, the
search's progress, and the best trial's breakdowns by slice position and by setting."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lvseg_search.engine import hparams
from lvseg_search.engine.final_stage import configuration, is_final
from lvseg_search.engine.lock import is_locked
from lvseg_search.engine.run import PROJECT, Run, completed_trials, trial_message
from lvseg_search.engine.trial_score import last_metrics, scored_epoch
from lvseg_search.reporting.numbers import number

# What every figure of a row is (the trial score's epoch rule), said under each table.
EPOCH_RULE = ("Every figure of a row is at one epoch, the trial's last (`scored_epoch`), "
              "and on the masks as delivered (each image's stored grid, largest region): "
              "CV Dice is the mean over folds of the validation Dice of the fold models as "
              "saved, and APD, Hausdorff and good contours (APD < 5 mm) are those same "
              "models', averaged over folds. The learning curves are at the network's "
              "input size. (Runs written before this rule ranked by the best mean epoch "
              "at the network's input size.)")


# Each contour's figures (data with a myocardium; ``evaluate.scoring``).
CONTOUR_COLUMNS = ("endo_dice", "epi_dice", "myo_dice", "epi_apd_mm", "epi_hausdorff_mm",
                   "epi_good_contours_pct")


def trial_table(run: Run) -> pd.DataFrame:
    """One row per completed trial, best first: scores, per-fold Dice, contour
    metrics, size, epochs, time and hyperparameter values."""
    rows = []
    default = configuration(run.space.default) if run.space.default else None
    for rank, t in enumerate(completed_trials(run), start=1):
        m = last_metrics(t)
        hp = t.hyperparameters.values
        folds = [f for f in run.fold_results(t.trial_id) if f]
        row = {"rank": rank, "trial": t.trial_id, "stage": "",
               "cv_dice": m.get("val_dice"), "cv_dice_std": m.get("val_dice_std")}
        row.update({f"dice_fold_{k}": m.get(f"val_dice_fold_{k}") for k in range(run.n_folds)})
        row.update({"apd_mm": m.get("apd_mm", math.nan),
                    "hausdorff_mm": m.get("hausdorff_mm", math.nan),
                    "good_contours_pct": m.get("good_contours_pct", math.nan),
                    **{k: m.get(k, math.nan) for k in CONTOUR_COLUMNS if k in m},
                    "parameters": int(m.get("parameters") or
                                      (folds[0].get("parameters", 0) if folds else 0)),
                    "scored_epoch": scored_epoch(m),
                    "epochs": int(hp.get("tuner/epochs", run.options.max_epochs)),
                    "continues": hp.get("tuner/trial_id") or "",
                    "train_seconds": round(sum(f.get("train_seconds", 0.0) for f in folds), 1)})
        row.update(hparams.session_values({k: v for k, v in hp.items()
                                           if not k.startswith("tuner/")}))
        row["stage"] = stage(hp, default)  # the session's, and whether it is the default
        rows.append(row)
    return pd.DataFrame(rows)


def stage(values: dict[str, Any], default: tuple | None) -> str:
    """Which stage trained a trial (``screening`` or ``final``), and ``, default`` where
    it is the space's default network (the baseline the search must beat)."""
    words = "final" if is_final(values) else "screening"
    return words + (", default" if default is not None and configuration(values) == default
                    else "")


def unfinished(run: Run) -> list[dict[str, Any]]:
    """Trials that are not complete: running or interrupted (with folds done), failed."""
    out = []
    for t in run.trials.values():
        if t.status == "COMPLETED":
            continue
        done = sum(f is not None for f in run.fold_results(t.trial_id))
        reason = trial_message(run.trial_dir(t.trial_id), t).strip().splitlines()
        out.append({"trial": t.trial_id, "status": t.status.lower(),
                    "folds_done": f"{done}/{run.n_folds}",
                    "reason": reason[-1] if reason else ""})
    return out


def natural_key(value: Any) -> tuple:
    """Numbers in numeric order (8 before 16), then everything else as text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def hyperparameter_spread(run: Run, table: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """The space's hyperparameters that took several values among the completed trials,
    and the value of each one that never varied."""
    names = [n for n in run.space.params if n in table]
    varied = [n for n in names if table[n].nunique() > 1]
    fixed = {n: table[n].iloc[0] for n in names if table[n].nunique() == 1}
    return varied, fixed


def position_table(scores: list[dict[str, Any]]) -> pd.DataFrame | None:
    """Mean per-image Dice (and number of images) of the best trial's out-of-fold
    predictions per patient and slice position, so that weak slices show.

    Args:
        scores: Per-image rows of :func:`plot_overlays` (``patient_id``, ``position``,
            ``dice``).

    Returns:
        One row per patient and one for all of them; None without scores.
    """
    from lvseg_search.evaluate.positions import POSITIONS

    frame = pd.DataFrame(scores)
    if frame.empty:
        return None

    def cell(dice: pd.Series) -> str:
        return f"{dice.mean():.3f} ({len(dice)})" if len(dice) else "-"

    rows = []
    for pid, group in [*frame.groupby("patient_id", sort=True), ("all patients", frame)]:
        rows.append({"patient": pid,
                     **{w: cell(group.loc[group["position"] == w, "dice"]) for w in POSITIONS},
                     "all": cell(group["dice"])})
    return pd.DataFrame(rows)


def decision_frame(table: list[dict[str, Any]], chosen: dict[str, Any]) -> pd.DataFrame:
    """The out-of-fold CV figures of every test-time augmentation and post-processing
    setting (``evaluate.decision``), the one ``export`` picks marked."""
    from lvseg_search.evaluate.decision import same_setting

    return pd.DataFrame([{
        "field of view": r["roi"],
        "test-time augmentation": r["tta"],
        "largest region": "yes" if r["largest_region"] else "no",
        "convex hull": "yes" if r["convex_hull"] else "no",
        "CV Dice": f"{r['cv_dice']:.4f} +- {r['cv_dice_std']:.3f}",
        "APD mm": number(r["apd_mm"], 2), "good contours %": number(r["good_contours_pct"], 0),
        **({"endo Dice": number(r["endo_dice"], 3), "epi Dice": number(r["epi_dice"], 3),
            "myo Dice": number(r["myo_dice"], 3), "epi APD mm": number(r["epi_apd_mm"], 2),
            "epi good %": number(r["epi_good_contours_pct"], 0)} if "epi_dice" in r else {}),
        "export": "chosen" if same_setting(r, chosen) else ""}
        for r in table])


def columns(table: pd.DataFrame, n_folds: int) -> list[str]:
    """The trial table's columns shown in Markdown, in order."""
    shown = ["rank", "trial", "stage", "cv_dice", "cv_dice_std",
             *[f"dice_fold_{k}" for k in range(n_folds)], "apd_mm", "hausdorff_mm",
             "good_contours_pct", *CONTOUR_COLUMNS, "parameters", "scored_epoch",
             "train_seconds"]
    return [c for c in shown if c in table]


def status_line(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]]) -> str:
    """Trials by state in one line."""
    failed = sum(p["status"] in ("failed", "invalid") for p in pending)
    other = len(pending) - failed
    broken = run.unreadable
    return (f"{len(table)} trial(s) completed, {other} running or interrupted, {failed} failed "
            f"(of {len(run.trials) + sum(u.path.name == 'trial.json' for u in broken)} "
            "started)" + (f"; {len(broken)} record(s) unreadable, listed below" if broken
                          else ""))


def unreadable_hint(run: Run) -> str:
    """What unreadable records mean for this folder: caught mid-write, or damaged."""
    if is_locked(run.path):
        return ("a search is running in this folder: a trial.json may be caught mid-write; "
                "report again when it ends")
    return ("nothing is writing to this folder: these files are damaged; delete a trial's "
            "folder to have a resumed search run it again")


def search_progress(run: Run, table: pd.DataFrame,
                    pending: list[dict[str, Any]]) -> dict[str, Any]:
    """How the search went: trials by state, elapsed time (from the run's splits to its
    last fold result) and the training time of all folds."""
    failed = sum(p["status"] in ("failed", "invalid") for p in pending)
    results = list((run.path / PROJECT).glob("trial_*/fold_*/result.json"))
    splits_file = run.path / "splits.json"
    elapsed = (max(p.stat().st_mtime for p in results) - splits_file.stat().st_mtime
               if results and splits_file.is_file() else math.nan)
    return {"completed": len(table), "failed": failed, "running": len(pending) - failed,
            "unreadable": len(run.unreadable), "elapsed_seconds": elapsed,
            "running_now": is_locked(run.path)}


def export_command(run: Run) -> str:
    """The command that exports the run's best trial."""
    return f"lvseg-search export {run.path} --out models/{run.path.name}"
