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
EPOCH_RULE = ("Every figure of a row is at one epoch, the trial's last (`scored_epoch`), "
              "and on the masks as delivered (each image's stored grid, largest region): "
              "CV Dice is the mean over folds of the validation Dice of the fold models as "
              "saved, and APD, Hausdorff and good contours (APD < 5 mm) are those same "
              "models', averaged over folds. The learning curves are at the network's "
              "input size. (Runs written before this rule ranked by the best mean epoch "
              "at the network's input size.)")
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
                    "epochs": int(hp.get("tuner/epochs", run.options.max_epochs)),
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
    # Only what varied among the completed trials: a panel of one value says nothing.
    names = [n for n in names if n in table and table[n].nunique() > 1]
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
                # A range narrower than a decade gets no major tick of its own.
                ticks = np.geomspace(values.min(), values.max(), 3)
                ax.set_xticks(ticks, [f"{v:.1e}" for v in ticks])
        else:  # categories: jittered strips, one per value
            levels = sorted(values.unique(), key=_natural_key)
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


def plot_brackets(run: Run) -> str | None:
    """Hyperband's brackets: each trial's CV Dice at its rung (epochs), one panel per
    bracket, with a line from each trial to the trial that continued it (promoted)."""
    import matplotlib.pyplot as plt

    points: dict[int, list[tuple[str, int, float, str | None]]] = {}
    for t in run.trials.values():
        hp = t.hyperparameters.values
        if "tuner/bracket" not in hp or t.score is None or t.status != "COMPLETED":
            continue
        points.setdefault(int(hp["tuner/bracket"]), []).append(
            (t.trial_id, int(hp["tuner/epochs"]), float(t.score), hp.get("tuner/trial_id")))
    if not points:
        return None
    brackets = sorted(points, reverse=True)
    fig, axes = plt.subplots(1, len(brackets), figsize=(min(4.0 * len(brackets), 13), 3.2),
                             squeeze=False, sharey=True)
    for ax, b in zip(axes.flat, brackets, strict=True):
        where = {tid: (epochs, score) for tid, epochs, score, _ in points[b]}
        promoted = {parent for *_, parent in points[b] if parent}
        for _, epochs, score, parent in points[b]:
            if parent in where:
                (x0, y0) = where[parent]
                ax.plot([x0, epochs], [y0, score], color="#4a78c2", lw=1, alpha=0.7)
        for tid, epochs, score, _ in points[b]:
            ax.scatter([epochs], [score], s=26, zorder=3,
                       color="#4a78c2" if tid in promoted else "#9aa3b5")
        ax.set_xscale("log", base=2)
        rungs = sorted({epochs for _, epochs, _, _ in points[b]})
        ax.set_xticks(rungs, [str(r) for r in rungs])
        ax.set_title(f"bracket {b} ({len(points[b])} trials)", fontsize=9)
        ax.set_xlabel("epochs (rung)")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("CV Dice")
    fig.suptitle("blue: promoted to the next rung; grey: stopped", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def score_test(run: Run, networks: list[Any]) -> dict[str, Any] | None:
    """The held-out test patients' scores for the average of a trial's fold models
    (None without test patients)."""
    from lvseg_search.evaluate.scoring import load_patients, score_patients
    from lvseg_search.model.serving import make_predictor

    if not run.splits["test"]:
        return None
    o = run.options
    predict = make_predictor(networks, o.image_size, o.normalization, o.spacing_mm or None)
    _, summary = score_patients(predict, load_patients(run.data, run.splits["test"]))
    return summary


def plot_overlays(run: Run, trial_id: str, networks: list[Any] | None = None,
                  validation: list[list[Any]] | None = None
                  ) -> tuple[str | None, list[dict[str, Any]]]:
    """Image, expert contour and predicted contour for the best trial's validation
    patients (each scored by the fold model that did not see them).

    Args:
        run: The run.
        trial_id: The trial.
        networks: Its fold models, if already built (else built here).
        validation: Each fold's validation patients, if already loaded.

    Returns:
        The figure (base64 PNG, None when no fold finished) and per-image scores, each
        with its slice ``position`` (base, mid, apex; see ``positions``).
    """
    import matplotlib.pyplot as plt

    from lvseg_search.evaluate.measures import contour_mm
    from lvseg_search.evaluate.positions import slice_positions
    from lvseg_search.evaluate.scoring import load_patients, score_masks, segment
    from lvseg_search.model.serving import make_predictor

    panels, scores = [], []
    for k in range(run.n_folds):
        model = networks[k] if networks is not None else run.fold_network(trial_id, k)
        o = run.options
        predict = make_predictor([model], o.image_size, o.normalization, o.spacing_mm or None)
        patients = (validation[k] if validation is not None
                    else load_patients(run.data, run.splits["folds"][k]["val"]))
        for patient in patients:
            _, pred = segment(predict, patient.images, patient.spacing_mm)
            rows, _ = score_masks(pred, patient)
            where = slice_positions(patient.slice_index, patient.masks, patient.spacing_mm)
            scores += [{"fold": k, **r, "position": w} for r, w in zip(rows, where,
                                                                       strict=True)]
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
        "APD mm": _round(r["apd_mm"], 2), "good contours %": _round(r["good_contours_pct"], 0),
        "export": "chosen" if same_setting(r, chosen) else ""}
        for r in table])


