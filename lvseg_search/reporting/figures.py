"""The report's figures (matplotlib, embedded as base64 PNG): CV Dice against each
hyperparameter, learning curves, Hyperband's brackets, contour overlays."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from lvseg_search.engine import hparams
from lvseg_search.engine.run import Run
from lvseg_search.reporting.table import natural_key

TOP_CURVES = 3  # learning curves drawn for this many of the best trials
OVERLAYS_PER_PATIENT = 4


def png(fig) -> str:
    """A matplotlib figure as base64 PNG (the figure is closed)."""
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
            levels = sorted(values.unique(), key=natural_key)
            x = np.array([levels.index(v) for v in values], dtype=float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(x)), table["cv_dice"], s=22, alpha=0.75)
            ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlabel(name)
        ax.set_ylabel("CV Dice")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return png(fig)


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
    return png(fig)


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
    return png(fig)


def draw_overlays(panels: list[tuple[Any, ...]], classes: Any = None) -> str | None:
    """Image, expert contours (green) and predicted contours (red), one panel per image:
    the endocardial contour solid and, with a myocardium, the epicardial one dashed.

    Args:
        panels: (image, expert mask, predicted mask (class ids), title, scores with
            ``dice`` and ``apd_mm``, and ``epi_dice`` with a myocardium) per panel.
        classes: ``classes.Classes`` of the masks (None: the LV only).

    Returns:
        The figure as base64 PNG; None without panels.
    """
    import matplotlib.pyplot as plt

    from lvseg_search.classes import Classes, fully_labelled, regions
    from lvseg_search.evaluate.measures import contour_mm

    classes = classes or Classes()

    if not panels:
        return None
    cols = OVERLAYS_PER_PATIENT
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, (image, truth, pred, title, row) in zip(axes.flat, panels, strict=False):
        lo, hi = np.percentile(image, [1, 99])
        ax.imshow(np.clip(image, lo, hi), cmap="gray")
        for mask, colour in ((truth, "lime"), (pred, "red")):
            found = regions(mask, classes)
            drawn = [(found["endo"], "-")]
            if classes.has_myocardium and fully_labelled(mask, classes):
                drawn.append((found["epi"], "--"))
            for region, style in drawn:
                line = contour_mm(region, (1.0, 1.0))
                if len(line):
                    ax.plot(line[:, 1], line[:, 0], color=colour, lw=1, ls=style)
        text = f"Dice {row['dice']:.2f}  APD {row['apd_mm']:.1f} mm"
        if classes.has_myocardium and not math.isnan(row.get("epi_dice", math.nan)):
            text = f"endo {row['dice']:.2f}  epi {row['epi_dice']:.2f}  myo {row['myo_dice']:.2f}"
        ax.set_title(f"{title}\n{text}", fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("green: expert contour, red: predicted (fold model that did not train on "
                 "the patient)" + ("; solid: endocardium, dashed: epicardium"
                                  if classes.has_myocardium else ""), fontsize=8)
    fig.tight_layout()
    return png(fig)
