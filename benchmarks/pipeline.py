"""Images/second of the input pipeline (parse -> normalize -> resize -> augment -> batch)
on the real Sunnybrook shards, cached and uncached.

    python benchmarks/pipeline.py [--data ../shared/data/sunnybrook-subset] [--epochs 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lvseg_search.data.manifest import open_data
from lvseg_search.data.pipeline import PipelineConfig, make_dataset, patient_files
from lvseg_search.prepare import prepare

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-subset"


def images_per_second(files, config: PipelineConfig, epochs: int) -> float:
    ds = make_dataset(files, config)
    for _ in ds:  # first epoch fills the cache (and warms up tf.data)
        pass
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _m in ds:
            n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        m = prepare(args.data, data, progress=False)
        patients = [p["patient_id"] for p in m["patients"]]
        print(f"{m['n_slices']} slices of {len(patients)} patients, batch {args.batch_size}, "
              f"{args.epochs} epochs after one warm-up epoch")
        print(f"{'image size':>10} {'augment':>8} {'cached img/s':>13} {'uncached img/s':>15}")
        for size in (None, 128):
            for augment in (False, True):
                base = PipelineConfig(image_size=size, batch_size=args.batch_size, seed=0)
                if augment:
                    base = base.training()
                files = patient_files(open_data(data), patients, base)
                rates = [images_per_second(files, PipelineConfig(**{**base.__dict__,
                                                                    "cache": cache}),
                                           args.epochs) for cache in (True, False)]
                print(f"{size or 256:>10} {str(augment):>8} {rates[0]:>13.0f} {rates[1]:>15.0f}")


if __name__ == "__main__":
    main()
