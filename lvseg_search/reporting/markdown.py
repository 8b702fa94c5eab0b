"""The report as Markdown (``report.md``): the best trial first, then every trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lvseg_search.engine import hparams
from lvseg_search.engine.run import Run
from lvseg_search.model.describe import chip_text, network_words
from lvseg_search.reporting.numbers import cell, count, number
from lvseg_search.reporting.table import (
    EPOCH_RULE,
    columns,
    export_command,
    hyperparameter_spread,
    status_line,
    unreadable_hint,
)


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A data frame as Markdown table lines."""
    return (["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
            + ["| " + " | ".join(str(v) for v in row) + " |"
               for row in frame.itertuples(index=False)])


def render_markdown(run: Run, table: pd.DataFrame, pending: list[dict[str, Any]],
                    test: dict[str, Any] | None = None,
                    details: list[tuple[str, str, pd.DataFrame]] = ()) -> str:
    """The report as Markdown: the best trial first, then every trial."""
    o = run.options
    lines = [f"# Search report: {run.path.name}", "",
             f"Space `{Path(o.space).stem}`, {run.n_folds} patient-grouped folds, "
             f"{len(run.splits['test'])} held-out test patient(s), network input: "
             f"{o.grid_text()}; {o.plan_text()}. Augmentation: {o.augmentation_text()}.",
             "", status_line(run, table, pending) + ".", ""]
    if not table.empty:
        best = table.iloc[0]
        folds = ", ".join(number(best.get(f"dice_fold_{k}"), 3) for k in range(run.n_folds))
        lines += [f"**Best: trial {best['trial']}**, {network_words(best)}: CV Dice "
                  f"{number(best['cv_dice'], 3)} +- {number(best['cv_dice_std'], 3)} "
                  f"(folds {folds}), APD {number(best['apd_mm'], 1)} mm, good contours "
                  f"{number(best['good_contours_pct'], 0)}%, Hausdorff "
                  f"{number(best['hausdorff_mm'], 1)} mm; {count(best['parameters'])} "
                  f"parameters, {int(best['scored_epoch'])} epochs.", ""]
        if "epi_dice" in best:
            lines += [f"Each contour ({run.options.objective} of the endocardial and "
                      "epicardial Dice ranks the trials; APD and good contours above are "
                      f"the endocardium's): endocardial Dice {number(best['endo_dice'], 3)}, "
                      f"epicardial Dice {number(best['epi_dice'], 3)} (APD "
                      f"{number(best['epi_apd_mm'], 1)} mm, good contours "
                      f"{number(best['epi_good_contours_pct'], 0)}%), myocardium Dice "
                      f"{number(best['myo_dice'], 3)}.", ""]
        baseline = table[table["stage"].str.endswith(", default")]
        if not baseline.empty:
            b = baseline.iloc[0]  # its finalist where it has one (ranked first)
            lines += [f"Baseline: the space's default network, trial {b['trial']} "
                      f"({b['stage'].split(',')[0]}), CV Dice {number(b['cv_dice'], 3)}; the "
                      f"best trial is {best['cv_dice'] - b['cv_dice']:+.3f} over it.", ""]
        if test:
            lines += [f"Held-out test ({len(run.splits['test'])} patient(s), the best trial's "
                      f"fold models averaged): Dice {test['dice']:.3f}, APD "
                      f"{number(test['apd_mm'], 1)} mm, good contours "
                      f"{number(test['good_contours_pct'], 0)}%.", ""]
        lines += [f"Export it: `{export_command(run)}`", ""]
        varied, fixed = hyperparameter_spread(run, table)
        if fixed:
            lines += ["The same in every completed trial: "
                      + ", ".join(f"{n} {v}" for n, v in fixed.items()) + ".", ""]
        cols = columns(table, run.n_folds)
        lines += ["| " + " | ".join(cols) + " | network (what varied) |",
                  "|" + "---|" * (len(cols) + 1)]
        for _, row in table.iterrows():
            chips = ", ".join(chip_text(n, row[n]) for n in varied)
            lines.append("| " + " | ".join(cell(row[c], c) for c in cols) + f" | {chips} |")
        lines += ["", EPOCH_RULE, ""]
    for title, note, frame in details:
        lines += [f"## {title}", "", note, "", *markdown_table(frame), ""]
    broken = run.unreadable
    if broken:
        lines += ["## Unreadable records", "", unreadable_hint(run) + ".", "",
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
