"""The report as one self-contained HTML page (``report.html``) that works offline:
plots embedded as PNG data, the style sheet and a few lines of JavaScript (sort and
filter the trial table) inlined from ``assets/``."""

from __future__ import annotations

import html
import math
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from lvseg_search.engine import hparams
from lvseg_search.engine.run import Run
from lvseg_search.model.describe import chip_text, network_words
from lvseg_search.reporting.figures import TOP_CURVES
from lvseg_search.reporting.numbers import count, duration, number
from lvseg_search.reporting.table import (
    EPOCH_RULE,
    export_command,
    hyperparameter_spread,
    search_progress,
    unreadable_hint,
)


@cache
def asset(name: str) -> str:
    """A file of ``reporting/assets`` (the page's CSS and JavaScript)."""
    return resources.files("lvseg_search.reporting").joinpath("assets", name).read_text(
        encoding="utf-8")


def html_table(frame: pd.DataFrame) -> str:
    """A data frame as an HTML table (first column left-aligned)."""
    e = html.escape
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{e(str(c))}</th>"
                   for i, c in enumerate(frame.columns))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{e(str(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_card(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                 test: dict[str, Any] | None) -> str:
    """The best network's card, and the search's state beside it."""
    e = html.escape
    progress = search_progress(run, table, pending)
    state = (f"{progress['completed']} completed, {progress['failed']} failed, "
             f"{progress['running']} running or interrupted"
             + (f", {progress['unreadable']} unreadable record(s)" if progress["unreadable"]
                else "")
             + (" (a search is running now)" if progress["running_now"] else ""))
    side = [f"<div><span class='label'>Search</span><br>{e(state)}; "
            f"{e(duration(progress['elapsed_seconds']))} from start to the last result</div>"]
    if run.splits["test"]:
        if test:
            side.append("<div><span class='label'>Held-out test</span><br>"
                        f"{len(run.splits['test'])} patient(s): Dice <b>{test['dice']:.3f}</b>, "
                        f"APD {number(test['apd_mm'], 1)} mm, good contours "
                        f"{number(test['good_contours_pct'], 0)}% (the best trial's fold "
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
    folds = " · ".join(number(best.get(f"dice_fold_{k}"), 3) for k in range(run.n_folds))
    side.append("<div><span class='label'>Next</span><br>export the best network:<br>"
                f"<code>{e(export_command(run))}</code></div>")
    figs = [("CV Dice", f"{number(best['cv_dice'], 3)} <small>± "
                        f"{number(best['cv_dice_std'], 3)}</small>", f"folds {folds}"),
            ("APD", f"{number(best['apd_mm'], 1)} <small>mm</small>", "avg perpendicular"),
            ("good contours", f"{number(best['good_contours_pct'], 0)} <small>%</small>",
             "APD < 5 mm"),
            ("Hausdorff", f"{number(best['hausdorff_mm'], 1)} <small>mm</small>", "")]
    if "epi_dice" in best:
        # The CV Dice ranks by the objective over the contours; the distances above are
        # the endocardium's.
        figs[0] = (f"CV Dice ({run.options.objective})", *figs[0][1:])
        figs[1:1] = [("endo Dice", number(best["endo_dice"], 3), "blood pool"),
                     ("epi Dice", number(best["epi_dice"], 3),
                      f"APD {number(best['epi_apd_mm'], 1)} mm"),
                     ("myo Dice", number(best["myo_dice"], 3), "")]
    cells = "".join(f"<div class='fig'><b>{v}</b><span>{e(k)}{' · ' + e(s) if s else ''}"
                    "</span></div>" for k, v, s in figs)
    return ("<section class='summary'><div class='card'>"
            f"<div class='label'>Best network · trial {e(str(best['trial']))}</div>"
            f"<div class='net'>{e(network_words(best))}</div><div class='figs'>{cells}</div>"
            f"<div class='meta'>{count(best['parameters'])} parameters · "
            f"{int(best['scored_epoch'])} epochs · {duration(best['train_seconds'])} of "
            f"training over {run.n_folds} folds</div></div>"
            f"<div class='side'>{''.join(side)}</div></section>")


# (key, heading, digits or None for text) of the trial table's visible columns.
COLUMNS = (("rank", "#", 0), ("trial", "trial", None), ("stage", "stage", None),
           ("status", "status", None),
            ("cv_dice", "CV Dice", 3), ("cv_dice_std", "±", 3), ("apd_mm", "APD mm", 1),
            ("good_contours_pct", "good %", 0), ("hausdorff_mm", "HD mm", 1),
            ("parameters", "params", None), ("scored_epoch", "epochs", 0),
            ("train_seconds", "time", None))
# Shown after the CV Dice where the data has a myocardium (the CV Dice is then the
# search's objective over the contours).
CONTOUR_COLUMNS = (("endo_dice", "endo", 3), ("epi_dice", "epi", 3), ("myo_dice", "myo", 3),
                   ("epi_apd_mm", "epi APD", 1))


def _columns(table: pd.DataFrame) -> tuple[tuple[str, str, int | None], ...]:
    """The trial table's columns: with each contour's figures where it has them."""
    if "epi_dice" not in table:
        return COLUMNS
    at = [k for k, _, _ in COLUMNS].index("cv_dice_std") + 1
    return COLUMNS[:at] + CONTOUR_COLUMNS + COLUMNS[at:]


def trial_rows(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
               varied: list[str]) -> str:
    """One row per trial, each followed by its (hidden) details row."""
    e = html.escape
    rows = []
    records = [dict(r, status="completed") for r in table.to_dict("records")]
    records += [{"trial": p["trial"], "status": "failed" if p["status"] in ("failed", "invalid")
                 else "running", "reason": p["reason"], "folds_done": p["folds_done"],
                 **{k: v for k, v in hparams.session_values(
                     run.trials[p["trial"]].hyperparameters.values).items()}}
                for p in pending if p["trial"] in run.trials]
    visible = _columns(table)
    for r in records:
        data, cells = {}, []
        for key, _, digits in visible:
            value = r.get(key)
            data[key] = "" if value is None or (isinstance(value, float) and math.isnan(value)) \
                else str(value)
            if key == "trial":
                shown = (f"<button class='toggle' title='details'>\u25b8</button>"
                         f"{e(str(value))}")
            elif key == "parameters":
                shown = count(value) if value else "-"
            elif key == "train_seconds":
                shown = duration(value) if value else "-"
            elif digits is None:
                shown = e(str(value)) if value is not None else "-"
            else:
                shown = number(value, digits)
            cells.append(f"<td>{shown}</td>" if key != "trial" else f"<td class='l'>{shown}</td>")
        chips = "".join(f"<span class='chip'>{e(chip_text(n, r[n]))}</span>"
                        for n in varied if n in r)
        attrs = " ".join(f"data-{k.replace('_', '-')}='{e(v)}'" for k, v in data.items())
        rows.append(f"<tr class='status-{r['status']}' {attrs}>{''.join(cells)}"
                    f"<td class='l'>{chips}</td></tr>")
        details = [f"<b>{e(network_words(r))}</b>"]
        fold_dice = [f"fold {k}: {number(r.get(f'dice_fold_{k}'), 3)}"
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
        rows.append(f"<tr class='more'><td colspan='{len(visible) + 1}'>"
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
             f"<style>{asset('report.css')}</style></head><body>",
             f"<h1>Search report: {e(run.path.name)}</h1>",
             f"<div class='sub'>space {e(Path(o.space).stem)} · {run.n_folds} "
             f"patient-grouped folds · {len(run.splits['test'])} held-out test patient(s) · "
             f"network input: {e(o.grid_text())} · {e(o.plan_text())} · seed {o.seed}</div>",
             f"<div class='sub'>augmentation: {e(o.augmentation_text())}</div>",
             summary_card(run, table, pending, test)]
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
        parts.append(f"<h2>{e(title)}</h2><p class='note'>{e(note)}</p>{html_table(frame)}")
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
                        for k, h, _ in _columns(table))
        parts.append(f"<table id='trials'><thead><tr>{heads}<th class='l'>network "
                     "(what varied)</th></tr></thead><tbody>"
                     + trial_rows(run, table, pending, varied) + "</tbody></table>")
        parts.append(f"<p class='note'>{e(EPOCH_RULE)}</p>")
    broken = run.unreadable
    if broken:
        parts.append(f"<h2>Unreadable records</h2><p class='note'>{e(unreadable_hint(run))}."
                     "</p><table><tr><th class='l'>file</th><th>problem</th></tr>")
        parts += [f"<tr><td class='l'>{e(str(u.path))}</td><td>{e(u.reason)}</td></tr>"
                  for u in broken]
        parts.append("</table>")
    parts.append(f"<p class='note'>TensorBoard: <code>tensorboard --logdir "
                 f"{e(str(run.path / hparams.DIRNAME))}</code> (HParams tab). Written "
                 f"{time.strftime('%Y-%m-%d %H:%M')}.</p><script>{asset('report.js')}</script>"
                 "</body></html>")
    return "\n".join(parts)
