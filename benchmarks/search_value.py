"""The value of the search: does it find a better network for the same compute?

Runs, on one data set and seed, the same cross-validated search with each of
keras-tuner's oracles, and the space's fixed default network:

- ``hyperband``: one Hyperband iteration (``--max-epochs``, ``--factor``);
- ``random`` and ``bayesian``: ``--trials`` trials of ``--max-epochs`` epochs each
  (at least as many epochs in all as Hyperband's iteration);
- ``fixed``: the space's ``[default]`` network, ``--max-epochs`` epochs, and ``fixed_x3``,
  the same network with three times the epochs (its learning-rate schedule stretched),
  to see whether a baseline given more of the budget catches up;
- ``first_rung``: random search's trials (same seed: same draws, same initial weights)
  trained only Hyperband's first rung, their learning rate decaying over it as a
  Hyperband first-rung trial's does;
- ``search``: the search as a user runs it by default: Hyperband with the space's
  default network in the race, then the final stage (the space's finalists and the
  default network trained to its ``final_epochs``; ``--finalists``, ``--final-epochs``,
  ``--final-from``);
- ``fixed_readme``: ``--oracle fixed`` at the README's real-data budget (60 epochs of 30
  batches);
- ``fixed_equal``: the fixed default trained for as many epochs as fit in the
  ``search`` arm's wall time (measured on the ``fixed_readme`` arm's time per batch, else
  the ``fixed`` arm's per epoch; run them first).

The oracle arms (``hyperband``, ``random``, ``bayesian``, ``first_rung``) run the oracle
alone (``--no-default --finalists 0``), as they were measured before the final stage.
For the ``search`` and fixed arms the table also gives the delivered model's out-of-fold
CV Dice as ``export`` decides (field of view, test-time augmentation, post-processing;
for ``search``, the finalists' ensemble where it beats the best finalist) and, for
``search``, its nested figure (each fold scored by what was chosen on the others).

Then prints, per arm, the best CV Dice (on the masks as delivered) against cumulative
training epochs (a trial's epochs, each over every fold), the epochs Hyperband needs to
come within 0.01 of random search's final best, and writes a plot. Also measures the
low-budget signal: the Spearman rank correlation between the ``first_rung`` arm's scores
(what Hyperband ranks its first rung by) and the same configurations' final scores in the
random arm; and, from the random and Bayesian trials trained the whole budget from
scratch, between a trial's validation Dice after k epochs of its one long decay (several
rules; how rungs were scored before they restarted the schedule) and its final score.

    python benchmarks/search_value.py --out DIR [--data RAW | --phantom] [--seed 0]
        [--space quick] [--max-epochs 24] [--factor 2] [--min-epochs N] [--trials 15]
        [--finalists N] [--final-epochs N] [--final-from screening|scratch]
        [--steps-per-epoch 20] [--batch-size 4] [--arms random,hyperband,...]

The defaults are the real-subset budget of the README: Hyperband's one iteration (24
epochs, factor 2, rungs 6, 12 and 24) trains 348 epochs, random search and Bayesian
optimization 15 trials of 24 (360), the first rung 15 trials of 6.

An interrupted run resumes (each arm is a search in its own folder under DIR). With
``--report-only``, only the tables and the plot from what DIR holds.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-subset"
# The README's real-data command for --oracle fixed: 60 epochs of 30 batches.
README_FIXED = {"epochs": 60, "steps_per_epoch": 30}
ARMS = ("random", "first_rung", "hyperband", "fixed", "bayesian", "fixed_x3", "search",
        "fixed_readme", "fixed_equal")
SEARCH_ARMS = ("random", "hyperband", "fixed", "bayesian", "fixed_x3", "search",
               "fixed_equal")  # plotted
ORACLE_ARMS = ("random", "first_rung", "hyperband", "bayesian")
TARGET_GAP = 0.01


def prepare_data(args: argparse.Namespace, out: Path) -> Path:
    """The prepared data the arms share (made once under ``out``)."""
    from lvseg_search.prepare import prepare

    prepared = out / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    if args.phantom:
        from lvseg_search.data.phantom import synth

        synth(out / "phantom", args.phantom_patients, seed=args.seed, size=args.phantom_size,
              progress=False, overwrite=True)
        prepare(out / "phantom", prepared, progress=False)
    else:
        prepare(args.data, prepared, progress=False)
    return prepared


def arm_command(arm: str, args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    """The ``lvseg-search search`` command line of one arm."""
    oracle = ("fixed" if arm.startswith("fixed") else "random" if arm == "first_rung"
              else "hyperband" if arm == "search" else arm)
    epochs = (args.max_epochs * 3 if arm == "fixed_x3" else first_rung(args)
              if arm == "first_rung" else equal_wall_epochs(args, out)
              if arm == "fixed_equal" else README_FIXED["epochs"]
              if arm == "fixed_readme" else args.max_epochs)
    cmd = [sys.executable, "-m", "lvseg_search", "search", "--data", str(data),
           "--space", args.space, "--out", str(out / arm), "--folds", str(args.folds),
           "--oracle", oracle, "--max-epochs", str(epochs), "--seed", str(args.seed),
           "--batch-size", str(args.batch_size), "--quiet"]
    steps = README_FIXED["steps_per_epoch"] if arm == "fixed_readme" else args.steps_per_epoch
    if steps:
        cmd += ["--steps-per-epoch", str(steps)]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if arm in ORACLE_ARMS:
        cmd += ["--no-default", "--finalists", "0"]
    if arm == "search":
        for flag, value in (("--finalists", args.finalists),
                            ("--final-epochs", args.final_epochs),
                            ("--final-from", args.final_from)):
            if value is not None:
                cmd += [flag, str(value)]
    if arm in ("hyperband", "search"):
        cmd += ["--factor", str(args.factor), "--iterations", "1"]
        if args.min_epochs:
            cmd += ["--min-epochs", str(args.min_epochs)]
    elif arm in ("random", "bayesian", "first_rung"):
        cmd += ["--max-trials", str(args.trials)]
    return cmd


def equal_wall_epochs(args: argparse.Namespace, out: Path) -> int:
    """Epochs of the fixed default that take the ``search`` arm's wall time, from the
    ``fixed_readme`` arm's seconds per batch (its 1800 batches amortize start-up and the
    final scoring; the 12-epoch ``fixed`` arm's seconds per epoch, used where
    ``fixed_readme`` has not run, overstate them and give the fixed default less time).

    Raises:
        RuntimeError: The ``search`` arm, or both fixed arms, have not run yet.
    """
    search = out / "search" / "wall_seconds.txt"
    if not search.is_file():
        raise RuntimeError("fixed_equal: run the search arm first")
    readme, fixed = (out / arm / "wall_seconds.txt" for arm in ("fixed_readme", "fixed"))
    if readme.is_file():
        per_batch = float(readme.read_text()) / (README_FIXED["epochs"]
                                                 * README_FIXED["steps_per_epoch"])
        per_epoch = per_batch * args.steps_per_epoch
    elif fixed.is_file():
        per_epoch = float(fixed.read_text()) / args.max_epochs
    else:
        raise RuntimeError("fixed_equal: run the fixed_readme (or fixed) arm first")
    return max(1, round(float(search.read_text()) / per_epoch))


def delivered(run) -> dict:
    """The delivered model's out-of-fold CV Dice as ``export`` decides it (the finalists'
    ensemble where it beats the best finalist), and its nested figure where the search
    has finalists to choose from."""
    from lvseg_search.engine.finalist_ensemble import finalist_ensemble
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.engine.run import best_trial
    from lvseg_search.evaluate.decision import choose
    from lvseg_search.evaluate.scoring import load_patient_images

    best = best_trial(run)
    out = {"best": best.trial_id, "screened_best": max(
        t.score for t in run.trials.values()
        if t.status == "COMPLETED" and t.score is not None
        and not t.hyperparameters.values.get("tuner/final")),
        "oof": choose(out_of_fold_decisions(run, best.trial_id))["cv_dice"], "nested": None}
    validation = [load_patient_images(run.data, f["val"]) for f in run.splits["folds"]]
    ensemble = finalist_ensemble(run, validation)
    if ensemble is not None:
        chosen = ensemble[ensemble["delivers"]]
        out.update(oof=chosen["cv_dice"], nested=chosen["nested_cv_dice"],
                   delivers=ensemble["delivers"])
    return out


def first_rung(args: argparse.Namespace) -> int:
    """Hyperband's first rung (``--min-epochs``, else the search's default)."""
    from lvseg_search.engine.options import default_min_epochs

    return args.min_epochs or default_min_epochs(args.max_epochs, args.factor)


def run_arm(arm: str, args: argparse.Namespace, data: Path, out: Path) -> float:
    """Runs (or resumes) one arm, its progress in ``out/ARM.log``; returns wall seconds.

    Raises:
        RuntimeError: The search failed (its log says why).
    """
    cmd = arm_command(arm, args, data, out)
    start = time.perf_counter()
    with open(out / f"{arm}.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{arm}: search exited {code}; see {out / (arm + '.log')}")
    seconds = time.perf_counter() - start
    (out / arm / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def arm_trials(run) -> list[dict]:
    """An arm's trials (its loaded run folder) in the order they ran: epochs trained,
    final score (None when failed), and for trials trained from scratch each fold's
    per-epoch validation Dice."""
    rows = []
    for tid, t in sorted(run.trials.items(), key=lambda kv: int(kv[0])):
        hp = t.hyperparameters.values
        epochs = int(hp.get("tuner/epochs", run.options.max_epochs))
        initial = int(hp.get("tuner/initial_epoch", 0))
        folds = run.fold_results(tid)
        curves = ([f["history"].get("val_dice", []) for f in folds]
                  if initial == 0 and all(folds) else None)
        done = t.status == "COMPLETED" and t.score is not None
        # A failed trial's epochs are those its folds finished (its compute was spent).
        trained = (epochs - initial) if done else max(
            (len(f["history"].get("val_dice", [])) for f in folds if f), default=0)
        rows.append({"trial": tid, "epochs": trained, "score": t.score if done else None,
                     "curves": curves, "status": t.status,
                     "values": tuple(sorted((k, str(v)) for k, v in hp.items()
                                            if not k.startswith("tuner/")))})
    return rows


# What an arm is and how much it runs: the only options in which arms may differ.
ARM_OPTIONS = {"oracle", "max_trials", "max_epochs", "min_epochs", "factor",
               "hyperband_iterations", "include_default", "finalists", "final_epochs",
               "final_from", "space", "space_digest", "data"}


def unlike_arms(runs: dict) -> list[str]:
    """How the arms' trials trained differently, one line per option (none: comparable).

    Arms resumed or added later may have run with other code or another space; their
    figures then do not compare, and the table must say so rather than rank them. The
    search arms' hyperparameter domains (their copies of the space) are compared too.

    Args:
        runs: Each arm's loaded run folder.
    """
    import dataclasses

    from lvseg_search.model.space import load_space

    options = {a: dataclasses.asdict(run.options) for a, run in runs.items()}
    lines = []
    for key in sorted(set().union(*options.values()) - ARM_OPTIONS):
        # fixed_readme's batches an epoch are the README's (30), by design.
        values = {a: options[a].get(key) for a in runs
                  if not (a == "fixed_readme" and key == "steps_per_epoch")}
        if len({repr(v) for v in values.values()}) > 1:
            lines.append(f"- {key}: " + ", ".join(f"{a} {v}" for a, v in values.items()))
    alike: dict[str, list[str]] = {}
    for a, run in runs.items():
        if not a.startswith("fixed") and (run.path / "space.toml").is_file():
            alike.setdefault(repr(load_space(run.path / "space.toml").params), []).append(a)
    if len(alike) > 1:
        lines.append("- hyperparameter domains differ between "
                     + " and ".join("/".join(group) for group in alike.values()))
    return lines


def best_curve(trials: list[dict]) -> list[tuple[int, float]]:
    """(cumulative epochs, best CV Dice so far) after each trial."""
    curve, total, best = [], 0, -math.inf
    for t in trials:
        total += t["epochs"]
        if t["score"] is not None:
            best = max(best, t["score"])
        curve.append((total, best))
    return curve


def best_at(curve: list[tuple[int, float]], epochs: float) -> float:
    """The best CV Dice reached within ``epochs`` cumulative epochs (NaN: none yet)."""
    found = [b for e, b in curve if e <= epochs and b > -math.inf]
    return max(found) if found else math.nan


def epochs_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    """Cumulative epochs at which the curve first reaches ``level`` (None: never)."""
    return next((e for e, b in curve if b >= level), None)


RULES = {
    "last epoch": lambda c, k: c[k - 1],
    "mean of last 2 epochs": lambda c, k: float(np.mean(c[max(0, k - 2):k])),
    "best epoch so far": lambda c, k: max(c[:k]),
}


def rung_signal(trials: list[dict], max_epochs: int) -> list[dict]:
    """Spearman correlation between the score after ``k`` epochs (each rule; the mean
    over folds of the per-epoch validation Dice at the network's grid) and the final
    score (delivered masks), over the trials trained from scratch to the full budget."""
    full = [t for t in trials if t["score"] is not None and t["curves"]
            and all(len(c) >= max_epochs for c in t["curves"])]
    rows = []
    if len(full) < 3:
        return rows
    final = [t["score"] for t in full]
    for k in range(1, max_epochs + 1):
        for name, rule in RULES.items():
            early = [float(np.mean([rule(c, k) for c in t["curves"]])) for t in full]
            rho = spearmanr(early, final).statistic
            rows.append({"epochs": k, "rule": name, "spearman": float(rho), "n": len(full)})
    return rows


def rung_pairs(short: list[dict], full: list[dict]) -> list[tuple[float, float]]:
    """(first-rung score, final score) of each configuration both arms scored, matched by
    hyperparameter values."""
    finals = {t["values"]: t["score"] for t in full if t["score"] is not None}
    return [(t["score"], finals[t["values"]]) for t in short
            if t["score"] is not None and t["values"] in finals]


def report(out: Path, max_epochs: int, factor: int = 3) -> str:
    """The tables (markdown) and ``out/search_value.png`` from the arms found in ``out``."""
    from lvseg_search.engine.run import load_run

    runs = {a: load_run(out / a) for a in ARMS if (out / a / "search.json").is_file()}
    arms = {a: arm_trials(run) for a, run in runs.items()}
    curves = {a: best_curve(t) for a, t in arms.items() if a in SEARCH_ARMS}
    lines = ["| arm | trials | epochs | best CV Dice | best within Hyperband's epochs | wall |",
             "|---|---|---|---|---|---|"]
    hb_total = curves["hyperband"][-1][0] if curves.get("hyperband") else None
    for arm, curve in curves.items():
        wall_file = out / arm / "wall_seconds.txt"
        wall = f"{float(wall_file.read_text()) / 60:.0f} min" if wall_file.is_file() else "-"
        within = f"{best_at(curve, hb_total):.3f}" if hb_total else "-"
        lines.append(f"| {arm} | {len(arms[arm])} | {curve[-1][0] if curve else 0} | "
                     f"{curve[-1][1]:.3f} | {within} | {wall} |")
    unlike = unlike_arms(runs)
    if unlike:
        lines += ["", "**Not comparable**: the arms did not train alike (resumed or run with "
                  "other code or space); rerun the odd ones into a fresh folder:", *unlike]
    if curves.get("hyperband") and curves.get("random"):
        r_total, r_best = curves["random"][-1]
        need = epochs_to_reach(curves["hyperband"], r_best - TARGET_GAP)
        share = f"{need / r_total:.2f} of random's {r_total}" if need else "never"
        lines.append("")
        lines.append(f"Hyperband reaches random search's final best - {TARGET_GAP} "
                     f"({r_best - TARGET_GAP:.3f}) after {need} epochs ({share}; target "
                     "<= 0.33).")
    # Bayesian optimization's random first trials are random search's (same seed, same
    # draws, same initial weights): counted once.
    scratch, seen = [], set()
    for t in (t for a in ("random", "bayesian") for t in arms.get(a, [])):
        if (t["trial"], t["values"]) not in seen:
            seen.add((t["trial"], t["values"]))
            scratch.append(t)
    paired = rung_pairs(arms.get("first_rung", []), arms.get("random", []))
    if len(paired) >= 3:
        rung = runs["first_rung"].options.max_epochs
        rho = spearmanr([p[0] for p in paired], [p[1] for p in paired]).statistic
        lines += ["", f"First-rung signal: Spearman between {len(paired)} configurations' "
                  f"scores after {rung} epochs, their learning rate decaying over them (as "
                  f"Hyperband's first rung trains), and after {max_epochs} in the random arm: "
                  f"**{rho:.2f}** (target >= 0.6)."]
    signal = rung_signal(scratch, max_epochs)
    if signal:
        from lvseg_search.engine.options import default_min_epochs

        # Hyperband's first rung: its shortest trial trained from scratch (without a
        # Hyperband arm, the search's default).
        rung = min((t["epochs"] for t in arms.get("hyperband", []) if t["curves"]),
                   default=default_min_epochs(max_epochs, factor))
        lines += ["", f"Low-budget signal over {signal[0]['n']} trials trained {max_epochs} "
                  f"epochs from scratch (Hyperband's first rung: {rung} epoch(s)); Spearman "
                  "between the score after k epochs of one decay over all of them and the "
                  "final score:", "",
                  "| k | " + " | ".join(RULES) + " |", "|---" * (len(RULES) + 1) + "|"]
        for k in range(1, max_epochs + 1):
            rho = {r["rule"]: r["spearman"] for r in signal if r["epochs"] == k}
            lines.append(f"| {k}{' (first rung)' if k == rung else ''} | "
                         + " | ".join(f"{rho[name]:.2f}" for name in RULES) + " |")
    shown = [a for a in ("search", "fixed", "fixed_readme", "fixed_equal", "fixed_x3")
             if a in runs]
    if shown:
        lines += ["", "| arm | wall | best screened CV Dice | delivered out-of-fold CV Dice "
                  "| nested |", "|---|---|---|---|---|"]
        for arm in shown:
            d = delivered(runs[arm])
            wall_file = out / arm / "wall_seconds.txt"
            wall = (f"{float(wall_file.read_text()) / 60:.1f} min" if wall_file.is_file()
                    else "-")
            nested = f"{d['nested']:.3f}" if d["nested"] is not None else "-"
            lines.append(f"| {arm} | {wall} | {d['screened_best']:.3f} | {d['oof']:.3f}"
                         f"{' (' + d['delivers'] + ')' if 'delivers' in d else ''} | "
                         f"{nested} |")
    lines += continued_against_retrained(runs)
    text = "\n".join(lines)
    plot(curves, out / "search_value.png")
    (out / "search_value.md").write_text(text + "\n")
    return text


def continued_against_retrained(runs: dict) -> list[str]:
    """The default network as a finalist (continued from its screening trial's weights,
    its learning rate restarted and annealed, or trained from scratch as the run's
    ``final_from`` says) against the same network trained from scratch with one long
    decay (``fixed_readme``), each with the batches it trained."""
    from lvseg_search.engine.final_stage import configuration
    from lvseg_search.engine.trial_score import last_metrics, scored_epoch

    if "search" not in runs or "fixed_readme" not in runs:
        return []
    search, fixed = runs["search"], runs["fixed_readme"]
    default = configuration(search.space.default) if search.space.default else None
    finals = [t for t in search.trials.values() if t.status == "COMPLETED"
              and t.hyperparameters.values.get("tuner/final")
              and configuration(t.hyperparameters.values) == default]
    if not finals:
        return ["", "Continued against retrained: the default network was not a finalist."]
    final = finals[0]
    (reference,) = [t for t in fixed.trials.values() if t.status == "COMPLETED"]

    def batches(run, trial):
        return scored_epoch(last_metrics(trial)) * run.options.steps_per_epoch

    start = ("continued" if "tuner/trial_id" in final.hyperparameters.values
             else "one decay from scratch")
    return ["", "The default network as a finalist and as the fixed run: "
            f"finalist {final.trial_id}, {start}, {batches(search, final)} batches, CV Dice "
            f"{final.score:.3f}; fixed_readme, one decay from scratch, "
            f"{batches(fixed, reference)} batches, CV Dice {reference.score:.3f}."]


def plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Best CV Dice against cumulative epochs, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # Steps and scatters draw from separate colour cycles; one colour per arm keeps a
    # fixed arm from wearing a search's colour.
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for arm, curve in curves.items():
        points = [(e, b) for e, b in curve if b > -math.inf]
        if not points:
            continue
        colour = colours[ARMS.index(arm) % len(colours)]
        if arm.startswith("fixed"):
            ax.scatter(*zip(*points, strict=True), label=arm, marker="x", zorder=3,
                       color=colour)
        else:
            ax.step(*zip(*points, strict=True), where="post", label=arm, color=colour)
    ax.set_xlabel("cumulative training epochs (each over every fold)")
    ax.set_ylabel("best CV Dice so far (delivered masks)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="raw Sunnybrook-layout data (default: the real subset)")
    parser.add_argument("--phantom", action="store_true",
                        help="synthetic phantom patients instead of --data")
    parser.add_argument("--phantom-patients", type=int, default=6)
    parser.add_argument("--phantom-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", default="quick")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=24)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--min-epochs", type=int, default=None,
                        help="Hyperband's first rung (default: the search's, max / factor**2)")
    parser.add_argument("--finalists", type=int, default=None,
                        help="the search arm's finalists (default: the space's)")
    parser.add_argument("--final-epochs", type=int, default=None,
                        help="the search arm's final budget (default: the space's)")
    parser.add_argument("--final-from", choices=["screening", "scratch"], default=None,
                        help="where the search arm's finalists start (default: the space's)")
    parser.add_argument("--trials", type=int, default=15,
                        help="trials of random search and Bayesian optimization")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        data = prepare_data(args, args.out)
        for arm in args.arms.split(","):
            if arm not in ARMS:
                parser.error(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
            seconds = run_arm(arm, args, data, args.out)
            print(f"{arm}: {seconds / 60:.1f} min", flush=True)
    (args.out / "settings.json").write_text(json.dumps(
        {k: str(v) for k, v in vars(args).items()}, indent=1))
    print(report(args.out, args.max_epochs, args.factor))


if __name__ == "__main__":
    main()
