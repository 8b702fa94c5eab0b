"""Checks a search's report and TensorBoard logs without a browser: the report files,
the plots embedded in report.html (decoded as PNG), and the HParams experiment and
sessions read back with TensorBoard's own event reader.

    lvseg-search report results/real
    python benchmarks/report_check.py results/real [--serve]

With --serve it also starts TensorBoard on the log dir and asks its HParams plugin, over
HTTP as the dashboard does, for the experiment and the session groups.
"""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path


def serve_and_query(logdir: Path) -> None:
    """Starts TensorBoard on ``logdir`` and queries its HParams plugin like the browser."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                             "--port", str(port), "--host", "127.0.0.1", "--load_fast=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def post(route: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/data/plugin/hparams/{route}",
            data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                experiment = post("experiment", {"experimentName": ""})
                if experiment.get("hparamInfos"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("TensorBoard did not serve the HParams experiment in 60 s")
            time.sleep(1)
        groups = post("session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 1000,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [{"metric": {"tag": "cv_dice"}, "order": "ORDER_DESC"}]})
        print(f"\nTensorBoard HParams plugin (HTTP): {len(experiment['hparamInfos'])} "
              f"hyperparameters, {len(experiment['metricInfos'])} metrics, "
              f"{groups.get('totalSize')} session groups; top by cv_dice:")
        for group in groups["sessionGroups"][:3]:
            values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            print(f"  {group['name']}: cv_dice {values.get('cv_dice', float('nan')):.3f}")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--serve", action="store_true",
                        help="also query a TensorBoard server's HParams plugin")
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

    from lvseg_search.engine.hparams import read_logs

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
    if args.serve:
        serve_and_query(args.run / "tensorboard")


if __name__ == "__main__":
    main()
