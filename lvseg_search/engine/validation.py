"""Per-epoch validation of a fold model on its validation patients, held in memory.

Keras's own validation (``fit(validation_data=...)``) traces a test step for every new
model and re-creates its input iterator every epoch. The search runs many short fits
of many models, and there that bookkeeping cost more than the arithmetic (on 2 cores,
a third of a second per epoch against a fifth for the network itself). Here each
fold's validation images are preprocessed once, by the deployable model's own
preprocessing (``serving_layers.Preprocess``, the same computation as the training pipeline,
tested), and every epoch runs the network over them: eagerly (no graph to trace) or,
for models evaluated more than a few times, through one traced forward pass that any
number of images may take (:func:`traced_forward`). Either way there is no test step
and no iterator. The objective's Dice is that of the masks as the product delivers them
(each image's largest predicted region, ``postprocess``). The last epoch's probabilities
are kept, so scoring the saved fold model at full resolution does not run the network
again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from lvseg_search.classes import Classes, fully_labelled, regions
from lvseg_search.data.pipeline import grid_masks
from lvseg_search.evaluate.measures import dice
from lvseg_search.evaluate.scoring import LV, PatientImages, objective_dice, same_size_groups
from lvseg_search.model.postprocess import keep_largest_regions, largest_region
from lvseg_search.model.serving_layers import Preprocess, RestoreSize


@dataclass(frozen=True)
class ValidationSet:
    """A fold's validation patients at the network's input size.

    Attributes:
        patients: The patients as stored (raw pixels, masks, spacing).
        inputs: Per patient, normalized images ``float32 [n, S, S, 1]``.
        labels: Per patient, class labels ``uint8 [n, S, S, 1]`` (resampled as the
            training pipeline resamples masks).
        spacing_mm: The network grid's pixel size (None: whole images resized).
    """

    patients: tuple[PatientImages, ...]
    inputs: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    spacing_mm: float | None = None

    @property
    def size(self) -> int:
        """Number of validation images."""
        return sum(len(x) for x in self.inputs)

    @property
    def classes(self) -> Classes:
        """The classes of the patients' masks."""
        return self.patients[0].classes if self.patients else Classes()


def validation_set(patients: Sequence[PatientImages], image_size: int,
                   normalization: str, spacing_mm: float | None = None) -> ValidationSet:
    """Preprocesses validation patients once for every epoch of every trial.

    Args:
        patients: Patients from ``scoring.load_patient_images``.
        image_size: The networks' input rows and columns.
        normalization: The per-image normalization of the training pipeline.
        spacing_mm: The network grid's pixel size (None: whole images resized).

    Returns:
        The patients with their network inputs and labels.
    """
    pre = Preprocess(image_size, normalization, spacing_mm, dtype="float32")
    size = (image_size, image_size)
    inputs, labels = [], []
    for p in patients:
        x = np.empty((len(p.images), image_size, image_size, 1), np.float32)
        y = np.empty((len(p.images), image_size, image_size, 1), np.uint8)
        for group in same_size_groups(p.images):
            raw = np.stack([p.images[i] for i in group])
            masks = np.stack([p.masks[i] for i in group])[..., None]
            spacing = p.spacing_mm[group].astype(np.float32)
            x[group] = ops.convert_to_numpy(pre(raw, spacing))
            if spacing_mm:
                y[group] = grid_masks(masks, spacing, image_size, spacing_mm).numpy()
            else:
                y[group] = ops.convert_to_numpy(ops.image.resize(masks, size,
                                                                 interpolation="nearest"))
        inputs.append(x)
        labels.append(y)
    return ValidationSet(tuple(patients), tuple(inputs), tuple(labels), spacing_mm)


def traced_forward(model: keras.Model) -> Callable[[np.ndarray], Any]:
    """The model's inference pass, traced once for a batch of any size.

    A trial's folds validate on different numbers of images. Keras's predict step
    traces per input shape (twice before it relaxes the batch size), and a trace costs
    two to three eager passes of a small network; this one is traced once for all of
    them and then runs in about half an eager pass on 2 cores.

    Args:
        model: A model from ``[B, S, S, 1]`` images.

    Returns:
        A function from images ``float32 [n, S, S, 1]`` to the model's probabilities.
    """
    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch  # jitted; traced per shape
    from lvseg_search._tf import tf  # TensorFlow's own tracing: the batch size left open

    spec = tf().TensorSpec((None, *model.input_shape[1:]), "float32")
    return tf().function(lambda x: model(x, training=False), input_signature=[spec])