def best_trial_details(run: Run, trial_id: str, networks: list[Any],
                       validation: list[list[Any]],
                       scores: list[dict[str, Any]]) -> list[tuple[str, str, pd.DataFrame]]:
    """The best trial's out-of-fold breakdowns: Dice by patient and slice position, and
    the test-time augmentation and post-processing table that ``export`` decides by.

    Returns:
        (title, note, table) per section.
    """
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import TIE, choose

    out = []
    positions = position_table(scores)
    if positions is not None:
        out.append((f"Trial {trial_id}: Dice by patient and slice position",
                    "Mean per-image Dice (images) of each validation patient, predicted by "
                    "the fold model that never saw it; base, mid and apex are thirds of the "
                    "patient's contoured slice positions, the base being the end where the "
                    "expert's LV is larger.", positions))
    table = out_of_fold_decisions(run, trial_id,
                                  lambda: list(zip(networks, validation, strict=True)))
    out.append((f"Trial {trial_id}: field of view, test-time augmentation and "
                "post-processing",
                "CV Dice of the out-of-fold predictions with each setting; `export` keeps "
                f"the highest (gains under {TIE:g} count as ties, which go to the cheaper "
                "setting, or to the field of view cut around the localized LV) unless "
                "--roi, --tta, --no-largest-region or --[no-]convex-hull say otherwise. "
                "The search ranked "
                "trials with the field of view around the image centre, without test-time "
                "augmentation, with the largest region.",
                decision_frame(table, choose(table))))
    return out


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    return (["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
            + ["| " + " | ".join(str(v) for v in row) + " |"
               for row in frame.itertuples(index=False)])


def _html_table(frame: pd.DataFrame) -> str:
    e = html.escape
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{e(str(c))}</th>"
                   for i, c in enumerate(frame.columns))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{e(str(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# Digits that mean something, per column of the Markdown table and the console.
_DIGITS = {"cv_dice": 3, "cv_dice_std": 3, "apd_mm": 1, "hausdorff_mm": 1,
           "good_contours_pct": 0, "train_seconds": 0}


def _fmt(value: Any, column: str = "") -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "-"
        digits = _DIGITS.get(column, 3 if column.startswith("dice_fold_") else None)
        if digits is not None:
            return f"{value:.{digits}f}"
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    return str(value)


def _columns(table: pd.DataFrame, n_folds: int) -> list[str]:
    shown = ["rank", "trial", "cv_dice", "cv_dice_std",
             *[f"dice_fold_{k}" for k in range(n_folds)], "apd_mm", "hausdorff_mm",
             "good_contours_pct", "parameters", "scored_epoch", "train_seconds"]
    return [c for c in shown if c in table]


def _status_line(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]]) -> str:
    failed = sum(p["status"] in ("failed", "invalid") for p in pending)
    other = len(pending) - failed
    broken = run.unreadable
    return (f"{len(table)} trial(s) completed, {other} running or interrupted, {failed} failed "
            f"(of {len(run.trials) + sum(u.path.name == 'trial.json' for u in broken)} "
            "started)" + (f"; {len(broken)} record(s) unreadable, listed below" if broken
                          else ""))


def _unreadable_hint(run: Run) -> str:
    if is_locked(run.path):
        return ("a search is running in this folder: a trial.json may be caught mid-write; "
                "report again when it ends")
    return ("nothing is writing to this folder: these files are damaged; delete a trial's "
            "folder to have a resumed search run it again")


def render_markdown(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                    test: dict[str, Any] | None = None,
                    details: list[tuple[str, str, pd.DataFrame]] = ()) -> str:
    """The report as Markdown: the best trial first, then every trial."""
    o = run.options
    lines = [f"# Search report: {run.path.name}", "",
             f"Space `{Path(o.space).stem}`, {run.n_folds} patient-grouped folds, "
             f"{len(run.splits['test'])} held-out test patient(s), network input: "
             f"{o.grid_text()}; {o.plan_text()}. Augmentation: {o.augmentation_text()}.",
             "", _status_line(run, table, pending) + ".", ""]
    if not table.empty:
        best = table.iloc[0]
        folds = ", ".join(_round(best.get(f"dice_fold_{k}"), 3) for k in range(run.n_folds))
        lines += [f"**Best: trial {best['trial']}**, {network_words(best)}: CV Dice "
                  f"{_round(best['cv_dice'], 3)} +- {_round(best['cv_dice_std'], 3)} "
                  f"(folds {folds}), APD {_round(best['apd_mm'], 1)} mm, good contours "
                  f"{_round(best['good_contours_pct'], 0)}%, Hausdorff "
                  f"{_round(best['hausdorff_mm'], 1)} mm; {_count(best['parameters'])} "
                  f"parameters, {int(best['scored_epoch'])} epochs.", ""]
        if test:
            lines += [f"Held-out test ({len(run.splits['test'])} patient(s), the best trial's "
                      f"fold models averaged): Dice {test['dice']:.3f}, APD "
                      f"{_round(test['apd_mm'], 1)} mm, good contours "
                      f"{_round(test['good_contours_pct'], 0)}%.", ""]
        lines += [f"Export it: `{_export_command(run)}`", ""]
        varied, fixed = hyperparameter_spread(run, table)
        if fixed:
            lines += ["The same in every completed trial: "
                      + ", ".join(f"{n} {v}" for n, v in fixed.items()) + ".", ""]
        cols = _columns(table, run.n_folds)
        lines += ["| " + " | ".join(cols) + " | network (what varied) |",
                  "|" + "---|" * (len(cols) + 1)]
        for _, row in table.iterrows():
            chips = ", ".join(_chip_text(n, row[n]) for n in varied)
            lines.append("| " + " | ".join(_fmt(row[c], c) for c in cols) + f" | {chips} |")
        lines += ["", EPOCH_RULE, ""]
    for title, note, frame in details:
        lines += [f"## {title}", "", note, "", *_markdown_table(frame), ""]
    broken = run.unreadable
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


CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:12px 20px;
max-width:1240px;color:#1d2330}
h1{font-size:20px;margin:4px 0}h2{font-size:16px;margin:22px 0 8px}
.sub,.note{color:#5b6475;font-size:12.5px}
.summary{display:flex;gap:16px;flex-wrap:wrap;margin:10px 0 6px}
.card{flex:2 1 600px;border:1px solid #cfd6e4;border-radius:8px;padding:12px 16px;
background:#f7f9fd}
.side{flex:1 1 280px;border:1px solid #e1e5ee;border-radius:8px;padding:12px 16px}
.label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475}
.net{font-size:15px;font-weight:600;margin:2px 0 8px}
.figs{display:flex;gap:18px;flex-wrap:wrap}
.fig b{display:block;font-size:24px;font-weight:650}.fig span{font-size:12px;color:#5b6475}
.fig small{font-size:13px;color:#1d2330;font-weight:400}
.meta{margin-top:8px;font-size:12.5px;color:#394152}
.side div{margin-bottom:8px}
code{background:#eef1f7;border-radius:4px;padding:1px 5px;font-size:12.5px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;border:1px solid #e1e5ee;border-radius:4px}
.plots{display:grid;grid-template-columns:1fr;gap:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e6e9f0;padding:4px 6px;text-align:right;vertical-align:top}
th{background:#f0f3f8;cursor:pointer;user-select:none;white-space:nowrap}
th.sorted-asc:after{content:" \2191"}th.sorted-desc:after{content:" \2193"}
td.l,th.l{text-align:left}
.chip{display:inline-block;background:#e8edf7;border-radius:10px;padding:0 7px;margin:1px 2px;
font-size:11.5px;white-space:nowrap}
tr.more td{background:#fafbfd;text-align:left;font-size:12px;color:#394152}
tr.more{display:none}tr.more.open{display:table-row}
button.toggle{border:0;background:none;cursor:pointer;font-size:12px;padding:0 4px 0 0}
.status-failed td:first-child{border-left:3px solid #c0392b}
.status-running td:first-child{border-left:3px solid #e0a100}
.controls{margin:6px 0;font-size:13px}
"""

# Sorting by any column and filtering by status, in a few lines so that the page stays
# one self-contained file that works offline. Each trial is a row plus its details row,
# which moves with it.
SCRIPT = """
(function(){
var table=document.getElementById('trials');if(!table)return;var body=table.tBodies[0];
function pairs(){var r=[],rows=body.rows;
 for(var i=0;i<rows.length;i+=2)r.push([rows[i],rows[i+1]]);return r;}
table.querySelectorAll('th[data-key]').forEach(function(th){th.addEventListener('click',function(){
 var key=th.dataset.key,asc=!th.classList.contains('sorted-asc');
 table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
 th.classList.add(asc?'sorted-asc':'sorted-desc');
 var ps=pairs();ps.sort(function(a,b){
  var x=a[0].getAttribute('data-'+key),y=b[0].getAttribute('data-'+key);
  var nx=parseFloat(x),ny=parseFloat(y),empty=function(v){return v===null||v==='';};
  if(empty(x)||empty(y))return empty(x)-empty(y);
  var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
 ps.forEach(function(p){body.appendChild(p[0]);body.appendChild(p[1]);});});});
table.addEventListener('click',function(ev){var b=ev.target.closest('button.toggle');if(!b)return;
 var more=b.closest('tr').nextElementSibling;more.classList.toggle('open');
 b.textContent=more.classList.contains('open')?'\\u25be':'\\u25b8';});
var pick=document.getElementById('status');if(pick)pick.addEventListener('change',function(){
 pairs().forEach(function(p){var show=pick.value==='all'||p[0].dataset.status===pick.value;
  p[0].style.display=show?'':'none';if(!show)p[1].classList.remove('open');});});
})();
"""

# What each decoder is, in words.
_DECODERS = {"unet": "U-Net (skip connections)", "transposed": "transposed-conv decoder",
             "fcn": "FCN up-score"}


def _natural_key(value: Any) -> tuple:
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


def network_words(row: pd.Series | dict[str, Any]) -> str:
    """A trial's network in words."""
    if row.get("architecture") == "lab_fcn":
        return "the lab's FCN (strided convs, one transposed-conv up-score)"
    norm = {"batch": "batch norm", "group": "group norm", "instance": "instance norm",
            "none": "no norm"}.get(str(row.get("normalization")),
                                   f"{row.get('normalization')} norm")
    words = (f"{_DECODERS.get(str(row.get('decoder')), row.get('decoder'))}, "
             f"{row.get('depth')} level{'' if str(row.get('depth')) == '1' else 's'}, "
             f"{row.get('base_filters')} base filters, "
             f"{row.get('kernel_size')}x{row.get('kernel_size')} convs "
             f"({row.get('convs_per_stage')} per level"
             f"{', residual' if row.get('block') == 'residual' else ''}), "
             f"{str(row.get('downsampling')).replace('_', ' ')} down, {norm}, "
             f"{row.get('activation')}")
    if float(row.get("dropout") or 0) > 0:
        words += f", dropout {row.get('dropout')}"
    if row.get("deep_supervision") == "on":
        words += ", deep supervision"
    lr = row.get("learning_rate")
    optimizer = {"sgd_nesterov": "SGD (Nesterov 0.99)"}.get(str(row.get("optimizer")),
                                                            row.get("optimizer"))
    words += (f"; {str(row.get('loss')).replace('_', ' + ')} loss, {optimizer} "
              f"lr {float(lr):.1e}" if lr is not None else "")
    if row.get("lr_schedule") in ("cosine", "poly"):
        words += f" ({row.get('lr_schedule')})"
    return words


def _chip_text(name: str, value: Any) -> str:
    short = {"depth": "depth", "base_filters": "x", "kernel_size": "k",
             "convs_per_stage": "convs", "learning_rate": "lr", "dropout": "drop"}
    if name == "learning_rate":
        return f"lr {float(value):.1e}"
    if name == "base_filters":
        return f"x{value}"
    if name == "kernel_size":
        return f"k{value}"
    if name in short:
        return f"{short[name]} {value}"
    return str(value).replace("_", " ")


def _duration(seconds: float) -> str:
    if not seconds or math.isnan(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _count(n: float) -> str:
    n = float(n)
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else f"{n:.0f}"


def _round(value: Any, digits: int) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def search_progress(run: Run, table: pd.DataFrame,
                    pending: list[dict[str, Any]]) -> dict[str, Any]:
    """How the search went: trials by state, elapsed time (from the run's splits to its
    last fold result) and the training time of all folds."""
    failed = sum(p["status"] in ("failed", "invalid") for p in pending)
    results = list((run.path / "tuner").glob("trial_*/fold_*/result.json"))
    splits_file = run.path / "splits.json"
    elapsed = (max(p.stat().st_mtime for p in results) - splits_file.stat().st_mtime
               if results and splits_file.is_file() else math.nan)
    return {"completed": len(table), "failed": failed, "running": len(pending) - failed,
            "unreadable": len(run.unreadable), "elapsed_seconds": elapsed,
            "running_now": is_locked(run.path)}


def _export_command(run: Run) -> str:
    return f"lvseg-search export {run.path} --out models/{run.path.name}"


def _summary_card(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                  test: dict[str, Any] | None) -> str:
    e = html.escape
    progress = search_progress(run, table, pending)
    state = (f"{progress['completed']} completed, {progress['failed']} failed, "
             f"{progress['running']} running or interrupted"
             + (f", {progress['unreadable']} unreadable record(s)" if progress["unreadable"]
                else "")
             + (" (a search is running now)" if progress["running_now"] else ""))
    side = [f"<div><span class='label'>Search</span><br>{e(state)}; "
            f"{e(_duration(progress['elapsed_seconds']))} from start to the last result</div>"]
    if run.splits["test"]:
        if test:
            side.append("<div><span class='label'>Held-out test</span><br>"
                        f"{len(run.splits['test'])} patient(s): Dice <b>{test['dice']:.3f}</b>, "
                        f"APD {_round(test['apd_mm'], 1)} mm, good contours "
                        f"{_round(test['good_contours_pct'], 0)}% (the best trial's fold "
                        "models averaged; <code>export</code> scores its retrained model "
                        "on them too)</div>")
        else:
            side.append(f"<div><span class='label'>Held-out test</span><br>"
                        f"{len(run.splits['test'])} patient(s), scored by <code>export</code>"
                        "</div>")
    if table.empty:
        return ("<section class='summary'><div class='card'><div class='label'>Best network"
                "</div><div class='net'>No trial has completed yet.</div></div>"
                f"<div class='side'>{''.join(side)}</div></section>")
    best = table.iloc[0]
    folds = " · ".join(_round(best.get(f"dice_fold_{k}"), 3) for k in range(run.n_folds))
    side.append("<div><span class='label'>Next</span><br>export the best network:<br>"
                f"<code>{e(_export_command(run))}</code></div>")
    figs = [("CV Dice", f"{_round(best['cv_dice'], 3)} <small>± "
                        f"{_round(best['cv_dice_std'], 3)}</small>", f"folds {folds}"),
            ("APD", f"{_round(best['apd_mm'], 1)} <small>mm</small>", "avg perpendicular"),
            ("good contours", f"{_round(best['good_contours_pct'], 0)} <small>%</small>",
             "APD < 5 mm"),
            ("Hausdorff", f"{_round(best['hausdorff_mm'], 1)} <small>mm</small>", "")]
    cells = "".join(f"<div class='fig'><b>{v}</b><span>{e(k)}{' · ' + e(s) if s else ''}"
                    "</span></div>" for k, v, s in figs)
    return ("<section class='summary'><div class='card'>"
            f"<div class='label'>Best network · trial {e(str(best['trial']))}</div>"
            f"<div class='net'>{e(network_words(best))}</div><div class='figs'>{cells}</div>"
            f"<div class='meta'>{_count(best['parameters'])} parameters · "
            f"{int(best['scored_epoch'])} epochs · {_duration(best['train_seconds'])} of "
            f"training over {run.n_folds} folds</div></div>"
            f"<div class='side'>{''.join(side)}</div></section>")


# (key, heading, digits or None for text) of the trial table's visible columns.
_COLUMNS = (("rank", "#", 0), ("trial", "trial", None), ("status", "status", None),
            ("cv_dice", "CV Dice", 3), ("cv_dice_std", "±", 3), ("apd_mm", "APD mm", 1),
            ("good_contours_pct", "good %", 0), ("hausdorff_mm", "HD mm", 1),
            ("parameters", "params", None), ("scored_epoch", "epochs", 0),
            ("train_seconds", "time", None))


def _trial_rows(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                varied: list[str]) -> str:
    e = html.escape
    rows = []
    records = [dict(r, status="completed") for r in table.to_dict("records")]
    records += [{"trial": p["trial"], "status": "failed" if p["status"] in ("failed", "invalid")
                 else "running", "reason": p["reason"], "folds_done": p["folds_done"],
                 **{k: v for k, v in hparams.session_values(
                     run.trials[p["trial"]].hyperparameters.values).items()}}
                for p in pending if p["trial"] in run.trials]
    for r in records:
        data, cells = {}, []
        for key, _, digits in _COLUMNS:
            value = r.get(key)
            data[key] = "" if value is None or (isinstance(value, float) and math.isnan(value)) \
                else str(value)
            if key == "trial":
                shown = (f"<button class='toggle' title='details'>\u25b8</button>"
                         f"{e(str(value))}")
            elif key == "parameters":
                shown = _count(value) if value else "-"
            elif key == "train_seconds":
                shown = _duration(value) if value else "-"
            elif digits is None:
                shown = e(str(value)) if value is not None else "-"
            else:
                shown = _round(value, digits)
            cells.append(f"<td>{shown}</td>" if key != "trial" else f"<td class='l'>{shown}</td>")
        chips = "".join(f"<span class='chip'>{e(_chip_text(n, r[n]))}</span>"
                        for n in varied if n in r)
        attrs = " ".join(f"data-{k.replace('_', '-')}='{e(v)}'" for k, v in data.items())
        rows.append(f"<tr class='status-{r['status']}' {attrs}>{''.join(cells)}"
                    f"<td class='l'>{chips}</td></tr>")
        details = [f"<b>{e(network_words(r))}</b>"]
        fold_dice = [f"fold {k}: {_round(r.get(f'dice_fold_{k}'), 3)}"
                     for k in range(run.n_folds) if r.get(f"dice_fold_{k}") is not None]
        if fold_dice:
            details.append("Dice per fold: " + ", ".join(fold_dice))
        if r.get("continues"):
            details.append(f"continues trial {e(str(r['continues']))}")
        if r.get("reason"):
            details.append(f"{e(r['status'])} ({e(str(r.get('folds_done', '')))} folds "
                           f"done): {e(str(r['reason']))}")
        values = ", ".join(f"{n} = {e(str(r[n]))}" for n in run.space.params if n in r)
        details.append(f"hyperparameters: {values}")
        rows.append(f"<tr class='more'><td colspan='{len(_COLUMNS) + 1}'>"
                    + "<br>".join(details) + "</td></tr>")
    return "".join(rows)


def render_html(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                figures: dict[str, str | None], test: dict[str, Any] | None = None,
                details: list[tuple[str, str, pd.DataFrame]] = ()) -> str:
    """The report as one self-contained HTML page that works offline (plots embedded as
    PNG data, a few lines of inline JavaScript to sort and filter the table): the best
    trial's summary first, then the plots, then one row per trial."""
    o = run.options
    e = html.escape
    varied, fixed = hyperparameter_spread(run, table) if not table.empty else ([], {})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{e(run.path.name)} - lvseg-search report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Search report: {e(run.path.name)}</h1>",
             f"<div class='sub'>space {e(Path(o.space).stem)} · {run.n_folds} "
             f"patient-grouped folds · {len(run.splits['test'])} held-out test patient(s) · "
             f"network input: {e(o.grid_text())} · {e(o.plan_text())} · seed {o.seed}</div>",
             f"<div class='sub'>augmentation: {e(o.augmentation_text())}</div>",
             _summary_card(run, table, pending, test)]
    captions = {"hyperparameters": "CV Dice against each hyperparameter that varied",
                "curves": f"Learning curves of the top {TOP_CURVES} trials (validation Dice "
                          "at the network's input size, each fold and the mean; promoted "
                          "trials include the epochs of the trials they continue)",
                "brackets": "Hyperband brackets: each trial's CV Dice at its rung, lines "
                            "from a trial to the one that continued it",
                "overlays": "Best trial: expert (green) and predicted (red) contours on its "
                            "validation patients"}
    plots = [f"<h2>{e(caption)}</h2><img alt='{e(key)}' "
             f"src='data:image/png;base64,{figures[key]}'>"
             for key, caption in captions.items() if figures.get(key)]
    if plots:
        parts.append("<div class='plots'>" + "".join(plots) + "</div>")
    for title, note, frame in details:
        parts.append(f"<h2>{e(title)}</h2><p class='note'>{e(note)}</p>{_html_table(frame)}")
    if not table.empty or pending:
        parts.append("<h2>Trials</h2>")
        if fixed:
            parts.append("<p class='note'>The same in every completed trial: "
                         + ", ".join(f"{e(n)} {e(str(v))}" for n, v in fixed.items()) + "</p>")
        parts.append("<div class='controls'>Show <select id='status'>"
                     "<option value='all'>all trials</option>"
                     "<option value='completed'>completed</option>"
                     "<option value='failed'>failed</option>"
                     "<option value='running'>running or interrupted</option></select>"
                     " · click a heading to sort · \u25b8 for a trial's details</div>")
        heads = "".join(f"<th data-key='{k.replace('_', '-')}'"
                        f"{' class=l' if k == 'trial' else ''}>{e(h)}</th>"
                        for k, h, _ in _COLUMNS)
        parts.append(f"<table id='trials'><thead><tr>{heads}<th class='l'>network "
                     "(what varied)</th></tr></thead><tbody>"
                     + _trial_rows(run, table, pending, varied) + "</tbody></table>")
        parts.append(f"<p class='note'>{e(EPOCH_RULE)}</p>")
    broken = run.unreadable
    if broken:
        parts.append(f"<h2>Unreadable records</h2><p class='note'>{e(_unreadable_hint(run))}."
                     "</p><table><tr><th class='l'>file</th><th>problem</th></tr>")
        parts += [f"<tr><td class='l'>{e(str(u.path))}</td><td>{e(u.reason)}</td></tr>"
                  for u in broken]
        parts.append("</table>")
    parts.append(f"<p class='note'>TensorBoard: <code>tensorboard --logdir "
                 f"{e(str(run.path / hparams.DIRNAME))}</code> (HParams tab). Written "
                 f"{time.strftime('%Y-%m-%d %H:%M')}.</p><script>{SCRIPT}</script>"
                 "</body></html>")
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
    details: list[tuple[str, str, pd.DataFrame]] = []
    test = None
    if not table.empty:
        figures["hyperparameters"] = plot_dice_vs_hyperparameters(run, table)
        figures["curves"] = plot_learning_curves(run, table)
        figures["brackets"] = plot_brackets(run)
        if overlays:
            import keras

            from lvseg_search.evaluate.scoring import load_patients

            best = str(table["trial"][0])
            networks = [run.fold_network(best, k) for k in range(run.n_folds)]
            validation = [load_patients(run.data, f["val"]) for f in run.splits["folds"]]
            figures["overlays"], image_scores = plot_overlays(run, best, networks,
                                                              validation)
            details = best_trial_details(run, best, networks, validation, image_scores)
            test = score_test(run, networks)
            del networks
            keras.backend.clear_session()
    sync_tensorboard(run)
    files = {"csv": out / "report.csv", "md": out / "report.md", "html": out / "report.html"}
    atomic.write_text(files["csv"], table.to_csv(index=False))
    atomic.write_text(files["md"], render_markdown(run, table, pending, test, details))
    atomic.write_text(files["html"], render_html(run, table, pending, figures, test,
                                                 details))
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
