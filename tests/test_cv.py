"""Cross-validation inputs: repeating datasets whose step counts make one epoch one
pass over each fold's patients."""

from __future__ import annotations

import itertools

import numpy as np

from lvseg_search import manifest, splits
from lvseg_search.cv import CrossValidation
from lvseg_search.pipeline import PipelineConfig, patient_slices


def test_an_epoch_of_steps_is_one_pass_over_the_fold(tiny_data):
    m = manifest.load(tiny_data)
    split = splits.make_splits({p["patient_id"]: p["slices"] for p in m["patients"]}, 2,
                               seed=0)
    cv = CrossValidation(tiny_data, split, PipelineConfig(image_size=32, batch_size=3, seed=0))
    for k in range(cv.n_folds):
        fit = cv.fold(k)
        n_train = patient_slices(tiny_data, cv.patients(k, "train"))
        n_val = patient_slices(tiny_data, cv.patients(k, "val"))
        assert fit["steps_per_epoch"] == -(-n_train // 3)
        assert fit["validation_steps"] == -(-n_val // 12)
        train = list(itertools.islice(iter(fit["x"]), 2 * fit["steps_per_epoch"]))
        sizes = [len(images) for images, _ in train]
        # Batches do not straddle epochs: each epoch ends with its own short batch.
        assert sum(sizes[:fit["steps_per_epoch"]]) == n_train == sum(sizes[fit["steps_per_epoch"]:])
        val = [masks.numpy() for _, masks in
               itertools.islice(iter(fit["validation_data"]), 2 * fit["validation_steps"])]
        first, second = val[:fit["validation_steps"]], val[fit["validation_steps"]:]
        assert sum(len(v) for v in first) == n_val
        # Validation repeats the same images in the same order every epoch.
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
    assert cv.fold(0)["x"] is cv.fold(0)["x"]  # built once, reused by every trial
