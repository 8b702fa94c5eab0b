"""``lvseg-search report results/NAME``: trials ranked by CV Dice with the Sunnybrook
challenge's contour metrics, as ``report.csv``, ``report.md`` and a self-contained
``report.html`` with plots. Works on a running or interrupted search: it ranks what
is complete and lists what is not.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lvseg_search import atomic
from lvseg_search.engine import hparams
from lvseg_search.engine.lock import is_locked
from lvseg_search.engine.run import Run, completed_trials, load_run, trial_message
from lvseg_search.engine.trial_score import hparams_metrics, scored_epoch

# What every figure of a row is (the trial score's epoch rule), said under each table.
EPOCH_RULE = ("Every figure of a row is at one epoch, the trial's last (`scored_epoch`): "
              "CV Dice is the mean over folds of the validation Dice of the fold models as "
              "saved, and APD, Hausdorff and good contours (APD < 5 mm) are those same "
              "models' on the validation patients at full resolution, averaged over folds. "
              "(Runs written before this rule ranked by the best mean epoch.)")
TOP_CURVES = 3  # learning curves drawn for this many of the best trials
OVERLAYS_PER_PATIENT = 4


def trial_table(run: Run) -> pd.DataFrame:
    """One row per completed trial, best first: scores, per-fold Dice, contour
    metrics, size, epochs, time and hyperparameter values."""
    rows = []
    for rank, t in enumerate(completed_trials(run), start=1):
        m = {name: t.metrics.get_last_value(name) for name in t.metrics.metrics}
        hp = t.hyperparameters.values
        folds = [f for f in run.fold_results(t.trial_id) if f]
        row = {"rank": rank, "trial": t.trial_id, "cv_dice": m.get("val_dice"),
               "cv_dice_std": m.get("val_dice_std")}
        row.update({f"dice_fold_{k}": m.get(f"val_dice_fold_{k}") for k in range(run.n_folds)})
        row.update({"apd_mm": m.get("apd_mm", math.nan),
                    "hausdorff_mm": m.get("hausdorff_mm", math.nan),
                    "good_contours_pct": m.get("good_contours_pct", math.nan),
                    "parameters": int(m.get("parameters") or
                                      (folds[0].get("parameters", 0) if folds else 0)),
                    "scored_epoch": scored_epoch(m),
                    "epochs": int(hp.get("tuner/epochs", 0)),
                    "continues": hp.get("tuner/trial_id") or "",
                    "train_seconds": round(sum(f.get("train_seconds", 0.0) for f in folds), 1)})
        row.update(hparams.session_values({k: v for k, v in hp.items()
                                           if not k.startswith("tuner/")}))
        rows.append(row)
    return pd.DataFrame(rows)


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


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_dice_vs_hyperparameters(run: Run, table: pd.DataFrame) -> str | None:
    """CV Dice against each hyperparameter that varies (one panel each), as base64 PNG."""
    import matplotlib.pyplot as plt

    space = run.space
    names = [p.name for p in space.params.values() if not p.fixed] + [hparams.EPOCHS]
    names = [n for n in names if n in table and table[n].nunique() > 0]
    if table.empty or not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.flat, names, strict=False):
        values = table[name]
        param = space.params.get(name)
        if param is not None and not param.values:  # a numeric range: a scatter
            ax.scatter(values, table["cv_dice"], s=22, alpha=0.75)
            if param.sampling == "log":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # categories: jittered strips, one per value
            levels = sorted(values.unique(), key=str)
            x = np.array([levels.index(v) for v in values], dtype=float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(x)), table["cv_dice"], s=22, alpha=0.75)
            ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlabel(name)
        ax.set_ylabel("CV Dice")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_learning_curves(run: Run, table: pd.DataFrame) -> str | None:
    """Validation Dice per epoch of the best trials (each fold, and their mean)."""
    import matplotlib.pyplot as plt

    top = list(table["trial"][:TOP_CURVES])
    if not top:
        return None
    fig, axes = plt.subplots(1, len(top), figsize=(4.4 * len(top), 3.2), squeeze=False)
    for ax, trial_id in zip(axes.flat, top, strict=True):
        curves = [run.full_history(trial_id, k).get("val_dice", []) for k in range(run.n_folds)]
        for k, curve in enumerate(curves):
            ax.plot(range(1, len(curve) + 1), curve, alpha=0.5, label=f"fold {k}")
        n = min(len(c) for c in curves)
        if n:
            ax.plot(range(1, n + 1), np.mean([c[:n] for c in curves], axis=0), "k-", lw=2,
                    label="mean")
        ax.set_title(f"trial {trial_id}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def plot_overlays(run: Run, trial_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Image, expert contour and predicted contour for the best trial's validation
    patients (each scored by the fold model that did not see them).

    Returns:
        The figure (base64 PNG, None when no fold finished) and per-image scores.
    """
    import matplotlib.pyplot as plt

    from lvseg_search.evaluate.measures import contour_mm
    from lvseg_search.evaluate.scoring import load_patients, score_masks, segment
    from lvseg_search.model.serving import make_predictor

    panels, scores = [], []
    for k in range(run.n_folds):
        model = run.fold_network(trial_id, k)
        predict = make_predictor([model], run.options.image_size, run.options.normalization)
        for patient in load_patients(run.data, run.splits["folds"][k]["val"]):
            _, pred = segment(predict, patient.images)
            rows, _ = score_masks(pred, patient)
            scores += [{"fold": k, **r} for r in rows]
            picks = np.unique(np.linspace(0, len(patient.images) - 1,
                                          min(OVERLAYS_PER_PATIENT, len(patient.images)))
                              .round().astype(int))
            for i in picks:
                panels.append((patient.images[i], patient.masks[i] == 1, pred[i].astype(bool),
                               f"{patient.patient_id} s{patient.slice_index[i]} "
                               f"p{patient.phase_index[i]}", rows[i]))
    if not panels:
        return None, scores
    cols = OVERLAYS_PER_PATIENT
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, (image, truth, pred, title, row) in zip(axes.flat, panels, strict=False):
        lo, hi = np.percentile(image, [1, 99])
        ax.imshow(np.clip(image, lo, hi), cmap="gray")
        for mask, colour in ((truth, "lime"), (pred, "red")):
            line = contour_mm(mask, (1.0, 1.0))
            if len(line):
                ax.plot(line[:, 1], line[:, 0], color=colour, lw=1)
        ax.set_title(f"{title}\nDice {row['dice']:.2f}  APD {row['apd_mm']:.1f} mm", fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("green: expert contour, red: predicted (fold model that did not train on "
                 "the patient)", fontsize=8)
    fig.tight_layout()
    return _png(fig), scores


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    return str(value)


def _columns(table: pd.DataFrame, n_folds: int) -> list[str]:
    shown = ["rank", "trial", "cv_dice", "cv_dice_std",
             *[f"dice_fold_{k}" for k in range(n_folds)], "apd_mm", "hausdorff_mm",
             "good_contours_pct", "parameters", "scored_epoch", "train_seconds"]
    return [c for c in shown if c in table]


def _network(row: pd.Series) -> str:
    if row.get("architecture") == "lab_fcn":
        return "lab FCN"
    return (f"depth {row['depth']} x{row['base_filters']} k{row['kernel_size']} "
            f"c{row['convs_per_stage']} {row['downsampling']} {row['decoder']} "
            f"{row['normalization']} {row['activation']} drop {row['dropout']} "
            f"{row['loss']} {row['optimizer']} lr {row['learning_rate']:.2e}"
            + (" cosine" if row.get("lr_schedule") == "cosine" else ""))


def _status_line(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]]) -> str:
    failed = sum(p["status"] in ("failed", "invalid") for p in pending)
    other = len(pending) - failed
    broken = _unreadable(run)
    return (f"{len(table)} trial(s) completed, {other} running or interrupted, {failed} failed "
            f"(of {len(run.trials) + sum(u.path.name == 'trial.json' for u in broken)} "
            "started)" + (f"; {len(broken)} record(s) unreadable, listed below" if broken
                          else ""))


