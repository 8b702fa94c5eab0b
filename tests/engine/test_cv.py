"""Cross-validation inputs: repeating training datasets whose step counts make one
epoch one pass over each fold's patients, and in-memory validation that scores exactly
as Keras's own validation and the deployable model would."""

from __future__ import annotations

import itertools

import keras
import keras_tuner as kt
import numpy as np
import pytest

from lvseg_search.data import manifest, splits
from lvseg_search.data.manifest import open_data
from lvseg_search.data.pipeline import PipelineConfig, make_dataset, patient_files
from lvseg_search.engine.cv import CrossValidation
from lvseg_search.engine.validation import FoldValidation, traced_forward
from lvseg_search.evaluate.measures import dice
from lvseg_search.evaluate.scoring import score_patients, score_predictions
from lvseg_search.model.hypermodel import SegmentationHyperModel
from lvseg_search.model.postprocess import largest_region
from lvseg_search.model.serving import make_predictor
from lvseg_search.model.space import load_space


def _cv(tiny_data) -> CrossValidation:
    m = manifest.load(tiny_data)
    split = splits.make_splits({p["patient_id"]: p["slices"] for p in m["patients"]}, 2,
                               seed=0)
    return CrossValidation(open_data(tiny_data), split,
                           PipelineConfig(image_size=32, batch_size=3, seed=0))


def test_an_epoch_of_steps_is_one_pass_over_the_fold(tiny_data):
    cv = _cv(tiny_data)
    for k in range(cv.n_folds):
        fit = cv.fold(k)
        n_train = cv.data.slices(cv.patients(k, "train"))
        assert fit["steps_per_epoch"] == -(-n_train // 3)
        train = list(itertools.islice(iter(fit["x"]), 2 * fit["steps_per_epoch"]))
        sizes = [len(images) for images, _ in train]
        # Batches do not straddle epochs: each epoch ends with its own short batch.
        assert sum(sizes[:fit["steps_per_epoch"]]) == n_train == sum(sizes[fit["steps_per_epoch"]:])
    # The examples are read and cached once, and every fit gets its own batches over them.
    examples = cv._datasets[0][0]
    assert cv.fold(0)["x"] is not cv.fold(0)["x"] and cv._datasets[0][0] is examples


def test_every_fit_of_a_fold_sees_the_same_batches_whatever_came_before(tiny_data):
    # A fold trained again after a kill (a fresh process) or by another worker must see
    # the batches it would have seen in one uninterrupted process: the stream depends on
    # the seed and the batch number only, not on how often the dataset was read before.
    cv = _cv(tiny_data)
    steps = cv.fold(0)["steps_per_epoch"]
    first = [(x.numpy(), m.numpy()) for x, m in itertools.islice(cv.fold(0)["x"], 3 * steps)]
    for k in (1, 0):  # other fits in between
        list(itertools.islice(cv.fold(k)["x"], steps + 1))
    again = [(x.numpy(), m.numpy()) for x, m in itertools.islice(cv.fold(0)["x"], 3 * steps)]
    for (x1, m1), (x2, m2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(m1, m2)
    # Within a fit, every pass is shuffled and augmented afresh.
    assert not np.array_equal(first[0][0], first[steps][0])
    fresh = CrossValidation(cv.data, cv.splits, cv.config).fold(0)["x"]
    np.testing.assert_array_equal(next(iter(fresh))[0].numpy(), first[0][0])


def test_validation_set_holds_what_the_pipeline_feeds(tiny_data):
    cv = _cv(tiny_data)
    for k in range(cv.n_folds):
        data = cv.validation(k)
        ids = cv.patients(k, "val")
        assert [p.patient_id for p in data.patients] == ids
        assert data.size == cv.data.slices(ids)
        for pid, x, y in zip(ids, data.inputs, data.labels, strict=True):
            ds = make_dataset(patient_files(cv.data, [pid], cv.config), cv.config)
            images, masks = (np.concatenate(a) for a in zip(*((i.numpy(), m.numpy())
                                                               for i, m in ds), strict=True))
            np.testing.assert_allclose(x, images, atol=2e-5)
            np.testing.assert_array_equal(y, masks)
    assert cv.validation(0) is cv.validation(0)


def test_fold_validation_scores_as_keras_and_the_deployable_model(tiny_data):
    cv = _cv(tiny_data)
    hp = kt.HyperParameters()
    hp.Fixed("depth", 2)
    keras.utils.set_random_seed(3)
    model = SegmentationHyperModel(load_space("quick"), 32).build(hp)
    fold = cv.fold(0)
    validation = FoldValidation(cv.validation(0), batch_size=4)  # several calls a patient
    history = model.fit(**fold, epochs=2, callbacks=[validation],
                        shuffle=False, verbose=0)
    assert (len(history.history["val_dice"]) == len(history.history["val_dice_raw"])
            == len(history.history["val_loss"]) == 2)

    # Keras's own evaluation of the same model on the pipeline's validation data.
    ids = cv.patients(0, "val")
    val = make_dataset(patient_files(cv.data, ids, cv.config), cv.config,
                       cv.data.slices(ids))
    expected = model.evaluate(val, return_dict=True, verbose=0)
    assert history.history["val_dice_raw"][-1] == _approx(expected["dice"])
    assert history.history["val_loss"][-1] == _approx(expected["loss"])
    # The objective scores the largest predicted region of each image.
    kept = [dice(largest_region(p.argmax(-1) == 1), y[..., 0] == 1)
            for probs, labels in zip(validation.probabilities, cv.validation(0).labels,
                                     strict=True)
            for p, y in zip(probs, labels, strict=True)]
    assert history.history["val_dice"][-1] == _approx(np.mean(kept))

    # Full-resolution scores from the kept probabilities equal the deployable model's.
    predict = make_predictor([model], 32, cv.config.normalization, cv.config.spacing_mm)
    patients = cv.validation(0).patients
    ours = score_predictions(validation.masks(), patients)
    theirs = score_patients(predict, patients)
    assert ours[0] == theirs[0]

    # Through the traced forward pass (longer trials), the same scores; batches of 4
    # leave a last one of another size, which the one trace takes too.
    forward = traced_forward(model)
    traced = FoldValidation(cv.validation(0), batch_size=4, forward=forward)
    traced.set_model(model)
    scores = traced.evaluate()
    assert scores["val_dice_raw"] == _approx(expected["dice"])
    assert scores["val_dice"] == _approx(history.history["val_dice"][-1])
    assert scores["val_loss"] == _approx(expected["loss"])
    chunks = {len(x[i:i + 4]) for x in cv.validation(0).inputs for i in range(0, len(x), 4)}
    assert len(chunks) > 1 and forward.experimental_get_tracing_count() == 1


def _approx(value):
    return pytest.approx(value, rel=1e-4, abs=1e-5)
