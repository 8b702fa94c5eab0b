"""Would an ensemble of initializations deliver more than one network? Averages the
out-of-fold probabilities of networks trained on the same folds and scores the delivered
masks.

Takes the output folders of ``benchmarks/search_value.py`` runs with one seed (so one
prepared data set and one set of folds), e.g. one run with ``--final-from screening``
and one with ``--final-from scratch``: each run's finalists and its ``fixed_equal`` arm
are the candidates. Every candidate predicts its validation patients with one setting
(field of view, test-time augmentation, post-processing: the one the first run's best
finalist's out-of-fold table decides, as ``export`` does), then every pair is averaged
with equal weights. Pairs of one configuration trained twice (continued from its rung
and from scratch) are the ensembles of initializations.

Prints a markdown table of each candidate's delivered CV Dice, then of each pair's
against its better member and the mean of its members.

    python benchmarks/init_ensemble.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def candidates(folders: list[Path]) -> dict[str, tuple]:
    """Label -> (run, trial id, configuration): each folder's finalists and fixed arm."""
    from lvseg_search.engine.final_stage import is_final
    from lvseg_search.engine.run import completed_trials, load_run

    out = {}
    for n, folder in enumerate(folders):
        for arm in ("search", "fixed_equal"):
            if not (folder / arm / "search.json").is_file():
                continue
            run = load_run(folder / arm)
            for t in completed_trials(run):
                values = t.hyperparameters.values
                if arm == "search" and not is_final(values):
                    continue
                config = json.dumps({k: v for k, v in values.items()
                                     if not k.startswith("tuner/")}, sort_keys=True)
                out[f"{n}:{arm}:{t.trial_id}"] = (run, t.trial_id, config)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()

    import numpy as np

    from lvseg_search.engine.finalist_ensemble import out_of_fold_probabilities
    from lvseg_search.engine.out_of_fold import out_of_fold_decisions
    from lvseg_search.evaluate.decision import choose
    from lvseg_search.evaluate.ensemble import average, delivered_dice
    from lvseg_search.evaluate.scoring import load_patient_images

    pool = candidates(args.folders)
    splits = {json.dumps(run.splits, sort_keys=True) for run, _, _ in pool.values()}
    if len(splits) != 1:
        raise SystemExit("init_ensemble: the folders hold different folds; give runs of "
                         "one seed")
    first = next(label for label in pool if label.startswith("0:search:"))
    base = pool[first][0]
    setting = choose(out_of_fold_decisions(base, pool[first][1]))
    post = {"largest_region": bool(setting["largest_region"]),
            "convex_hull": bool(setting["convex_hull"])}
    validation = [load_patient_images(base.data, f["val"]) for f in base.splits["folds"]]
    probabilities, dice = {}, {}
    for label, (run, trial_id, _) in pool.items():
        per_fold = out_of_fold_probabilities(run, trial_id, validation, setting)
        probabilities[label] = per_fold
        dice[label] = float(np.mean(delivered_dice(per_fold, validation, **post)))

    shown = {k: setting[k] for k in ("roi", "tta", "largest_region", "convex_hull")}
    print(f"Setting: {shown}\n")
    print("| candidate | delivered CV Dice |\n|---|---|")
    for label in pool:
        print(f"| {label} | {dice[label]:.3f} |")
    print("\n| pair | one configuration | delivered | - better member | - members' mean |")
    print("|---|---|---|---|---|")
    for a, b in itertools.combinations(pool, 2):
        both = float(np.mean(delivered_dice(
            average(probabilities, {a: 1, b: 1}, range(len(validation))),
            validation, **post)))
        same = "yes" if pool[a][2] == pool[b][2] else "no"
        print(f"| {a} + {b} | {same} | {both:.3f} | {both - max(dice[a], dice[b]):+.3f} "
              f"| {both - (dice[a] + dice[b]) / 2:+.3f} |")


if __name__ == "__main__":
    main()
