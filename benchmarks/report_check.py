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


def read_hparams(logdir: Path) -> tuple[object, dict, dict]:
    """The experiment, each session's start info and each run's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    experiment, sessions, scalars = None, {}, {}
    for run_dir in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
        acc.Reload()
        name = run_dir.relative_to(logdir).as_posix()
        try:
            content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        except KeyError:
            content = {}
        for tag, data in content.items():
            if tag == metadata.EXPERIMENT_TAG:
                experiment = metadata.parse_experiment_plugin_data(data)
            elif tag == metadata.SESSION_START_INFO_TAG:
                sessions[name] = metadata.parse_session_start_info_plugin_data(data)
        scalars[name] = {tag: [float(tensor_util.make_ndarray(e.tensor_proto))
                               for e in acc.Tensors(tag)]
                         for tag in acc.Tags()["tensors"] if not tag.startswith("_hparams_")}
    return experiment, sessions, scalars


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

    experiment, sessions, scalars = read_hparams(args.run / "tensorboard")
    print(f"\nHParams experiment: {len(experiment.hparam_infos)} hyperparameters "
          f"({', '.join(h.name for h in experiment.hparam_infos)}), "
          f"{len(experiment.metric_infos)} metrics "
          f"({', '.join(m.name.tag for m in experiment.metric_infos)})")
    print(f"sessions: {len(sessions)}")
    rows = sorted(sessions, key=lambda s: -scalars[s].get("cv_dice", [0])[-1])
    for name in rows[:5]:
        hp = sessions[name].hparams
        s = scalars[name]
        folds = [k for k in scalars if k.startswith(name + "/fold_")]
        apd = s.get("apd_mm", [float("nan")])[-1]
        hd = s.get("hausdorff_mm", [float("nan")])[-1]
        print(f"  {name}: cv_dice {s['cv_dice'][-1]:.3f}, apd_mm {apd:.2f}, "
              f"hausdorff_mm {hd:.2f}, depth "
              f"{hp['depth'].number_value:.0f}, lr {hp['learning_rate'].number_value:.2e}, "
              f"epochs {hp['epochs'].number_value:.0f}, {len(folds)} fold curve runs of "
              f"{len(scalars[folds[0]]['epoch_val_dice']) if folds else 0} epochs")


if __name__ == "__main__":
    main()
