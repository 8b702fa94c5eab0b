"""Does a space hold a network better than its default? Trains the space's ``[default]``
network and its neighbours (the default with one value changed, or a few) with
``--oracle fixed`` at the README's fixed budget, with the same seeds and folds, and prints
each network's delivered out-of-fold CV Dice (as ``export`` decides: field of view,
test-time augmentation, post-processing) per seed, its mean, and its mean difference to
the default.

A search beats the fixed default at equal wall time only where its space holds a network
that beats the default at equal training by more than the default gains from the
search's extra time; this measures the first half.

    python benchmarks/space_neighbours.py --out DIR [--data RAW] [--space quick]
        [--seeds 0,1,2] [--change block=residual] [--change deep_supervision=on,...]

Each network and seed is a search in ``DIR/NETWORK/seedS/fixed_readme`` (``default`` and
one folder a ``--change``); a finished one is kept, so an interrupted run resumes. With
``--report-only``, only the table from what DIR holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

from search_value import DEFAULT_DATA, delivered, run_arm

from lvseg_search.errors import UserError
from lvseg_search.model.space import load_space

ARM = "fixed_readme"  # each network and seed is this arm of search_value.py
CHANGES = ("block=residual", "deep_supervision=on", "normalization=instance", "depth=4",
           "kernel_size=5")


def refuse(message: str) -> None:
    """Bad input: one line on stderr, exit code 2 (as the package's own commands)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def parse_change(text: str) -> dict[str, object]:
    """``name=value[,name=value]`` -> {name: value}, numbers as numbers."""
    out: dict[str, object] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            refuse(f"--change: {item!r} is not name=value (e.g. block=residual)")
        for kind in (int, float):
            try:
                out[name] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[name] = value
    return out


def toml_value(value: object) -> str:
    """A scalar as TOML (the values spaces hold: strings, numbers, booleans). By hand:
    the standard library reads TOML only, and a writer is not worth a dependency here."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def neighbour_space(space, change: dict[str, object], path: Path) -> Path:
    """Writes a one-point space: ``space``'s default network with ``change`` applied, and
    its ``[search]`` table; returns its path."""
    if not space.default:
        refuse(f"{space.path}: the space has no [default] network to compare with")
    point = {**space.default, **change}
    lines = [f"description = {json.dumps(f'{space.name} default with {change}')}", "",
             "[hyperparameters]"]
    lines += [f"{k} = {{ values = [{toml_value(v)}] }}" for k, v in point.items()]
    lines += ["", "[search]"] + [f"{k} = {toml_value(v)}" for k, v in space.search.items()]
    lines += ["", "[default]"] + [f"{k} = {toml_value(v)}" for k, v in point.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    try:  # refused here, before anything trains, as `search` would refuse it
        load_space(str(path))
    except UserError as err:
        path.unlink()
        for folder in (path.parent, path.parent.parent):  # what this call created, if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        text = ",".join(f"{k}={v}" for k, v in change.items())
        refuse(f"--change {text}: {err}")
    return path


def train(space: str, data: Path, out: Path, seed: int, args: argparse.Namespace) -> None:
    """``search_value.py``'s ``fixed_readme`` arm (``--oracle fixed`` at the README's
    budget) with ``space`` and ``seed``, into ``out/fixed_readme`` (kept if finished)."""
    if (out / ARM / "wall_seconds.txt").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    arm_args = argparse.Namespace(space=space, seed=seed, folds=args.folds,
                                  batch_size=args.batch_size, image_size=None)
    try:
        run_arm(ARM, arm_args, data, out)
    except RuntimeError as err:
        raise SystemExit(f"{out}: {err}") from None


def table(out: Path, names: list[str], seeds: list[int]) -> str:
    """The markdown table of every network's delivered CV Dice over ``seeds``."""
    from lvseg_search.engine.run import best_trial, load_run

    rows, base = [], None
    for name in names:
        cells, cv, walls = [], [], []
        for seed in seeds:
            folder = out / name / f"seed{seed}" / ARM
            if not (folder / "wall_seconds.txt").is_file():
                cells.append(None)
                continue
            run = load_run(folder)
            cells.append(delivered(run)["oof"])
            cv.append(best_trial(run).score)
            walls.append(float((folder / "wall_seconds.txt").read_text()))
        done = [c for c in cells if c is not None]
        mean = statistics.fmean(done) if done else None
        if name == "default":
            base = cells
        paired = [c - b for c, b in zip(cells, base or [], strict=False)
                  if c is not None and b is not None]
        rows.append((name, cells, mean, statistics.fmean(cv) if cv else None,
                     statistics.fmean(paired) if paired and name != "default" else None,
                     statistics.fmean(walls) if walls else None))

    def f(x, signed=False):
        return "-" if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"

    lines = ["| network | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | mean CV Dice | - default (paired) | wall per run |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for name, cells, mean, cv, diff, wall in rows:
        lines.append(f"| {name} | " + " | ".join(f(c) for c in cells)
                     + f" | {f(mean)} | {f(cv)} | {f(diff, True)} | "
                     + ("-" if wall is None else f"{wall / 60:.1f} min") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="raw Sunnybrook-layout data (default: the real subset)")
    parser.add_argument("--space", default="quick")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--change", action="append", default=None,
                        help=f"name=value[,name=value]: a neighbour (default: {CHANGES})")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    from lvseg_search.prepare import prepare

    space = load_space(args.space)
    seeds = [int(s) for s in args.seeds.split(",")]
    changes = args.change or list(CHANGES)
    names = ["default", *changes]
    if not args.report_only:
        spaces = {"default": args.space}  # refused before the data is prepared
        for text in changes:
            spaces[text] = str(neighbour_space(space, parse_change(text),
                                               args.out / "spaces" / f"{text}.toml"))
        prepared = args.out / "prepared"
        if not (prepared / "manifest.json").is_file():
            prepare(args.data, prepared, progress=False)
        for seed in seeds:
            for name in names:
                train(spaces[name], prepared, args.out / name / f"seed{seed}", seed, args)
                print(f"{name}, seed {seed}: done", flush=True)
    print(table(args.out, names, seeds))


if __name__ == "__main__":
    main()
