"""``lvseg-search report results/NAME``: trials ranked by CV Dice with the Sunnybrook
challenge's contour metrics, as ``report.csv``, ``report.md`` and a self-contained
``report.html`` with plots. Works on a running or interrupted search: it ranks what
is complete and lists what is not. The pieces are in ``reporting/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lvseg_search import atomic
from lvseg_search.engine import hparams
from lvseg_search.engine.finalist_ensemble import finalist_ensemble
from lvseg_search.engine.run import load_run
from lvseg_search.reporting import figures
from lvseg_search.reporting.best_trial import (
    best_trial_details,
    ensemble_section,
    out_of_fold_overlays,
    score_test,
)
from lvseg_search.reporting.html import render_html
from lvseg_search.reporting.markdown import render_markdown
from lvseg_search.reporting.numbers import number
from lvseg_search.reporting.table import status_line, trial_table, unfinished, unreadable_hint
from lvseg_search.reporting.tensorboard import sync_tensorboard


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
    plots: dict[str, str | None] = {}
    image_scores: list[dict[str, Any]] = []
    details: list[tuple[str, str, pd.DataFrame]] = []
    test = None
    if not table.empty:
        plots["hyperparameters"] = figures.plot_dice_vs_hyperparameters(run, table)
        plots["curves"] = figures.plot_learning_curves(run, table)
        plots["brackets"] = figures.plot_brackets(run)
        if overlays:
            import keras

            from lvseg_search.evaluate.scoring import load_patient_images

            best = str(table["trial"][0])
            networks = [run.fold_network(best, k) for k in range(run.n_folds)]
            validation = [load_patient_images(run.data, f["val"]) for f in run.splits["folds"]]
            plots["overlays"], image_scores = out_of_fold_overlays(run, best, networks,
                                                                   validation)
            details = best_trial_details(run, best, networks, validation, image_scores)
            test = score_test(run, networks)
            del networks
            ensemble = finalist_ensemble(run, validation)
            if ensemble is not None:
                details.append(ensemble_section(ensemble))
            keras.backend.clear_session()
    sync_tensorboard(run)
    files = {"csv": out / "report.csv", "md": out / "report.md", "html": out / "report.html"}
    atomic.write_text(files["csv"], table.to_csv(index=False))
    atomic.write_text(files["md"], render_markdown(run, table, pending, test, details))
    atomic.write_text(files["html"], render_html(run, table, pending, plots, test,
                                                 details))
    if image_scores:
        files["images_csv"] = out / "report_best_trial_images.csv"
        atomic.write_text(files["images_csv"], pd.DataFrame(image_scores).to_csv(index=False))
    if verbose or run.unreadable:
        for u in run.unreadable:
            print(f"unreadable: {u}", flush=True)
        if run.unreadable:
            print(f"  ({unreadable_hint(run)})", flush=True)
    if verbose:
        print(status_line(run, table, pending))
        if not table.empty:
            best = table.iloc[0]
            print(f"best: trial {best['trial']}, CV Dice {best['cv_dice']:.3f} +- "
                  f"{best['cv_dice_std']:.3f}, APD {number(best['apd_mm'])} mm")
        for key, path in files.items():
            print(f"  {key}: {path}")
        print(f"  tensorboard --logdir {run.path / hparams.DIRNAME}")
    return {"table": table, "pending": pending, "files": files}