def _unreadable(run: Run) -> list[Any]:
    """The run's records that exist but cannot be read (``Run.unreadable``)."""
    return list(run.unreadable)


def _unreadable_hint(run: Run) -> str:
    if is_locked(run.path):
        return ("a search is running in this folder: a trial.json may be caught mid-write; "
                "report again when it ends")
    return ("nothing is writing to this folder: these files are damaged; delete a trial's "
            "folder to have a resumed search run it again")


def render_markdown(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]]) -> str:
    """The report as Markdown."""
    o = run.options
    lines = [f"# Search report: {run.path.name}", "",
             f"Space `{Path(o.space).stem}`, {run.n_folds} patient-grouped folds, "
             f"{len(run.splits['test'])} held-out test patient(s) (never used here), "
             f"images {o.image_size} px, Hyperband max {o.max_epochs} epochs, factor {o.factor}.",
             "", _status_line(run, table, pending) + ".", ""]
    if not table.empty:
        cols = _columns(table, run.n_folds)
        lines += ["| " + " | ".join(cols) + " | network |",
                  "|" + "---|" * (len(cols) + 1)]
        for _, row in table.iterrows():
            lines.append("| " + " | ".join(_fmt(row[c]) for c in cols)
                         + f" | {_network(row)} |")
        lines += ["", EPOCH_RULE, ""]
    broken = _unreadable(run)
    if broken:
        lines += ["## Unreadable records", "", _unreadable_hint(run) + ".", "",
                  "| file | problem |", "|---|---|"]
        lines += [f"| `{u.path}` | {u.reason} |" for u in broken]
        lines.append("")
    if pending:
        lines += ["## Not complete", "", "| trial | status | folds done | reason |",
                  "|---|---|---|---|"]
        lines += [f"| {p['trial']} | {p['status']} | {p['folds_done']} | {p['reason']} |"
                  for p in pending]
        lines.append("")
    lines += [f"TensorBoard: `tensorboard --logdir {run.path / hparams.DIRNAME}` (HParams tab).",
              ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:right}th{background:#f0f0f0}td.l{text-align:left}tr:first-child td{font-weight:600}
img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:13px}"""


def render_html(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                figures: dict[str, str | None]) -> str:
    """The report as one self-contained HTML page (plots embedded as PNG data)."""
    o = run.options
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(run.path.name)}"
             f" - lvseg-search report</title><style>{CSS}</style></head><body>",
             f"<h1>Search report: {e(run.path.name)}</h1>",
             f"<p>Space <b>{e(Path(o.space).stem)}</b>, {run.n_folds} patient-grouped folds, "
             f"{len(run.splits['test'])} held-out test patient(s), images {o.image_size} px, "
             f"Hyperband max {o.max_epochs} epochs, factor {o.factor}.<br>"
             f"{e(_status_line(run, table, pending))}.</p>"]
    if not table.empty:
        cols = _columns(table, run.n_folds)
        parts.append("<h2>Trials by CV Dice</h2><table><tr>"
                     + "".join(f"<th>{e(c)}</th>" for c in cols) + "<th>network</th></tr>")
        for _, row in table.iterrows():
            parts.append("<tr>" + "".join(f"<td>{e(_fmt(row[c]))}</td>" for c in cols)
                         + f"<td class='l'>{e(_network(row))}</td></tr>")
        parts.append(f"</table><p class='note'>{e(EPOCH_RULE)}</p>")
    captions = {"hyperparameters": "CV Dice against each hyperparameter that varies",
                "curves": f"Learning curves of the top {TOP_CURVES} trials (validation Dice, "
                          "each fold and the mean; promoted trials include the epochs of the "
                          "trials they continue)",
                "overlays": "Best trial: expert (green) and predicted (red) contours on its "
                            "validation patients"}
    for key, caption in captions.items():
        if figures.get(key):
            parts.append(f"<h2>{e(caption)}</h2><img alt='{e(key)}' "
                         f"src='data:image/png;base64,{figures[key]}'>")
    broken = _unreadable(run)
    if broken:
        parts.append(f"<h2>Unreadable records</h2><p class='note'>{e(_unreadable_hint(run))}."
                     "</p><table><tr><th>file</th><th>problem</th></tr>")
        parts += [f"<tr><td class='l'>{e(str(u.path))}</td><td>{e(u.reason)}</td></tr>"
                  for u in broken]
        parts.append("</table>")
    if pending:
        parts.append("<h2>Not complete</h2><table><tr><th>trial</th><th>status</th>"
                     "<th>folds done</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(p['trial'])}</td><td>{e(p['status'])}</td>"
                  f"<td>{e(p['folds_done'])}</td><td class='l'>{e(p['reason'])}</td></tr>"
                  for p in pending]
        parts.append("</table>")
    parts.append(f"<p class='note'>TensorBoard: <code>tensorboard --logdir "
                 f"{e(str(run.path / hparams.DIRNAME))}</code> (HParams tab). Written "
                 f"{time.strftime('%Y-%m-%d %H:%M')}.</p></body></html>")
    return "\n".join(parts)


def sync_tensorboard(run: Run) -> int:
    """Writes the HParams config and the sessions of completed trials that have none
    (a search from an older version, or one whose worker died after scoring).

    Returns:
        Number of sessions written.
    """
    logdir = run.path / hparams.DIRNAME
    if not any(logdir.glob("events.out.tfevents.*")):
        hparams.write_config(logdir, run.space, run.n_folds, run.options.max_epochs)
    written = 0
    for t in completed_trials(run):
        if (logdir / f"trial_{t.trial_id}").is_dir():
            continue
        metrics = {name: t.metrics.get_last_value(name) for name in t.metrics.metrics}
        hparams.write_trial(logdir, t.trial_id, t.hyperparameters.values,
                            hparams_metrics(metrics), [f for f in run.fold_results(t.trial_id)
                                                       if f])
        written += 1
    return written


def write_report(run_dir: Path, out: Path | None = None, overlays: bool = True,
                 verbose: bool = True, data: Path | None = None) -> dict[str, Any]:
    """Writes ``report.csv``, ``report.md`` and ``report.html`` for a run.

    Args:
        run_dir: The search's run folder (finished, running or interrupted).
        out: Folder for the report files (default: the run folder).
        overlays: Draw contour overlays of the best trial (builds its fold models).
        verbose: Print where the files went.
        data: The prepared data folder, if it moved since the search (only the overlays
            read it).

    Returns:
        ``table`` (the ranked trials), ``pending`` (not complete) and ``files``.

    Raises:
        UserError: ``run_dir`` holds no search, or its data folder is not found.
    """
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(run_dir, data)
    out = Path(out) if out is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    table = trial_table(run)
    pending = unfinished(run)
    figures: dict[str, str | None] = {}
    image_scores: list[dict[str, Any]] = []
    if not table.empty:
        figures["hyperparameters"] = plot_dice_vs_hyperparameters(run, table)
        figures["curves"] = plot_learning_curves(run, table)
        if overlays:
            import keras

            figures["overlays"], image_scores = plot_overlays(run, str(table["trial"][0]))
            keras.backend.clear_session()
    sync_tensorboard(run)
    files = {"csv": out / "report.csv", "md": out / "report.md", "html": out / "report.html"}
    atomic.write_text(files["csv"], table.to_csv(index=False))
    atomic.write_text(files["md"], render_markdown(run, table, pending))
    atomic.write_text(files["html"], render_html(run, table, pending, figures))
    if image_scores:
        files["images_csv"] = out / "report_best_trial_images.csv"
        atomic.write_text(files["images_csv"], pd.DataFrame(image_scores).to_csv(index=False))
    if verbose or run.unreadable:
        for u in run.unreadable:
            print(f"unreadable: {u}", flush=True)
        if run.unreadable:
            print(f"  ({_unreadable_hint(run)})", flush=True)
    if verbose:
        print(_status_line(run, table, pending))
        if not table.empty:
            best = table.iloc[0]
            print(f"best: trial {best['trial']}, CV Dice {best['cv_dice']:.3f} +- "
                  f"{best['cv_dice_std']:.3f}, APD {_fmt(best['apd_mm'])} mm")
        for key, path in files.items():
            print(f"  {key}: {path}")
        print(f"  tensorboard --logdir {run.path / hparams.DIRNAME}")
    return {"table": table, "pending": pending, "files": files}
