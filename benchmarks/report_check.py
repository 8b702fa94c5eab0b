"""Checks a search's report and TensorBoard logs without a browser: the report files,
the plots embedded in report.html (decoded as PNG), and the HParams experiment and
sessions read back with TensorBoard's own event reader.

    lvseg-search report results/real
    python benchmarks/report_check.py results/real
"""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    for name in ("report.csv", "report.md", "report.html"):
        path = args.run / name
        print(f"{name}: {path.stat().st_size} bytes" if path.is_file() else f"{name}: MISSING")
    page = (args.run / "report.html").read_text()
    images = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'",
                        page)
    for alt, data in images:
        raw = base64.b64decode(data)
        width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
        is_png = raw.startswith(b"\x89PNG")
        print(f"report.html embeds '{alt}': PNG {is_png}, "
              f"{width}x{height} px, {len(raw)} bytes")
    print(f"external references in report.html: {len(re.findall(r'(src|href)=.http', page))}")

    from lvseg_search.hparams import read_logs

    experiment, sessions, scalars = read_logs(args.run / "tensorboard")
    print(f"\nHParams experiment: {len(experiment.hparam_infos)} hyperparameters "
          f"({', '.join(h.name for h in experiment.hparam_infos)}), "
          f"{len(experiment.metric_infos)} metrics "
          f"({', '.join(m.name.tag for m in experiment.metric_infos)})")
    print(f"sessions: {len(sessions)}")

    def last(run: str, tag: str) -> float:
        values = scalars[run].get(tag)
        return values[-1][1] if values else float("nan")

    rows = sorted(sessions, key=lambda s: -last(s, "cv_dice"))
    for name in rows[:5]:
        hp = sessions[name].hparams
        folds = [k for k in scalars if k.startswith(name + "/fold_")]
        print(f"  {name}: cv_dice {last(name, 'cv_dice'):.3f}, apd_mm "
              f"{last(name, 'apd_mm'):.2f}, hausdorff_mm {last(name, 'hausdorff_mm'):.2f}, "
              f"depth {hp['depth'].number_value:.0f}, lr {hp['learning_rate'].number_value:.2e}, "
              f"epochs {hp['epochs'].number_value:.0f}, {len(folds)} fold curve runs of "
              f"{len(scalars[folds[0]]['epoch_val_dice']) if folds else 0} epochs")


if __name__ == "__main__":
    main()
