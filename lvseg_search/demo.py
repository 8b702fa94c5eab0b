"""``lvseg-search demo``: the whole job on a synthetic phantom, no download needed."""

from __future__ import annotations

import time
from pathlib import Path

from lvseg_search import manifest, splits
from lvseg_search.phantom import synth
from lvseg_search.prepare import prepare

DEMO_PATIENTS = 8
DEMO_SIZE = 128


def run_demo(out: Path, *, seed: int = 0, overwrite: bool = False) -> int:
    """Runs synth -> prepare -> split into ``out``; prints where everything went.

    Args:
        out: Demo folder (``phantom/``, ``data/`` and later stages go inside).
        seed: Seed of the phantom and splits.
        overwrite: Replace the outputs of an earlier demo.

    Returns:
        Exit code 0.
    """
    start = time.perf_counter()
    out = Path(out)
    phantom, data = out / "phantom", out / "data"
    synth(phantom, DEMO_PATIENTS, seed=seed, size=DEMO_SIZE, overwrite=overwrite)
    print(f"[1/3] phantom: {DEMO_PATIENTS} patients of DICOM + contours -> {phantom}")
    m = prepare(phantom, data, overwrite=overwrite)
    print(f"[2/3] prepare: {m['n_slices']} labelled slices in {m['n_patients']} shards -> {data}")
    counts = {p["patient_id"]: p["slices"] for p in manifest.load(data)["patients"]}
    result = splits.make_splits(counts, 3, test_patients=2, seed=seed)
    splits.save(data / splits.FILENAME, result)
    print(f"[3/3] split: 3 patient-grouped folds, test patients {', '.join(result['test'])} "
          f"-> {data / splits.FILENAME}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0