class FoldValidation(keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_dice`` and ``val_dice_raw`` to each epoch's logs (put it
    first among the callbacks, so the others see them), and keeps the last epoch's
    probabilities.

    ``val_loss`` is the compiled loss; ``val_dice`` is the mean per-image Dice of the
    masks as delivered (largest predicted region), the search's objective;
    ``val_dice_raw`` that of the network's own masks (Keras's Dice metric). All are
    averaged over images as Keras's own validation averages them over batches.

    Args:
        data: The fold's validation set.
        batch_size: Images per network call (bounds memory, not speed).
        forward: The network's inference pass to run (:func:`traced_forward`, made once
            per model so that the folds of a trial share its trace); None runs the
            model eagerly. Not under a mirrored strategy: this callback does not split
            its batches over replicas.
        objective: With a myocardium, which contours' Dice is ``val_dice``
            (``classes.OBJECTIVES``); ``val_dice_raw`` is then the blood pool's.
    """

    def __init__(self, data: ValidationSet, batch_size: int = 64,
                 forward: Callable[[np.ndarray], Any] | None = None, objective: str = "mean"):
        super().__init__()
        self.data = data
        self.objective = objective
        self.batch_size = batch_size
        self.forward = forward
        self.seconds = 0.0
        self.probabilities: list[np.ndarray] | None = None  # per patient, last epoch

    def evaluate(self) -> dict[str, float]:
        """Runs the model over the validation set now.

        Returns:
            ``val_loss``, ``val_dice`` (of the masks as delivered: each image's largest
            predicted region, see ``postprocess``) and ``val_dice_raw`` (of the network's
            own arg-max masks, what Keras's Dice metric gives).
        """
        start = time.perf_counter()
        classes = self.data.classes
        multi = classes.count > 2
        epi_values: list[float] = []
        loss_sum, dice_sum, raw_sum, probabilities = 0.0, 0.0, 0.0, []
        for x, y in zip(self.data.inputs, self.data.labels, strict=True):
            chunks = []
            for i in range(0, len(x), self.batch_size):
                xb, yb = x[i:i + self.batch_size], y[i:i + self.batch_size]
                pred = (self.forward(xb) if self.forward is not None
                        else self.model(xb, training=False))
                pred = ops.cast(pred, "float32")
                loss_sum += float(self.model.loss(yb, pred)) * len(xb)
                chunks.append(ops.convert_to_numpy(pred))
            probs = np.concatenate(chunks)
            probabilities.append(probs)
            if multi:
                labels = probs.argmax(axis=-1)
                for raw, delivered, expert in zip(labels, keep_largest_regions(labels, classes),
                                                  y[..., 0], strict=True):
                    found, truth = regions(delivered, classes), regions(expert, classes)
                    raw_sum += dice(raw == classes.blood_pool, truth["endo"])
                    dice_sum += dice(found["endo"], truth["endo"])
                    if fully_labelled(expert, classes):
                        epi_values.append(dice(found["epi"], truth["epi"]))
                continue
            for mask, truth in zip(probs.argmax(axis=-1) == LV, y[..., 0] == LV, strict=True):
                raw_sum += dice(mask, truth)
                dice_sum += dice(largest_region(mask), truth)
        self.probabilities = probabilities
        self.seconds += time.perf_counter() - start
        n = max(self.data.size, 1)
        val_dice = dice_sum / n
        if multi:
            val_dice = objective_dice(val_dice, float(np.mean(epi_values)) if epi_values
                                      else float("nan"), self.objective)
        return {"val_loss": loss_sum / n, "val_dice": val_dice, "val_dice_raw": raw_sum / n}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.evaluate())

    def masks(self) -> list[np.ndarray]:
        """The last evaluation's LV masks at each image's stored size, per patient,
        resized exactly as the deployable model resizes them (``serving_layers.RestoreSize``)
        and post-processed as ``scoring.segment`` does.

        Raises:
            RuntimeError: Nothing was evaluated yet.
        """
        if self.probabilities is None:
            raise RuntimeError("FoldValidation.masks before any evaluation")
        classes = self.data.classes
        multi = classes.count > 2
        restore = RestoreSize(classes.blood_pool, self.data.spacing_mm, dtype="float32",
                              labels=multi)
        out = []
        for p, probs in zip(self.data.patients, self.probabilities, strict=True):
            masks: list[np.ndarray | None] = [None] * len(p.images)
            for group in same_size_groups(p.images):
                raw = np.stack([p.images[i] for i in group])
                mask = restore(probs[group], raw, p.spacing_mm[group].astype(np.float32))[1]
                for i, m in zip(group, keep_largest_regions(ops.convert_to_numpy(mask),
                                                            classes if multi else None),
                                strict=True):
                    masks[i] = m
            out.append(masks)
        return out
